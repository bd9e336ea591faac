"""Training in the background: one worker thread per server process, pollable and stoppable.

A `TrainingJob` runs `ebm.training.train` in a daemon thread and records every event in a
thread-safe way; a web page (or anything else) polls `job.snapshot()`, and the session that
started it may call `job.stop(by=...)` (anyone else gets `NotOwner`). Stopping takes effect
within one autoencoder batch or one block of Langevin steps, dropping the half-done iteration;
whatever was trained is then saved as a new run, like a finished training. A save that fails
(full or read-only disk) ends the job "failed" with the weights kept in memory for download,
and leaves no half-written run to list. The registry (`start_training`, `latest_job`,
`get_job`) lives at module level, so a job outlives the page or session that started it,
and only one training runs at a time: a second request is refused with `JobAlreadyRunning`, and
one above the app's budgets (`check_app_training`) before it starts.

No Streamlit here: the app imports this module, not the other way round.
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import model_to_bytes
from .data import DatasetError, load_binarized
from .limits import check_app_architecture, check_training_cost
from .runs import RunsDirError, check_room, check_runs_dir, default_runs_dir, save_run
from .threads import sync_torch_threads
from .training import (
    DivergenceError,
    TrainConfig,
    build_model,
    energy_training_images,
    run_metadata,
    standardize_codes,
    train,
    weights_bytes,
)

DataLoader = Callable[[str, str, float], tuple[torch.Tensor, torch.Tensor]]
"""(dataset, split, threshold) -> (binarized float images (N, 784), labels (N,))."""

STAGES = ("autoencoder", "energy")
ACTIVE_STATES = ("starting", "loading data", "training", "stopping", "saving")
FINAL_STATES = ("finished", "stopped", "failed")
HISTORY_LIMIT = 10  # finished jobs kept in the registry
ESTIMATE_AFTER_FRACTION = 0.02  # a stage's remaining time is estimated once its rate was measured over 2% of it
ESTIMATE_AFTER_SECONDS = 30.0  # ... or over 30 s, whichever comes first


def default_data_loader(dataset: str, split: str, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split with `ebm.data.load_binarized` (honours $EBM_DATA_DIR, downloads if needed)."""
    return load_binarized(dataset, split, data_dir=None, threshold=threshold)


class JobAlreadyRunning(RuntimeError):
    """A training is already running in this server process."""


class NotOwner(PermissionError):
    """Someone other than the session that started a training asked to stop it."""


@dataclass
class JobSnapshot:
    """A consistent copy of a job's state at one moment."""

    id: str
    state: str
    config: dict
    events: list[dict]  # one dict per training event: stage, step, total_steps, epoch, time, losses...
    messages: list[str]
    negatives: np.ndarray | None  # (n, 784) latest decoded negatives
    negatives_step: int | None
    error: str | None
    run_path: Path | None  # the saved weights file, once saved
    started_at: float  # wall clock (time.time())
    elapsed: float  # seconds since start (frozen when the job ended)
    ended_at: float | None  # wall clock when it finished, stopped or failed; None while active
    stage: str | None  # stage of the latest event
    progress: dict[str, float] = field(default_factory=dict)  # stage -> fraction done in [0, 1]
    stage_remaining: float | None = None  # seconds left in the current stage; None until its rate is known
    owner: str | None = None
    unsaved_model: bytes | None = None  # the trained weights (safetensors) when saving them failed

    @property
    def active(self) -> bool:
        """Still working: starting, loading data, training, stopping or saving."""
        return self.state in ACTIVE_STATES

    @property
    def done(self) -> bool:
        """Ended: finished, stopped or failed."""
        return self.state in FINAL_STATES

    def series(self, stage: str) -> list[dict]:
        """The events of one stage that carry losses."""
        return [e for e in self.events if e["stage"] == stage and e["losses"]]


