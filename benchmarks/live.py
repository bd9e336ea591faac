"""What watching a Sample run costs it: chain-steps per second with no watcher, with the run publishing a
`LiveFrame` every 0.3 s (`ebm.render.LIVE_INTERVAL`), and with that plus a thread that reads each new frame
every 0.25 s and turns it into what the page sends (`widgets.live_sample`: the energy chart's data as an
Arrow table), as a visitor's script thread does.

One torch thread, as the app runs each request. The three ways are interleaved, repeat by repeat, and the
median is reported, so a machine's load drifting over the run hits them alike.
Run: python -m benchmarks.live [--repeats 5]
"""

from __future__ import annotations

import statistics
import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa

from benchmarks.machine import cpu_model, one_thread_setup
from ebm.generate import SampleSettings
from ebm.render import LiveFrame, sample_view

REQUESTS = [SampleSettings(num_chains=1024, num_steps=1950), SampleSettings(num_chains=256, num_steps=5000)]


def chart(frame: LiveFrame) -> bytes:
    """The live energy chart's data as Streamlit sends it: a long table (step, series, energy) in Arrow."""
    n = frame.energy_traces.shape[1]
    table = pd.DataFrame({"step": np.tile(frame.trace_steps, n + 1),
                          "series": np.repeat(np.arange(n + 1), len(frame.trace_steps)),
                          "energy": np.concatenate([frame.energy_traces.T.ravel(), frame.energy_mean])})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, pa.Schema.from_pandas(table)) as writer:
        writer.write_table(pa.Table.from_pandas(table))
    return sink.getvalue().to_pybytes()


def timed(model, settings: SampleSettings, way: str) -> tuple[float, int]:
    """(seconds, frames published) of one run watched `way`: "none", "publish" or "page"."""
    latest: list[LiveFrame] = []
    done = threading.Event()

    def page() -> None:
        drawn = None
        while not done.wait(0.25):
            if latest and latest[-1] is not drawn:
                drawn = latest[-1]
                chart(drawn)

    watcher = threading.Thread(target=page) if way == "page" else None
    if watcher:
        watcher.start()
    start = time.perf_counter()
    sample_view(model, settings, publish=None if way == "none" else latest.append)
    seconds = time.perf_counter() - start
    done.set()
    if watcher:
        watcher.join()
    return seconds, len(latest)


def main() -> None:
    args, model = one_thread_setup(__doc__.splitlines()[0])
    print(f"CPU: {cpu_model()}; one torch thread; median of {args.repeats} interleaved runs")
    for settings in REQUESTS:
        ways = {"none": [], "publish": [], "page": []}
        frames = 0
        timed(model, settings, "none")  # warm-up: the kernel's first call compiles
        for _ in range(args.repeats):
            for way, times in ways.items():
                seconds, published = timed(model, settings, way)
                times.append(seconds)
                frames = max(frames, published)
        base = statistics.median(ways["none"])
        chain_steps = settings.num_chains * settings.num_steps
        print(f"{settings.num_chains} chains x {settings.num_steps} steps ({frames} frames):")
        for way, times in ways.items():
            seconds = statistics.median(times)
            print(f"  {way:>8}: {chain_steps / seconds / 1e6:6.3f} M chain-steps/s, {seconds:6.3f} s "
                  f"({100 * (seconds / base - 1):+5.1f}%)")


if __name__ == "__main__":
    main()
