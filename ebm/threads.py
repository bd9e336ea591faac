"""How this package's work shares the machine's cores, and why.

Native thread pools (torch's OpenMP, the OpenBLAS that the compiled kernels call) split every
small op over their threads and wait for all of them at its end. When another process holds a
core, each of those waits lasts until the descheduled thread runs again: next to one busy
process, two-thread training ran at 0.27-0.35x its speed alone and next to two at 0.05x (README,
"Sharing the cores"). With one native thread per worker every op finishes on the core it started
on, whatever else runs, and the floats do not depend on how many cores there are.

So the native pools get one thread (`limit_native_threads`, `EBM_TORCH_THREADS` overrides torch's),
and the cores are used at a grain this package controls: chains split over `chain_threads()` helper
threads in `ebm.kernels` (the command line), or independent requests side by side in
`ebm.scheduler` (the app, which sets `set_chain_threads(1)`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from threadpoolctl import threadpool_limits

TORCH_THREADS_ENV = "EBM_TORCH_THREADS"
SERVING_SLOTS_ENV = "EBM_SERVING_SLOTS"


def _positive_int_env(name: str) -> int | None:
    """The environment variable `name` as an integer >= 1, None when unset or empty; a clear error otherwise."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"${name} must be a whole number >= 1, got {raw!r}")
    return value


@functools.cache
def usable_cores() -> int:
    """Cores this process may run on: CPU affinity and a container's CPU quota (cgroups) count.
    Read once: the scheduler asks at every job."""
    from joblib.externals.loky import cpu_count  # honours affinity and cgroup v1/v2 quotas

    return max(1, cpu_count(only_physical_cores=False))


def torch_threads() -> int:
    """Torch's intra-op threads: $EBM_TORCH_THREADS if set, else 1."""
    return _positive_int_env(TORCH_THREADS_ENV) or 1


def serving_slots() -> int:
    """How many requests a server runs at once: $EBM_SERVING_SLOTS if set, else one per usable core."""
    return _positive_int_env(SERVING_SLOTS_ENV) or usable_cores()


def limit_native_threads() -> int:
    """One thread for OpenBLAS/MKL-style BLAS pools and `torch_threads()` for torch; returns torch's.

    Call it once per process before heavy work (the CLI does, the app at its first run); idempotent.
    """
    limit_blas_threads()
    return limit_torch_threads()


def limit_torch_threads() -> int:
    """`torch_threads()` for torch, in the process and the calling thread; returns it. Cheap
    (`limit_blas_threads` scans every loaded library, about 4 ms): call it in any new thread."""
    n = torch_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return sync_torch_threads()


def limit_blas_threads() -> None:
    """One thread in every BLAS library loaded so far (numpy's and scipy's OpenBLAS): the kernels'
    matrix products then give the same floats whatever else runs, and nothing spins waiting."""
    threadpool_limits(1, user_api="blas")


def sync_torch_threads() -> int:
    """Give the calling thread torch's process-wide intra-op thread count; returns it.

    `torch.set_num_threads` also sets OpenMP's thread limit, but OpenMP keeps that per thread:
    a thread started later (a web server's script thread, a worker) gets OpenMP's default of
    every core. Cheap and idempotent: call it at the start of work in any new thread. A thread
    that already ran torch ops reads back its own count (`torch.get_num_threads` is OpenMP's, per
    thread), so torch work for `run_together`'s long-lived helpers goes through `run_shards`.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(n)
    return n


_chain_threads: int | None = None


def chain_threads() -> int:
    """Threads that one call splits its work over: a compiled sampling call its chains, a stage-1 step its
    batch's shards (default: `usable_cores()`)."""
    return _chain_threads or usable_cores()


def set_chain_threads(n: int | None) -> None:
    """Fix the chain threads for this process (the app uses 1 and runs requests side by side); None: default."""
    global _chain_threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"chain threads must be an integer >= 1 or None, got {n!r}")
    _chain_threads = n


T = TypeVar("T")
_helpers: ThreadPoolExecutor


def _new_pool() -> None:
    global _helpers
    # The threads start lazily, on the first task.
    _helpers = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="ebm-helpers")


_new_pool()
os.register_at_fork(after_in_child=_new_pool)  # a forked child has none of the parent's threads


def run_together(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """The tasks' results, in order, computed at once: the calling thread runs the first, helper threads
    the others. Worth it for tasks that release the GIL (compiled kernels, torch ops)."""
    first, *others = tasks
    futures = [_helpers.submit(task) for task in others]
    results = [first()]
    return results + [future.result() for future in futures]


def run_shards(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Torch work split in fixed parts: the results in order, at once on `chain_threads()` cores
    (`run_together`), or one after the other on one. Each task first sets torch's thread count: a pool
    thread keeps whatever count it had (see `sync_torch_threads`)."""

    def on_torch_threads(task: Callable[[], T]) -> T:
        limit_torch_threads()
        return task()

    tasks = [functools.partial(on_torch_threads, task) for task in tasks]
    return run_together(tasks) if chain_threads() > 1 else [task() for task in tasks]