class TrainingJob:
    """One background training; create it with `start_training`."""

    def __init__(self, cfg: TrainConfig, runs_dir: Path, data_loader: DataLoader, owner: str | None = None):
        self.id = uuid.uuid4().hex[:12]
        self.cfg = cfg  # frozen: the caller cannot change it under the job
        self.runs_dir = runs_dir
        self.owner = owner
        self._data_loader = data_loader
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._state = "starting"
        self._events: list[dict] = []
        self._messages: list[str] = []
        self._negatives: np.ndarray | None = None
        self._negatives_step: int | None = None
        self._error: str | None = None
        self._run_path: Path | None = None
        self._unsaved_model: bytes | None = None
        self._started_at = time.time()
        self._t0 = time.monotonic()
        self._ended: float | None = None
        self._stage_first: dict[str, dict] = {}  # each stage's first event: where its rate is measured from
        self._thread = threading.Thread(target=self._run, name=f"ebm-train-{self.id}", daemon=True)

    # ---- control -------------------------------------------------------------------------
    def stop(self, *, by: str | None) -> None:
        """Ask the worker to stop within a batch or a block of Langevin steps; what was trained is saved.

        `by` is the session asking: only the owner may stop a job that has one (NotOwner otherwise).
        """
        if self.owner is not None and by != self.owner:
            raise NotOwner("only the visitor who started this training can stop it")
        with self._lock:
            if self._state in ACTIVE_STATES and self._state not in ("stopping", "saving"):
                self._state = "stopping"
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def active(self) -> bool:
        """Whether the job is still working (see `JobSnapshot.active`)."""
        with self._lock:
            return self._state in ACTIVE_STATES

    # ---- reading -------------------------------------------------------------------------
    def snapshot(self) -> JobSnapshot:
        """A consistent copy of the job's state now, safe to read from any thread."""
        with self._lock:
            now = self._ended if self._ended is not None else time.monotonic()
            events = list(self._events)  # event dicts are never mutated after being appended
            stage = events[-1]["stage"] if events else None
            progress = {}
            for e in events:
                progress[e["stage"]] = e["step"] / max(e["total_steps"], 1)
            remaining = None
            if stage is not None and self._state in ACTIVE_STATES:
                remaining = remaining_seconds(self._stage_first[stage], events[-1], now - self._t0)
            return JobSnapshot(
                id=self.id, state=self._state, config=asdict(self.cfg), events=events,
                messages=list(self._messages),
                negatives=None if self._negatives is None else self._negatives.copy(),
                negatives_step=self._negatives_step, error=self._error, run_path=self._run_path,
                started_at=self._started_at, elapsed=now - self._t0,
                ended_at=None if self._ended is None else self._started_at + now - self._t0, stage=stage,
                progress=progress, stage_remaining=remaining, owner=self.owner, unsaved_model=self._unsaved_model,
            )

    # ---- the worker ----------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        with self._lock:
            if not (self._state == "stopping" and state == "training"):
                self._state = state

    def _record(self, ev) -> None:
        now = time.monotonic()
        with self._lock:
            self._events.append({
                "stage": ev.stage, "step": int(ev.step), "total_steps": int(ev.total_steps),
                "epoch": int(ev.epoch), "stage_elapsed": float(ev.elapsed), "time": now - self._t0,
                "losses": {k: float(v) for k, v in ev.losses.items()}, "message": ev.message,
            })
            self._stage_first.setdefault(ev.stage, self._events[-1])
            if ev.message:
                self._messages.append(ev.message)
            if ev.negatives is not None:
                self._negatives = ev.negatives.detach().cpu().float().numpy().copy()
                self._negatives_step = int(ev.step)

    def _run(self) -> None:
        cfg = self.cfg
        model = None
        train_x = None
        sync_torch_threads()  # this thread would otherwise use every core, whatever the process set
        try:
            self._set_state("loading data")
            train_x, _ = self._data_loader(cfg.dataset, "train", cfg.threshold)
            test_x, _ = self._data_loader(cfg.dataset, "test", cfg.threshold)
            if self._stop.is_set():
                self._finish("stopped", None, None)
                return
            self._set_state("training")
            model = build_model(cfg)
            for ev in train(model, train_x, test_x, cfg, should_stop=self._stop.is_set):
                self._record(ev)
        except DatasetError as e:
            self._finish("failed", None, f"Dataset problem: {e}")
            return
        except DivergenceError as e:
            self._finish("failed", None, f"Training diverged: {e}. Try a smaller learning rate or step size.")
            return
        except ValueError as e:
            self._finish("failed", None, f"Invalid configuration: {e}")
            return
        except Exception as e:  # noqa: BLE001 -- anything else: keep the server alive, show what happened
            traceback.print_exc()  # to the server's log: a traceback names server paths, which pages never show
            self._finish("failed", None, f"{type(e).__name__}: {e}")
            return
        self._save(model, train_x)

    def _save(self, model, train_x: torch.Tensor) -> None:
        cfg = self.cfg
        stopped = self._stop.is_set()
        self._set_state("saving")
        try:
            snap = self.snapshot()
            reached_energy = any(e["stage"] == "energy" for e in snap.events)
            if not reached_energy:
                # stopped during stage 1: fit the code statistics so the decoder is usable
                standardize_codes(model, energy_training_images(train_x, cfg), cfg.device)
            extra = run_metadata(cfg)
            extra.update({
                "stopped_early": stopped,
                "stages_done": {s: round(snap.progress.get(s, 0.0), 4) for s in STAGES},
                "trained_seconds": round(snap.elapsed, 1),
            })
            weights = model_to_bytes(model.cpu(), extra)
        except Exception as e:  # noqa: BLE001 -- report it on the page instead of losing the thread
            self._finish("failed", None, f"Could not save the run: {type(e).__name__}: {e}")
            return
        history = {"config": asdict(cfg), "events": snap.events, "messages": snap.messages, "stopped_early": stopped}
        try:
            path = save_run(weights, cfg.dataset, history, self.runs_dir)
        except Exception as e:  # noqa: BLE001 -- RunsDirError above all (disk full, read-only): keep the weights
            reason = e.reason if isinstance(e, RunsDirError) else f"could not be written ({type(e).__name__}: {e})"
            self._finish("failed", None, f"Could not save the run: the runs folder {reason}, "
                                         "so the trained model is kept in memory only.", unsaved=weights)
            return
        self._finish("stopped" if stopped else "finished", path, None)

    def _finish(self, state: str, path: Path | None, error: str | None, unsaved: bytes | None = None) -> None:
        with self._lock:
            self._state = state
            self._run_path = path
            self._error = error
            self._unsaved_model = unsaved
            self._ended = time.monotonic()


