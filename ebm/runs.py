"""Saved training runs: one folder per run under a runs directory, never under weights/.

A run folder holds `model.safetensors` (weights + metadata, see `ebm.checkpoint`) and, when
trained from the app, `history.json` (the training events). Listing reads only the
safetensors headers, so it stays cheap with many runs.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError, safe_open

from .checkpoint import FORMAT, SHIPPED_WEIGHTS, write_atomically

WEIGHTS_NAME = "model.safetensors"
HISTORY_NAME = "history.json"


def default_runs_dir() -> Path:
    """``$EBM_RUNS_DIR`` if set, else ``runs`` (relative to the working directory, like the CLI)."""
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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def new_run_dir(runs_dir: str | Path | None = None, dataset: str = "mnist", now: float | None = None) -> Path:
    """Create and return a fresh folder ``<runs_dir>/<YYYYmmdd-HHMMSS>-<dataset>[-n]``.

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
    has_history: bool = False

    @property
    def dataset(self) -> str:
        return str(self.extra.get("dataset", "?"))

    @property
    def label(self) -> str:
        stopped = " (stopped early)" if self.extra.get("stopped_early") else ""
        return f"{self.name}{stopped}"

    @property
    def history_path(self) -> Path:
        return self.path.parent / HISTORY_NAME


def read_extra(path: str | Path) -> dict | None:
    """The `extra` metadata of a weights file from its header only; None if not an mnist-ebm file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None
    if meta.get("format") != FORMAT:
        return None
    try:
        extra = json.loads(meta.get("extra") or "{}")
    except json.JSONDecodeError:
        return None
    return extra if isinstance(extra, dict) else None


def list_runs(runs_dir: str | Path | None = None) -> list[RunInfo]:
    """Runs under the runs directory, newest first: ``<dir>/<run>/*.safetensors`` and ``<dir>/*.safetensors``.

    Files that are not mnist-ebm weights (or are being written: temp files start with '.')
    are skipped. A missing directory means no runs.
    """
    root = Path(default_runs_dir() if runs_dir is None else runs_dir)
    if not root.is_dir():
        return []
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
        runs.append(RunInfo(name, path, stat.st_mtime, stat.st_size, extra, (path.parent / HISTORY_NAME).is_file()))
    runs.sort(key=lambda r: (r.mtime, r.name), reverse=True)
    return runs


def find_run(name: str, runs_dir: str | Path | None = None) -> RunInfo | None:
    """The listed run called `name`, or None."""
    return next((r for r in list_runs(runs_dir) if r.name == name), None)


def write_history(run_dir: str | Path, history: dict) -> Path:
    """Write `history.json` into a run folder atomically."""
    run_dir = check_runs_dir(Path(run_dir).parent) / Path(run_dir).name
    return write_atomically(run_dir / HISTORY_NAME, json.dumps(history).encode())


def read_history(run: RunInfo | str | Path) -> dict | None:
    """The training history saved with a run, or None when there is none (or it is unreadable)."""
    path = run.history_path if isinstance(run, RunInfo) else Path(run) / HISTORY_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
