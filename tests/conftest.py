"""Shared fixtures: a tiny synthetic MNIST-shaped dataset on disk, a tiny trained model, and faults
(a read-only folder, a full disk)."""

import errno
import gzip
import os
import shutil
import subprocess
from collections import namedtuple
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from ebm import jobs
from ebm.data import RAW_FILES, idx_bytes
from ebm.training import TrainConfig, build_model, train


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bars and blobs at class-dependent places: structured enough for the models to learn."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, y in enumerate(labels):
        r, c = 4 + 2 * (y % 5) + rng.integers(0, 2), 4 + 10 * (y // 5) + rng.integers(0, 2)
        images[i, r : r + 8, c : c + 6] = 255
    return images, labels


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """An MNIST folder in torchvision's layout holding 512 train and 128 test synthetic digits."""
    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train_x, train_y = synthetic_digits(512, seed=0)
    test_x, test_y = synthetic_digits(128, seed=1)
    arrays = dict(zip(RAW_FILES, (train_x, train_y, test_x, test_y)))
    for name, array in arrays.items():
        (raw / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    return root


TINY_CONFIG = dict(
    ae_hidden_dim=32, ae_epochs=1, ae_batch_size=64, ebm_hidden_dim=16, ebm_iterations=20,
    ebm_batch_size=32, mcmc_steps=3, buffer_size=128, ebm_likelihood_iterations=0,
)


@pytest.fixture(scope="session")
def tiny_model():
    """A model trained for a few seconds on random binary images (for plumbing tests)."""
    cfg = TrainConfig(**TINY_CONFIG)
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(256, 784, generator=gen) < 0.2).float()
    model = build_model(cfg)
    for _ in train(model, images[:192], images[192:], cfg):
        pass
    return model, cfg


def synthetic_data_loader(train_size: int = 256, test_size: int = 64, seed: int = 0) -> jobs.DataLoader:
    """A `jobs.DataLoader` of random binary 784-d images with random labels: trainings without MNIST."""

    def load(dataset: str, split: str, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        n = train_size if split == "train" else test_size
        gen = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
        images = (torch.rand(n, 784, generator=gen) < 0.2).float()
        return images, torch.randint(10, (n,), generator=gen)

    return load


def running_job() -> jobs.TrainingJob | None:
    """The training running in this process, if any: the latest job, as none starts while one runs."""
    job = jobs.latest_job()
    return job if job is not None and job.active else None


@contextmanager
def isolated_server_state(tmp_path, monkeypatch):
    """Runs under tmp, no MNIST, one torch thread per request; afterwards no training left
    running and torch's thread count as it was (the app's tests share one process)."""
    monkeypatch.setenv("EBM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("EBM_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("EBM_TORCH_THREADS", "1")
    threads = torch.get_num_threads()
    yield tmp_path
    job = running_job()
    if job is not None:
        job.stop(by=job.owner)
        job.join(60)
    torch.set_num_threads(threads)


@pytest.fixture
def read_only_dir(tmp_path):
    """An existing folder in which nobody can create files, root included: chmod binds other users,
    and root (as in CI) gets the immutable flag (chattr +i) instead."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        lock, unlock = lambda: folder.chmod(0o555), lambda: folder.chmod(0o755)
    elif shutil.which("chattr") is not None:
        def chattr(flag: str):
            return lambda: subprocess.run(["chattr", flag, str(folder)], check=True, capture_output=True)

        lock, unlock = chattr("+i"), chattr("-i")
    else:
        pytest.skip("root ignores chmod, and chattr is not installed to make a folder read-only")
    try:
        lock()
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot make a folder read-only for root here: {e.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        unlock()


def disk_full_under(monkeypatch, folder, name: str = "") -> None:
    """Make every fsync of a file under `folder` (whose name starts with `.{name}` when given: the
    temp files of atomic writes) fail as on a full disk, OSError ENOSPC, in every thread."""
    real_fsync, folder = os.fsync, Path(folder).resolve()

    def fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.is_relative_to(folder) and path.name.startswith(f".{name}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def full_disk(monkeypatch, free: int = 1_000_000) -> None:
    """shutil.disk_usage reports `free` bytes left (1 MB: less than any run needs)."""
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - free, free))