def remaining_seconds(first: dict, latest: dict, now: float) -> float | None:
    """Seconds left in a stage at `now` (seconds since the job started), at its pace from its `first`
    event to its `latest`: what came before its first event (loading data, the code statistics) is
    not that pace. None until the pace was measured over ESTIMATE_AFTER_FRACTION of the stage or
    ESTIMATE_AFTER_SECONDS, since the first steps alone give estimates far off."""
    done, measured = latest["step"] / latest["total_steps"], (latest["step"] - first["step"]) / latest["total_steps"]
    span = latest["time"] - first["time"]
    if done >= 1 or measured <= 0 or (measured < ESTIMATE_AFTER_FRACTION and span < ESTIMATE_AFTER_SECONDS):
        return None
    return max(0.0, span / measured * (1 - done) - (now - latest["time"]))


# ---- the per-process registry ----------------------------------------------------------------
_registry_lock = threading.Lock()
_jobs: list[TrainingJob] = []


def check_app_training(cfg: TrainConfig) -> TrainConfig:
    """`cfg` (checked when made) if this server may train it: on an available device,
    a model the app serves (`check_app_architecture`) and a cost within the caps (`check_training_cost`).

    Raises ValueError otherwise (ModelTooLarge and TrainingTooCostly among them), with one sentence saying why.
    """
    if cfg.device != "cpu" and not (cfg.device == "cuda" and torch.cuda.is_available()):
        raise ValueError(f"device {cfg.device!r} is not available here")
    check_app_architecture(cfg.autoencoder_config(), cfg.energy_config())
    check_training_cost(cfg)
    return cfg


def start_training(
    cfg: TrainConfig,
    runs_dir: str | Path | None = None,
    data_loader: DataLoader | None = None,
    owner: str | None = None,
) -> TrainingJob:
    """Check `cfg` (`check_app_training`) and start training it in the background for `owner`; returns the job.

    Raises JobAlreadyRunning when a training is already running in this process,
    ValueError for a configuration the app does not train or a runs directory under weights/, and
    RunsDirError for a runs directory that could not take the run (read-only, disk full).
    """
    cfg = check_app_training(cfg)
    root = check_room(check_runs_dir(default_runs_dir() if runs_dir is None else runs_dir), weights_bytes(cfg))
    with _registry_lock:
        running = next((j for j in _jobs if j.active), None)
        if running is not None:
            raise JobAlreadyRunning(
                f"a training is already running (job {running.id}, started "
                f"{time.strftime('%H:%M:%S', time.localtime(running.snapshot().started_at))}); "
                "only one training runs at a time — wait for it or stop it"
            )
        job = TrainingJob(cfg, root, data_loader or default_data_loader, owner)
        _jobs.append(job)
        del _jobs[:-HISTORY_LIMIT]
        job._thread.start()
    return job


def trainings_running() -> int:
    """How many trainings run in this process now (0 or 1): each holds a core."""
    with _registry_lock:
        return sum(j.active for j in _jobs)


def latest_job() -> TrainingJob | None:
    """The most recently started training (running or ended), if any."""
    with _registry_lock:
        return _jobs[-1] if _jobs else None


def get_job(job_id: str) -> TrainingJob | None:
    """The training with this id, if the registry still holds it."""
    with _registry_lock:
        return next((j for j in _jobs if j.id == job_id), None)
