"""Weights on disk: safetensors tensors plus JSON metadata, saved atomically, checked on load.

Never pickle: a weights file can come from a user upload, and safetensors cannot run code.
"""

from __future__ import annotations

import json
import os
import tempfile
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


def _read_metadata(data: bytes) -> dict:
    """The `__metadata__` of a safetensors header: an 8-byte little-endian length, then JSON."""
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return header.get("__metadata__") or {}


def model_from_bytes(data: bytes, name: str = "weights") -> tuple[LatentEBM, dict]:
    """Rebuild a model from safetensors bytes; returns (model, extra metadata). Raises WeightsError."""
    try:
        tensors = load_bytes(data)
        metadata = _read_metadata(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise WeightsError(f"{name} is not a valid safetensors file: {e}") from None
    if metadata.get("format") != FORMAT:
        raise WeightsError(f"{name} is not an mnist-ebm weights file (format {metadata.get('format')!r}, expected {FORMAT!r})")
    ae_config = _config(metadata, "autoencoder", AutoencoderConfig, name)
    energy_config = _config(metadata, "energy", EnergyConfig, name)
    try:
        model = LatentEBM(
            Autoencoder(ae_config), EnergyNet(energy_config),
            torch.zeros(ae_config.latent_dim), torch.ones(ae_config.latent_dim),
        )
    except (ValueError, RuntimeError) as e:
        raise WeightsError(f"{name}: metadata describes an impossible model: {e}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"{name}: tensors do not match the architecture; missing {missing}, unexpected {unexpected}")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise WeightsError(
                f"{name}: tensor {key!r} has shape {tuple(value.shape)}, "
                f"the architecture in its metadata needs {tuple(expected[key].shape)}"
            )
        if not torch.isfinite(value).all():
            raise WeightsError(f"{name}: tensor {key!r} contains NaN or infinity")
    if (tensors["code_std"] <= 0).any():
        raise WeightsError(f"{name}: code_std must be positive")
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
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    model.eval()
    return model, extra


def load_model(path: str | Path = SHIPPED_WEIGHTS, name: str | None = None) -> tuple[LatentEBM, dict]:
    """Load a weights file from disk; see `model_from_bytes`. Messages call it `name` (default: its path)."""
    path = Path(path)
    name = str(path) if name is None else name
    if not path.is_file():
        raise WeightsError(f"weights file {name} does not exist")
    return model_from_bytes(path.read_bytes(), name=name)
