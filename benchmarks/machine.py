"""What machine a benchmark runs on, and other work to run beside it: every benchmark prints the
CPU model (speeds differ between the Intel and AMD machines this project runs on) and measures
next to busy processes, since a shared machine is where the app must hold up."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ebm.checkpoint import load_model
from ebm.models import LatentEBM
from ebm.threads import limit_native_threads, set_chain_threads


def one_thread_setup(description: str) -> tuple[argparse.Namespace, LatentEBM]:
    """`--repeats` parsed, the process held to one chain thread and one native thread, the shipped model loaded:
    how the app serves one request, for the benchmarks that time a request's parts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    set_chain_threads(1)
    limit_native_threads()
    model, _ = load_model()
    return args, model


def cpu_model() -> str:
    """lscpu's model name."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next(
        (line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "unknown"
    )


@contextmanager
def busy_processes(n: int, seconds: float = 1200) -> Iterator[None]:
    """n other programs, each keeping a core busy, for the duration of a block (each ends by itself
    after `seconds` if this one is killed)."""
    hogs = [
        subprocess.Popen(
            [sys.executable, "-c", f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"]
        )
        for _ in range(n)
    ]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
