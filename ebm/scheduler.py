"""Fair shares of a few cores for the sampling work of many sessions.

A server's pages hand their heavy work (a sampling run, a quadrature) to `Scheduler.submit` with
a key that says what the result depends on, and wait on the `Ticket` they get back:
- at most `capacity()` jobs run at once, one per core (each on one thread, see `ebm.threads`);
  the others wait in FIFO order, and a ticket says how many jobs are ahead of it;
- a session wants one result at a time: a newer request from the same session cancels the
  older one, dropped from the queue or, when running, stopped at its next block of steps
  (`work` gets a `Progress`, called as `should_stop(step)` after each block, as
  `ebm.samplers.run_chains` calls its callback); a ticket's `cancel` stops it on request;
- a running job may `publish` a snapshot of where it is (e.g. a sampling run's digits so far), which
  every session waiting on it reads from its ticket (`Ticket.snapshot`): one run, the same live view for all;
- the same key asked by several sessions runs once, and the last results are kept (`cache_size`),
  so the page that everyone opens first costs one run.

No Streamlit here: `widgets.scheduled` is the page side.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable
from typing import Any

from .threads import sync_torch_threads, usable_cores

Work = Callable[["Progress"], Any]
"""work(progress) -> result; `progress(steps_done)` records progress and says whether to give up."""

QUEUED, RUNNING, DONE, CANCELLED, FAILED = "queued", "running", "done", "cancelled", "failed"


class Cancelled(Exception):
    """The job was cancelled: every session that wanted it asked for something else or left."""


class _Job:
    def __init__(self, key: Hashable, work: Work, total: int):
        self.key, self.work, self.total = key, work, total
        self.state = QUEUED
        self.steps_done = 0
        self.sessions: set[str] = set()
        self.snapshot: Any = None
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = threading.Event()


class Progress:
    """What a job's work sees of it, in the worker thread: call it after each block of steps (it returns
    True once nobody wants the result: stop then), and `publish` what a watcher may show meanwhile."""

    def __init__(self, job: _Job):
        self._job = job

    def __call__(self, steps_done: int) -> bool:
        """Record the steps done; True when the job was cancelled and should stop."""
        self._job.steps_done = steps_done
        return self._job.state == CANCELLED

    def publish(self, snapshot: Any) -> None:
        """The latest view of the running work: replaces the previous one (one reference swap, no lock)."""
        self._job.snapshot = snapshot


class Ticket:
    """One session's claim on a job: where it stands, and its result once done."""

    def __init__(self, scheduler: Scheduler, job: _Job, session: str):
        self._scheduler, self._job, self.session = scheduler, job, session

    @property
    def state(self) -> str:
        """The job's state (queued, running, done, ...)."""
        return self._job.state

    @property
    def ahead(self) -> int:
        """Jobs the server works on before this one: those queued before it and those running (0 once it runs)."""
        return self._scheduler._ahead(self._job)

    @property
    def progress(self) -> float:
        """Fraction of the job's steps done, in [0, 1]."""
        return min(1.0, self._job.steps_done / self._job.total) if self._job.total else 0.0

    @property
    def snapshot(self) -> Any:
        """What the running work last published (None before its first, or for work that publishes nothing)."""
        return self._job.snapshot

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended or `timeout` seconds have passed; True if it has ended."""
        return self._job.finished.wait(timeout)

    def result(self) -> Any:
        """The job's result; raises `Cancelled`, or whatever the work raised."""
        self._job.finished.wait()
        if self._job.state == CANCELLED:
            raise Cancelled(f"job {self._job.key!r} was cancelled")
        if self._job.error is not None:
            raise self._job.error
        return self._job.value

    def cancel(self) -> None:
        """This session no longer wants the result; the job stops when no other session does."""
        self._scheduler._release(self._job, self.session)


class Scheduler:
    """A FIFO queue of keyed jobs and `capacity()` worker slots; see the module docstring."""

    def __init__(self, capacity: Callable[[], int] | None = None, cache_size: int = 32):
        self._capacity = capacity or usable_cores
        self._cache_size = cache_size
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._running: list[_Job] = []
        self._by_key: dict[Hashable, _Job] = {}  # queued or running jobs
        self._by_session: dict[str, _Job] = {}
        self._results: collections.OrderedDict[Hashable, _Job] = collections.OrderedDict()
        self._workers: list[threading.Thread] = []

    def submit(self, key: Hashable, session: str, work: Work, total: int = 0) -> Ticket:
        """Ask for the result of `work`, known by `key`, for `session`; cancels the session's previous job."""
        with self._cond:
            previous = self._by_session.get(session)
            job = self._results.get(key)
            if job is not None:
                self._results.move_to_end(key)
            else:
                job = self._by_key.get(key)
                if job is None:
                    job = self._by_key[key] = _Job(key, work, total)
                    self._queue.append(job)
                    self._start_workers()
                    self._cond.notify_all()
                job.sessions.add(session)
                self._by_session[session] = job
        if previous is not None and previous is not job:
            self._release(previous, session)
        return Ticket(self, job, session)

    def stats(self) -> dict[str, int]:
        """How many jobs are queued and running now, and the current capacity."""
        with self._cond:
            return {"queued": len(self._queue), "running": len(self._running), "capacity": self._slots()}

    # ---- inside -------------------------------------------------------------------------------
    def _slots(self) -> int:
        return max(1, int(self._capacity()))

    def _ahead(self, job: _Job) -> int:
        with self._cond:
            if job.state != QUEUED:
                return 0
            return self._queue.index(job) + len(self._running)

    def _release(self, job: _Job, session: str) -> None:
        with self._cond:
            job.sessions.discard(session)
            if self._by_session.get(session) is job:
                del self._by_session[session]
            if job.sessions or job.state not in (QUEUED, RUNNING):
                return
            if job.state == QUEUED:
                self._queue.remove(job)
            if self._by_key.get(job.key) is job:
                del self._by_key[job.key]
            job.state = CANCELLED  # a running job sees this at its next should_stop
            if job not in self._running:
                job.finished.set()
            self._cond.notify_all()

    def _start_workers(self) -> None:
        while len(self._workers) < self._slots():  # capacity() says how many cores: one worker each
            worker = threading.Thread(target=self._work, name=f"ebm-scheduler-{len(self._workers)}", daemon=True)
            self._workers.append(worker)
            worker.start()

    def _work(self) -> None:
        sync_torch_threads()
        while True:
            with self._cond:
                while not self._queue or len(self._running) >= self._slots():
                    self._cond.wait(timeout=0.5)  # capacity can change (a training starts or ends)
                job = self._queue.popleft()
                job.state = RUNNING
                self._running.append(job)
            value, error = None, None
            try:
                value = job.work(Progress(job))
            except Exception as e:  # noqa: BLE001 -- handed to whoever waits on the job
                error = e
            with self._cond:
                self._running.remove(job)
                if self._by_key.get(job.key) is job:  # a cancelled job's key may already name a newer job
                    del self._by_key[job.key]
                job.snapshot = None  # kept results stay small; their waiters read the result
                if job.state != CANCELLED:
                    job.value, job.error = value, error
                    job.state = FAILED if error is not None else DONE
                    if error is None:
                        self._results[job.key] = job
                        while len(self._results) > self._cache_size:
                            self._results.popitem(last=False)
                for session in list(job.sessions):
                    if self._by_session.get(session) is job:
                        del self._by_session[session]
                job.finished.set()
                self._cond.notify_all()
