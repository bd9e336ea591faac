"""Saved training runs: one folder per run under a runs directory, never under weights/.

A run folder holds `model.safetensors` (weights + metadata, see `ebm.checkpoint`) and, when
trained from the app, `history.json` (the training events). Listing reads only the
safetensors headers, so it stays cheap with many runs.

A run's folder is made when it is saved, never before training: `check_room` says up front
whether a save can work, and `save_run` writes the weights last, so a listed run is complete
and a failed save leaves no folder behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import SHIPPED_WEIGHTS, WeightsError, read_header, write_atomically

WEIGHTS_NAME = "model.safetensors"
HISTORY_NAME = "history.json"
STALE_TEMP_SECONDS = 120  # a temp file this old is left by a killed save: no save takes this long
ROOM_MARGIN = 1.5  # free space asked for, as a multiple of the weights' tensor bytes...
ROOM_SLACK_BYTES = 8 * 2**20  # ... plus this, for the history and the file headers


class RunsDirError(OSError):
    """A folder that cannot take a run. `reason` completes "the runs folder ..." without the
    path (for the browser); the message names the folder (for the command line)."""

    def __init__(self, folder: str | Path, reason: str):
        super().__init__(f"{folder} {reason}")
        self.folder = Path(folder)
        self.reason = reason


def default_runs_dir() -> Path:
    """`$EBM_RUNS_DIR` if set, else `runs` (relative to the working directory, like the CLI)."""
    return Path(os.environ.get("EBM_RUNS_DIR") or "runs")


def _inside_shipped(path: Path) -> bool:
    shipped = SHIPPED_WEIGHTS.parent.resolve()
    path = path.resolve()
    return path == shipped or shipped in path.parents


def check_runs_dir(runs_dir: str | Path) -> Path:
    """Return the runs directory as a Path; ValueError if it is (inside) the shipped weights folder."""
    path = Path(runs_dir)
    if _inside_shipped(path):
        raise ValueError(f"runs cannot be saved under the shipped weights folder ({SHIPPED_WEIGHTS.parent.name}/)")
    return path


def check_room(folder: str | Path, weights_bytes: int) -> Path:
    """Refuse, with RunsDirError, a folder where weights of `weights_bytes` cannot be saved: not
    a folder, not writable, or short of free space; returns the folder.

    Called before training, so that a full or read-only disk is found before the work, not
    after it. A folder not made yet (runs folders are made at save time) is judged by its
    nearest existing parent, which a probe file tests for real (permissions, read-only mounts).
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunsDirError(folder, f"is not a folder ({existing.name} is a file)")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".ebm-probe-")
    except OSError as e:
        raise RunsDirError(folder, f"is not writable ({e.strerror or type(e).__name__})") from None
    os.close(fd)
    os.unlink(probe)
    needed = int(weights_bytes * ROOM_MARGIN) + ROOM_SLACK_BYTES
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise RunsDirError(
            folder, f"has {free / 1e6:.1f} MB free on its disk and a run needs about {needed / 1e6:.1f} MB"
        )
    return folder


def clean_stale_temp(runs_dir: str | Path) -> None:
    """Delete the temp files (`.<name>.*.tmp`) that killed saves left in a runs directory and
    its run folders, and a run folder that this leaves without weights.

    Only files older than STALE_TEMP_SECONDS go, so a save in progress keeps its file.
    """
    root = Path(runs_dir)
    cutoff = time.time() - STALE_TEMP_SECONDS
    for tmp in [*root.glob(".*.tmp"), *root.glob("*/.*.tmp")]:
        try:
            if not tmp.is_file() or tmp.stat().st_mtime >= cutoff:
                continue
            tmp.unlink()
            folder = tmp.parent
            if folder != root and not any(folder.glob("*.safetensors")):
                (folder / HISTORY_NAME).unlink(missing_ok=True)
                folder.rmdir()  # fails, and keeps the folder, if anything else is in it
        except OSError:
            continue


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def new_run_dir(runs_dir: str | Path | None = None, dataset: str = "mnist", now: float | None = None) -> Path:
    """Create and return a fresh folder `<runs_dir>/<YYYYmmdd-HHMMSS>-<dataset>[-n]`.

    The name sorts by time; a clash (two runs in the same second) gets a numeric suffix.
    Creation is atomic (mkdir without exist_ok), so two callers never share a folder.
    """
    root = check_runs_dir(default_runs_dir() if runs_dir is None else runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{_slug(dataset)}"
    for n in range(1, 10_000):
        path = root / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"could not find a free run folder name for {stem} in {root}")


