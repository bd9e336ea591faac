"""Artifacts on disk: safetensors tensors plus JSON metadata, saved atomically, checked on load.

One loader (`read_artifact`) reads every kind (the model here, the classifier in `ebm.classifier`,
run listings read only the header with `read_header`), each told apart by its format tag.

Never pickle: a weights file can come from a user upload, and safetensors cannot run code.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import nn

from . import __version__
from .data import check_dataset, check_threshold
from .models import Autoencoder, AutoencoderConfig, EnergyConfig, EnergyNet, LatentEBM

FORMAT = "mnist-ebm/1"
REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = {"mnist": REPO_ROOT / "weights" / "mnist_d4.safetensors",
                  "fashion-mnist": REPO_ROOT / "weights" / "fashion-mnist_d4.safetensors"}
"""The trained models in weights/, by the dataset each was trained on (`weights/README.md`)."""
SHIPPED_WEIGHTS = SHIPPED_MODELS["mnist"]  # the default model of the app and the command line


class WeightsError(ValueError):
    """A weights file that cannot be used, with the reason in the message."""


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


MAX_HEADER_BYTES = 1 << 20
"""Most bytes of JSON header a weights file may have (the shipped one has about 6 KB)."""
MAX_FILE_BYTES = 1 << 31
"""Most bytes an artifact file may have: far above any model the app serves (its uploads stop at 50 MB)."""


class Kind(NamedTuple):
    """A kind of artifact: the format tag its metadata carries and how messages call it."""

    format: str
    what: str  # completes "X is not ...": "an mnist-ebm weights file"
    missing: str  # the message for a missing file, with {name}


MODEL = Kind(FORMAT, "an mnist-ebm weights file", "weights file {name} does not exist")


@dataclass(frozen=True)
class Header:
    """What an artifact declares before any tensor is read: its metadata, `extra` and tensor shapes."""

    name: str  # how messages call the file
    metadata: dict
    extra: dict  # metadata["extra"], parsed: always a JSON object
    shapes: dict[str, tuple[int, ...]]

    def config(self, key: str, cls):
        """The config dataclass `cls` made from metadata field `key`; WeightsError naming the field otherwise."""
        try:
            return cls(**json.loads(self.metadata[key]))
        except (KeyError, TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
            raise WeightsError(f"{self.name}: metadata field {key!r} is missing or invalid: {e}") from None


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
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # JSON and Unicode decode errors are ValueErrors
        raise WeightsError(
            f"{name} is not a valid safetensors file: its header is not what safetensors writes ({e})"
        ) from None
    if not isinstance(metadata, dict):
        raise WeightsError(f"{name} is not a valid safetensors file: its metadata is not a JSON object")
    return metadata, shapes


def _check_size(size: int, name: str) -> None:
    if size > MAX_FILE_BYTES:
        raise WeightsError(f"{name} is {size:,} bytes, above the {MAX_FILE_BYTES:,} an artifact may have")


def _file_bytes(path: Path, kind: Kind, name: str, header_only: bool) -> bytes:
    """A file's bytes (only the length and the header when `header_only`), refusing missing and oversized files."""
    try:
        size = path.stat().st_size if path.is_file() else None
    except OSError:
        size = None
    if size is None:
        raise WeightsError(kind.missing.format(name=name))
    _check_size(size, name)
    try:
        with path.open("rb") as f:
            if not header_only:
                return f.read()
            head = f.read(8)
            return head + f.read(min(int.from_bytes(head, "little"), MAX_HEADER_BYTES) if len(head) == 8 else 0)
    except OSError as e:
        raise WeightsError(f"{name} could not be read: {e.strerror or type(e).__name__}") from None


def _header(data: bytes, kind: Kind, name: str) -> Header:
    metadata, shapes = _read_header(data, name)
    if metadata.get("format") != kind.format:
        raise WeightsError(f"{name} is not {kind.what} (format {metadata.get('format')!r}, expected {kind.format!r})")
    try:
        extra = json.loads(metadata.get("extra") or "{}")
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{name}: metadata field 'extra' is not valid JSON: {e}") from None
    if not isinstance(extra, dict):
        raise WeightsError(f"{name}: metadata field 'extra' must be a JSON object, got {type(extra).__name__}")
    return Header(name, metadata, extra, shapes)


def read_header(source: bytes | str | Path, kind: Kind = MODEL, name: str | None = None) -> Header:
    """An artifact's header, checked (length, JSON, format tag, `extra`); a file is read no further.

    Raises WeightsError."""
    if isinstance(source, bytes):
        return _header(source, kind, name or "weights")
    name = str(source) if name is None else name
    return _header(_file_bytes(Path(source), kind, name, header_only=True), kind, name)


