"""Weights on disk: safetensors tensors plus JSON metadata, saved atomically, checked on load.

Never pickle: a weights file can come from a user upload, and safetensors cannot run code.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes, save as save_bytes

from . import __version__
from .data import check_dataset, check_threshold
from .models import Autoencoder, AutoencoderConfig, EnergyConfig, EnergyNet, LatentEBM

FORMAT = "mnist-ebm/1"
REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_WEIGHTS = REPO_ROOT / "weights" / "mnist_d4.safetensors"


class WeightsError(ValueError):
    """A weights file that cannot be used, with the reason in the message."""


def model_to_bytes(model: LatentEBM, extra: dict | None = None) -> bytes:
    """Serialise a model (tensors + metadata) to safetensors bytes, e.g. for a download button."""
    metadata = {
        "format": FORMAT,
        "package_version": __version__,
        "autoencoder": json.dumps(asdict(model.autoencoder.config)),
        "energy": json.dumps(asdict(model.energy.config)),
        "extra": json.dumps(extra or {}),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return save_bytes(tensors, metadata=metadata)


def write_atomically(path: str | Path, data: bytes) -> Path:
    """Write a temp file in the same folder, fsync, then rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_weights_path(path: str | Path) -> Path:
    """The resolved path to write weights to; WeightsError for the shipped weights folder
    (unless $EBM_ALLOW_SHIPPED_WRITE=1, which is how the shipped weights are made)."""
    path = Path(path).resolve()
    if path.parent == SHIPPED_WEIGHTS.parent.resolve() and os.environ.get("EBM_ALLOW_SHIPPED_WRITE") != "1":
        raise WeightsError(f"refusing to overwrite the shipped weights folder {path.parent}; save runs elsewhere")
    return path


def save_model(model: LatentEBM, path: str | Path, extra: dict | None = None) -> Path:
    """Write atomically; refuse to touch the shipped weights folder."""
    return write_atomically(check_weights_path(path), model_to_bytes(model, extra))


def _config(metadata: dict, key: str, cls, name: str):
    try:
        return cls(**json.loads(metadata[key]))
    except (KeyError, TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise WeightsError(f"{name}: metadata field {key!r} is missing or invalid: {e}") from None


MAX_HEADER_BYTES = 1 << 20
"""Most bytes of JSON header a weights file may have (the shipped one has about 6 KB)."""


def _read_header(data: bytes, name: str) -> tuple[dict, dict]:
    """(metadata, {tensor name: shape}) from a safetensors header: an 8-byte little-endian length, then JSON.

    Reads nothing past the header, so a file is judged by what it declares before any tensor is built.
    """
    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 2 <= header_len <= min(len(data) - 8, MAX_HEADER_BYTES):
        raise WeightsError(f"{name} is not a valid safetensors file: its header length is missing, "
                           f"past the end of the file or above {MAX_HEADER_BYTES:,} bytes")
    try:
        header = json.loads(data[8 : 8 + header_len])
        metadata = header.pop("__metadata__", None) or {}
        shapes = {key: tuple(int(n) for n in spec["shape"]) for key, spec in header.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise WeightsError(f"{name} is not a valid safetensors file: its header is not what safetensors writes ({e})") from None
    if not isinstance(metadata, dict):
        raise WeightsError(f"{name} is not a valid safetensors file: its metadata is not a JSON object")
    return metadata, shapes


def model_from_bytes(
    data: bytes, name: str = "weights", check_architecture: Callable[[AutoencoderConfig, EnergyConfig], None] | None = None,
) -> tuple[LatentEBM, dict]:
    """Rebuild a model from safetensors bytes; returns (model, extra metadata). Raises WeightsError.

    Everything the header declares (format, architecture, tensor names and shapes) is checked
    before any tensor is read or any module allocated: the model is laid out on the meta device,
    and the file's tensors become its weights (`assign=True`). `check_architecture` (e.g.
    `ebm.limits.check_app_architecture`) can refuse a model by its shapes alone.
    """
    metadata, shapes = _read_header(data, name)
    if metadata.get("format") != FORMAT:
        raise WeightsError(f"{name} is not an mnist-ebm weights file (format {metadata.get('format')!r}, expected {FORMAT!r})")
    ae_config = _config(metadata, "autoencoder", AutoencoderConfig, name)
    energy_config = _config(metadata, "energy", EnergyConfig, name)
    if check_architecture is not None:
        try:
            check_architecture(ae_config, energy_config)
        except ValueError as e:
            raise WeightsError(f"{name} is too large for this app: {e}") from None
    try:
        with torch.device("meta"):  # shapes only: no memory, however wide the metadata says the model is
            model = LatentEBM(Autoencoder(ae_config), EnergyNet(energy_config),
                              torch.zeros(ae_config.latent_dim), torch.ones(ae_config.latent_dim))
    except (ValueError, RuntimeError) as e:
        raise WeightsError(f"{name}: metadata describes an impossible model: {e}") from None
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"{name}: tensors do not match the architecture; missing {missing}, unexpected {unexpected}")
    for key, shape in shapes.items():
        if shape != expected[key]:
            raise WeightsError(f"{name}: tensor {key!r} has shape {shape}, the architecture in its metadata needs {expected[key]}")
    try:
        extra = json.loads(metadata.get("extra") or "{}")
    except ValueError as e:
        raise WeightsError(f"{name}: metadata field 'extra' is not valid JSON: {e}") from None
    if not isinstance(extra, dict):
        raise WeightsError(f"{name}: metadata field 'extra' must be a JSON object, got {type(extra).__name__}")
    try:  # the pages and the CLI load data by these, so a bad value must stop here
        if "dataset" in extra:
            check_dataset(extra["dataset"])
        if "threshold" in extra:
            check_threshold(extra["threshold"])
    except ValueError as e:
        raise WeightsError(f"{name}: metadata field 'extra' is invalid: {e}") from None
    try:
        tensors = load_bytes(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise WeightsError(f"{name} is not a valid safetensors file: {e}") from None
    for key, value in tensors.items():
        if not value.is_floating_point():
            raise WeightsError(f"{name}: tensor {key!r} holds {value.dtype}, not floating-point numbers")
        if not torch.isfinite(value).all():
            raise WeightsError(f"{name}: tensor {key!r} contains NaN or infinity")
    if (tensors["code_std"] <= 0).any():
        raise WeightsError(f"{name}: code_std must be positive")
    model.load_state_dict({k: v.float().contiguous() for k, v in tensors.items()}, assign=True)
    model.eval()
    return model, extra


def load_model(
    path: str | Path = SHIPPED_WEIGHTS, name: str | None = None,
    check_architecture: Callable[[AutoencoderConfig, EnergyConfig], None] | None = None,
) -> tuple[LatentEBM, dict]:
    """Load a weights file from disk; see `model_from_bytes`. Messages call it `name` (default: its path)."""
    path = Path(path)
    name = str(path) if name is None else name
    if not path.is_file():
        raise WeightsError(f"weights file {name} does not exist")
    return model_from_bytes(path.read_bytes(), name=name, check_architecture=check_architecture)