@dataclass
class RunInfo:
    """A saved run as listed: where it is and what its metadata says."""

    name: str  # folder name (or file stem for a loose .safetensors file)
    path: Path  # the weights file
    mtime: float
    size: int
    extra: dict = field(default_factory=dict)  # the `extra` metadata: dataset, train_config, ...

    @property
    def dataset(self) -> str:
        """The dataset the run was trained on, "?" when its metadata does not say."""
        return str(self.extra.get("dataset", "?"))

    @property
    def label(self) -> str:
        """The run's name as a menu shows it, marked when the training was stopped early."""
        stopped = " (stopped early)" if self.extra.get("stopped_early") else ""
        return f"{self.name}{stopped}"

    def trained(self) -> dict[str, tuple[int | None, int | None]]:
        """{"epochs": (done, planned), "iterations": (done, planned)}: a stopped run did fewer than planned.

        From the metadata's train_config and stages_done; None where the file does not say.
        """
        cfg = self.extra.get("train_config") or {}
        done = self.extra.get("stages_done") or {}
        counts = {}
        for key, field_name, stage in (
            ("epochs", "ae_epochs", "autoencoder"),
            ("iterations", "ebm_iterations", "energy"),
        ):
            planned = cfg.get(field_name)
            planned = planned if isinstance(planned, int) and not isinstance(planned, bool) else None
            fraction = done.get(stage)
            if planned is not None and isinstance(fraction, (int, float)) and 0 <= fraction <= 1:
                counts[key] = (round(fraction * planned), planned)
            else:
                counts[key] = (planned if not self.extra.get("stopped_early") else None, planned)
        return counts


def read_extra(path: str | Path) -> dict | None:
    """The `extra` metadata of a weights file from its header only; None if not an mnist-ebm file."""
    try:
        return read_header(path).extra
    except WeightsError:
        return None


def list_runs(runs_dir: str | Path | None = None) -> list[RunInfo]:
    """Runs under the runs directory, newest first: `<dir>/<run>/*.safetensors` and `<dir>/*.safetensors`.

    Files that are not mnist-ebm weights (or are being written: temp files start with '.')
    are skipped. A missing directory means no runs.
    """
    root = Path(default_runs_dir() if runs_dir is None else runs_dir)
    if not root.is_dir():
        return []
    clean_stale_temp(root)
    candidates = [p for p in root.glob("*.safetensors")] + [p for p in root.glob("*/*.safetensors")]
    runs = []
    for path in candidates:
        if path.name.startswith(".") or path.parent.name.startswith("."):
            continue
        extra = read_extra(path)
        if extra is None:
            continue
        try:
            stat = path.stat()
        except OSError:
            continue
        name = path.stem if path.parent == root else (
            path.parent.name if path.name == WEIGHTS_NAME else f"{path.parent.name}/{path.stem}")
        runs.append(RunInfo(name, path, stat.st_mtime, stat.st_size, extra))
    runs.sort(key=lambda r: (r.mtime, r.name), reverse=True)
    return runs


def save_run(weights: bytes, dataset: str, history: dict | None = None, runs_dir: str | Path | None = None) -> Path:
    """Save serialized weights (and the training history) as a new run; returns the weights file.

    The run's folder is made now, the history is written first and the weights last, so the
    run is listed only once complete. A failed write removes the folder and raises RunsDirError.
    """
    root = check_runs_dir(default_runs_dir() if runs_dir is None else runs_dir)
    clean_stale_temp(root)
    try:
        run_dir = new_run_dir(root, dataset)
    except OSError as e:
        raise RunsDirError(root, f"could not be written ({e.strerror or type(e).__name__})") from None
    try:
        if history is not None:
            write_history(run_dir, history)
        return write_atomically(run_dir / WEIGHTS_NAME, weights)
    except BaseException as e:  # an interrupted save, too, leaves no folder
        shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(e, OSError):
            raise RunsDirError(root, f"could not be written ({e.strerror or type(e).__name__})") from None
        raise


def write_history(run_dir: str | Path, history: dict) -> Path:
    """Write `history.json` into a run folder atomically."""
    run_dir = check_runs_dir(Path(run_dir).parent) / Path(run_dir).name
    return write_atomically(run_dir / HISTORY_NAME, json.dumps(history).encode())