def read_artifact(
    source: bytes | str | Path, kind: Kind, build: Callable[[Header], nn.Module], name: str | None = None,
) -> tuple[nn.Module, Header]:
    """The one loader of safetensors artifacts: (module holding the file's weights, in eval mode; its header).

    Bytes or a path (at most MAX_FILE_BYTES). Everything the header declares is checked before a
    tensor is read or a module allocated: `build(header)` lays the module out on the meta device
    (it raises WeightsError for metadata it refuses), then the file's tensor names and shapes must
    be the module's, and every tensor floating-point and finite; they become its weights (`assign=True`).
    """
    if isinstance(source, bytes):
        data, name = source, name or "weights"
        _check_size(len(data), name)
    else:
        name = str(source) if name is None else name
        data = _file_bytes(Path(source), kind, name, header_only=False)
    header = _header(data, kind, name)
    try:
        with torch.device("meta"):  # shapes only: no memory, however wide the metadata says the model is
            module = build(header)
    except (ValueError, RuntimeError) as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(f"{name}: metadata describes an impossible model: {e}") from None
    expected = {key: tuple(t.shape) for key, t in module.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(header.shapes)), sorted(set(header.shapes) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"{name}: tensors do not match the architecture; missing {missing}, unexpected {unexpected}")
    for key, shape in header.shapes.items():
        if shape != expected[key]:
            raise WeightsError(
                f"{name}: tensor {key!r} has shape {shape}, the architecture in its metadata needs {expected[key]}"
            )
    try:
        tensors = load_bytes(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise WeightsError(f"{name} is not a valid safetensors file: {e}") from None
    for key, value in tensors.items():
        if not value.is_floating_point():
            raise WeightsError(f"{name}: tensor {key!r} holds {value.dtype}, not floating-point numbers")
        if not torch.isfinite(value).all():
            raise WeightsError(f"{name}: tensor {key!r} contains NaN or infinity")
    module.load_state_dict({k: v.float().contiguous() for k, v in tensors.items()}, assign=True)
    module.eval()
    return module, header


def artifact_bytes(module: nn.Module, kind: Kind, metadata: dict[str, str]) -> bytes:
    """A module's tensors and `metadata` (the format tag added) as safetensors bytes."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    return save_bytes(tensors, metadata={"format": kind.format, **metadata})


def model_to_bytes(model: LatentEBM, extra: dict | None = None) -> bytes:
    """Serialise a model (tensors + metadata) to safetensors bytes, e.g. for a download button."""
    return artifact_bytes(model, MODEL, {
        "package_version": __version__,
        "autoencoder": json.dumps(asdict(model.autoencoder.config)),
        "energy": json.dumps(asdict(model.energy.config)),
        "extra": json.dumps(extra or {}),
    })


def model_from_bytes(
    data: bytes | str | Path, name: str = "weights",
    check_architecture: Callable[[AutoencoderConfig, EnergyConfig], None] | None = None,
) -> tuple[LatentEBM, dict]:
    """Rebuild a model from safetensors bytes (or a file); returns (model, extra metadata). Raises WeightsError.

    See `read_artifact`; `check_architecture` (e.g. `ebm.limits.check_app_architecture`) can
    refuse a model by its shapes alone, and the `extra` values the pages load data by are checked.
    """
    def build(header: Header) -> LatentEBM:
        ae_config = header.config("autoencoder", AutoencoderConfig)
        energy_config = header.config("energy", EnergyConfig)
        if check_architecture is not None:
            try:
                check_architecture(ae_config, energy_config)
            except ValueError as e:
                raise WeightsError(f"{header.name} is too large for this app: {e}") from None
        try:  # the pages and the CLI load data by these, so a bad value must stop here
            if "dataset" in header.extra:
                check_dataset(header.extra["dataset"])
            if "threshold" in header.extra:
                check_threshold(header.extra["threshold"])
        except ValueError as e:
            raise WeightsError(f"{header.name}: metadata field 'extra' is invalid: {e}") from None
        return LatentEBM(Autoencoder(ae_config), EnergyNet(energy_config),
                         torch.zeros(ae_config.latent_dim), torch.ones(ae_config.latent_dim))

    model, header = read_artifact(data, MODEL, build, name=name)
    if (model.code_std <= 0).any():
        raise WeightsError(f"{name}: code_std must be positive")
    return model, header.extra


def load_model(
    path: str | Path = SHIPPED_WEIGHTS, name: str | None = None,
    check_architecture: Callable[[AutoencoderConfig, EnergyConfig], None] | None = None,
) -> tuple[LatentEBM, dict]:
    """Load a weights file from disk; see `model_from_bytes`. Messages call it `name` (default: its path)."""
    return model_from_bytes(Path(path), name=str(path) if name is None else name, check_architecture=check_architecture)
