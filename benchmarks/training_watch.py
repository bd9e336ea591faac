"""What watching a training costs: stage-2 throughput with the Train page open vs closed, on one real server.

One `streamlit run app.py` server (benchmarks/serving.py's, on 127.0.0.1, runs saved to a
temporary folder) of the repository given by --repo (this checkout by default), with
$EBM_DATA_DIR when it holds MNIST, else a small synthetic MNIST-shaped set. A websocket
session (Streamlit's own protocol, as in benchmarks/serving.py) opens the Train page, sets
the form's epochs and iterations through widget states and presses "Start training" (the
form submit button's trigger); the other hyperparameters keep their defaults.

Once stage 2 runs, --windows pairs of windows of --window seconds follow, OPEN then CLOSED, then
CLOSED then OPEN, and so on (so a rate that drifts during the run favours neither kind):
  OPEN   the session stays connected. It behaves as a browser tab does: the live panel is an
         `st.fragment(run_every=...)`, whose reruns the *client* asks for (the server sends
         `auto_rerun`; the browser then sends a fragment rerun every interval), so this client
         keeps those timers, and every fragment run redraws the progress bars and charts.
  CLOSED the session disconnects, the window passes with no client, then a NEW session opens
         the Train page and reads the job's progress once (its first run shows the running job).
A reading is one script run's stage-2 progress: the time its progress bar arrived and the
iteration it shows. The bar's text is rounded to whole percent ("Stage 2 · energy net: 26%"),
so the iteration is read from the same run's "Contrastive loss" chart (one point every 10
iterations, the same snapshot as the bar); the bar's fraction × total is printed alongside as
a cross-check. Consecutive windows share their boundary reading, so no time is left out.

Run: python -m benchmarks.training_watch [--repo PATH] [--window 40] [--windows 2] [--iterations N]
The last line is `watch_ratio=<open it/s / closed it/s>` (below 1: watching slows the training).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file from another checkout: find this one's benchmarks.serving
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.runtime.state.common import user_key_from_element_id
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from benchmarks.machine import cpu_model
from benchmarks.serving import REPO, REPO_HELP, app_checkout, connect_session, streamlit_server

PAGE = "train"  # the Train page's url_path in app.py
STAGE2_PROGRESS = "Stage 2"  # the stage-2 progress bar's text starts with it
STEP_CHART = "Contrastive loss"  # title of the chart whose points are the stage-2 events (x = iteration)
SUBMIT_LABEL = "Start training"
EPOCHS_KEY, ITERATIONS_KEY = "t_ae_epochs", "t_ebm_iterations"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
PAGE_LOAD_TIMEOUT_S = 120
STAGE2_TIMEOUT_S = 900  # data loading and stage 1 (one epoch) on a busy 2-core machine
READING_TIMEOUT_S = 60  # the open page gets a reading every second or so


class BenchmarkError(RuntimeError):
    pass


@dataclass
class Reading:
    """One script run's view of the training: when its stage-2 bar arrived, and the iteration it shows."""

    t: float  # time.monotonic()
    step: int  # last charted stage-2 iteration (0 before the first stage-2 event)
    percent: int  # the stage-2 bar's value, whole percent


@dataclass
class Window:
    kind: str  # "open" or "closed"
    start: Reading
    end: Reading
    readings: int  # readings received during the window (open: fragment runs; closed: 0)

    @property
    def seconds(self) -> float:
        return self.end.t - self.start.t

    @property
    def iterations(self) -> int:
        return self.end.step - self.start.step

    @property
    def rate(self) -> float:
        return self.iterations / self.seconds


# ---- data ------------------------------------------------------------------------------------
def mnist_dir() -> Path | None:
    """$EBM_DATA_DIR if it holds MNIST (raw or .gz), else None."""
    root = os.environ.get("EBM_DATA_DIR")
    raw = Path(root or ".") / "MNIST" / "raw"
    if root and all((raw / n).is_file() or (raw / f"{n}.gz").is_file() for n in MNIST_FILES):
        return Path(root)
    return None


def synthetic_mnist(root: Path) -> Path:
    """A small MNIST-shaped dataset (random strokes) in torchvision's raw layout, as tests/test_browser.py makes."""

    def idx(array: np.ndarray) -> bytes:  # the IDX format: magic (0, 0, ubyte, ndim), big-endian sizes, data
        return (
            bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape) + array.tobytes()
        )

    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        n = 2048 if name.startswith("train") else 256
        array = ((rng.random((n, 28, 28)) < 0.2) * 255).astype(np.uint8) if "images" in name else \
            rng.integers(0, 10, n).astype(np.uint8)
        (raw / f"{name}.gz").write_bytes(gzip.compress(idx(array)))
    return root


# ---- one session on the Train page --------------------------------------------------------------
def plotly_values(value) -> list[float]:
    """A trace's x: a JSON list, or plotly's typed-array encoding {"dtype": "i4", "bdata": base64}."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).tolist()
    return list(value or [])


def last_charted_step(spec: str) -> int | None:
    """The largest x of the chart titled STEP_CHART, 0 if it has no points; None for another chart."""
    fig = json.loads(spec)
    title = fig.get("layout", {}).get("title", {})
    if STEP_CHART not in (title.get("text", "") if isinstance(title, dict) else str(title)):
        return None
    xs = [x for trace in fig.get("data", []) for x in plotly_values(trace.get("x"))]
    return int(max(xs)) if xs else 0


class TrainPage:
    """A browser tab on the Train page, over one websocket: what it saw, and its fragment timers."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.page_script_hash = ""
        self.query_string = ""
        self.element_ids: dict[str, str] = {}  # user key -> element id (number inputs)
        self.submit_id: str | None = None
        self.values: dict[str, int] = {}  # element id -> value, sent with every rerun (a browser's widget states)
        self.readings: list[Reading] = []
        self.runs_finished = 0
        self.error: str | None = None
        self.closed = False
        self._bar: tuple[float, int] | None = None  # this run's stage-2 bar: (arrival, percent)
        self._timers: dict[str, tuple[float, asyncio.Task]] = {}  # fragment id -> (interval, task)
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    def rerun_message(self, fragment_id: str | None = None, trigger_id: str | None = None) -> BackMsg:
        back = BackMsg()
        state = back.rerun_script
        state.page_name = PAGE
        state.page_script_hash = self.page_script_hash
        state.query_string = self.query_string
        for element_id, value in self.values.items():
            state.widget_states.widgets.add(id=element_id, int_value=value)
        if trigger_id is not None:
            state.widget_states.widgets.add(id=trigger_id, trigger_value=True)
        if fragment_id is not None:
            state.fragment_id = fragment_id
            state.is_auto_rerun = True
        return back

    async def send(self, back: BackMsg) -> None:
        await self.ws.send(back.SerializeToString())

    async def wait_for(self, condition, timeout_s: float, what: str) -> None:
        """Wait until condition() holds; raise on a timeout, an exception element or a disconnect."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self._changed:
                    await self._changed.wait_for(lambda: condition() or self.error is not None or self.closed)
        except TimeoutError:
            raise BenchmarkError(f"timed out after {timeout_s:.0f} s waiting for {what}") from None
        if self.error is not None:
            raise BenchmarkError(f"while waiting for {what}: {self.error}")
        if not condition():
            raise BenchmarkError(f"the server closed the connection while waiting for {what}")

    async def load(self) -> Reading | None:
        """The page load; returns its reading (None if no training is shown)."""
        await self.send(self.rerun_message())
        await self.wait_for(lambda: self.runs_finished >= 1 and self.submit_id is not None, PAGE_LOAD_TIMEOUT_S,
                            "the Train page to load")
        return self.readings[0] if self.readings else None

    async def start_training(self, epochs: int, iterations: int) -> None:
        missing = {EPOCHS_KEY, ITERATIONS_KEY} - set(self.element_ids)
        if missing:
            raise BenchmarkError(f"no number inputs with keys {sorted(missing)} on the Train page")
        self.values = {self.element_ids[EPOCHS_KEY]: epochs, self.element_ids[ITERATIONS_KEY]: iterations}
        await self.send(self.rerun_message(trigger_id=self.submit_id))

    async def close(self) -> None:
        for _, task in self._timers.values():
            task.cancel()
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, *(task for _, task in self._timers.values()), return_exceptions=True)

    async def _auto_rerun(self, fragment_id: str, interval_s: float) -> None:
        """What the browser's setInterval does: ask for the fragment's rerun every interval, running or not."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                await self.send(self.rerun_message(fragment_id=fragment_id))
        except ConnectionClosed:
            pass

    async def _read(self) -> None:
        try:
            while True:
                self._handle(ForwardMsg.FromString(await self.ws.recv()))
                async with self._changed:
                    self._changed.notify_all()
        except ConnectionClosed:
            self.closed = True
            async with self._changed:
                self._changed.notify_all()

    def _handle(self, msg: ForwardMsg) -> None:
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.page_script_hash = msg.new_session.page_script_hash
            self._bar = None
        elif kind == "page_info_changed":
            self.query_string = msg.page_info_changed.query_string
        elif kind == "script_finished":
            self.runs_finished += 1
        elif kind == "auto_rerun":
            fragment_id, interval_s = msg.auto_rerun.fragment_id, msg.auto_rerun.interval
            if fragment_id and self._timers.get(fragment_id, (None,))[0] != interval_s:
                if fragment_id in self._timers:
                    self._timers[fragment_id][1].cancel()
                self._timers[fragment_id] = (interval_s, asyncio.create_task(self._auto_rerun(fragment_id, interval_s)))
        elif kind == "stop_auto_rerun":
            for fragment_id in msg.stop_auto_rerun.fragment_ids:
                if fragment_id in self._timers:
                    self._timers.pop(fragment_id)[1].cancel()
        elif kind in ("ref_hash", "page_not_found"):
            self.error = f"unexpected {kind}: {getattr(msg, kind)}"
        elif kind == "delta" and msg.delta.HasField("new_element"):
            self._element(msg.delta.new_element)

    def _element(self, element) -> None:
        which = element.WhichOneof("type")
        if which == "exception":
            self.error = f"exception: {element.exception.type}: {element.exception.message}"
        elif which == "number_input":
            key = user_key_from_element_id(element.number_input.id)
            if key:
                self.element_ids[key] = element.number_input.id
        elif which == "button" and element.button.is_form_submitter and element.button.label == SUBMIT_LABEL:
            self.submit_id = element.button.id
        elif which == "progress" and element.progress.text.startswith(STAGE2_PROGRESS):
            self._bar = (time.monotonic(), element.progress.value)
        elif which == "plotly_chart" and self._bar is not None:
            step = last_charted_step(element.plotly_chart.spec)
            if step is not None:
                self.readings.append(Reading(self._bar[0], step, self._bar[1]))
                self._bar = None


async def open_train_page(port: int) -> TrainPage:
    """A new session's websocket, not yet showing a page (call `load`); `close` it."""
    return TrainPage(await connect_session(port))


# ---- the measurement ---------------------------------------------------------------------------
def check_running(reading: Reading, iterations: int) -> None:
    if reading.step >= iterations or reading.percent >= 100:
        raise BenchmarkError(f"stage 2 reached its end ({reading.step}/{iterations}) before the measurement "
                             "did: raise --iterations")


async def measure(
    port: int, epochs: int, iterations: int, window_s: float, windows: int, warmup_steps: int
) -> list[Window]:
    """Start the training, wait for stage 2, then pairs of OPEN and CLOSED windows; returns them in order."""
    result: list[Window] = []
    page = await open_train_page(port)
    try:
        if await page.load() is not None:
            raise BenchmarkError("the Train page already shows a training on a fresh server")
        started = time.monotonic()
        await page.start_training(epochs, iterations)
        await page.wait_for(lambda: page.readings and page.readings[-1].step >= warmup_steps, STAGE2_TIMEOUT_S,
                            f"stage 2 to pass iteration {warmup_steps}")
        start = page.readings[-1]
        print(f"stage 2 at iteration {start.step} after {start.t - started:.0f} s; "
              f"{page.runs_finished} script runs so far in this session", flush=True)
        for n in range(1, windows + 1):  # open-closed, then closed-open: a drifting rate favours neither
            for kind in ("open", "closed") if n % 2 else ("closed", "open"):
                if kind == "open":
                    first = len(page.readings)
                    await page.wait_for(lambda: page.readings[-1].t >= start.t + window_s,  # noqa: B023 (awaited here)
                                        window_s + READING_TIMEOUT_S, "the end of an open window")
                    end = page.readings[-1]
                    check_running(end, iterations)
                    result.append(Window("open", start, end, len(page.readings) - first))
                else:
                    await page.close()
                    await asyncio.sleep(max(0.0, start.t + window_s - time.monotonic()))
                    page = await open_train_page(port)
                    end = await page.load()
                    if end is None:
                        raise BenchmarkError("a new session's Train page shows no stage-2 progress")
                    check_running(end, iterations)
                    result.append(Window("closed", start, end, 0))
                report(n, result[-1])
                start = end
    finally:
        await page.close()
    return result


def report(n: int, w: Window) -> None:
    print(f"window {n} {w.kind:>6}: {w.seconds:5.1f} s, iterations {w.start.step} -> {w.end.step} "
          f"({w.start.percent}% -> {w.end.percent}%), {w.rate:.2f} it/s"
          + (f", {w.readings} fragment runs" if w.kind == "open" else "")
          + f"; load average {os.getloadavg()[0]:.1f}", flush=True)  # other work on the machine shows here


def overall(windows: list[Window], kind: str) -> float:
    chosen = [w for w in windows if w.kind == kind]
    return sum(w.iterations for w in chosen) / sum(w.seconds for w in chosen)


def overall_from_percent(windows: list[Window], kind: str, iterations: int) -> float:
    chosen = [w for w in windows if w.kind == kind]
    return sum((w.end.percent - w.start.percent) * iterations / 100 for w in chosen) / sum(w.seconds for w in chosen)


def print_table(windows: list[Window], iterations: int) -> float:
    opened = [w for w in windows if w.kind == "open"]
    closed = [w for w in windows if w.kind == "closed"]
    print(f"{'':>8} {'open it/s':>10} {'closed it/s':>12} {'open/closed':>12}")
    for n, (o, c) in enumerate(zip(opened, closed), 1):
        print(f"{'window ' + str(n):>8} {o.rate:>10.2f} {c.rate:>12.2f} {o.rate / c.rate:>12.3f}")
    ratio = overall(windows, "open") / overall(windows, "closed")
    print(f"{'all':>8} {overall(windows, 'open'):>10.2f} {overall(windows, 'closed'):>12.2f} {ratio:>12.3f}")
    print(f"cross-check from the progress bar's whole percent x {iterations}: open "
          f"{overall_from_percent(windows, 'open', iterations):.2f} it/s, closed "
          f"{overall_from_percent(windows, 'closed', iterations):.2f} it/s")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=app_checkout, default=REPO, help=REPO_HELP)
    parser.add_argument("--window", type=float, default=40, help="seconds per window")
    parser.add_argument("--windows", type=int, default=2, help="pairs of windows: open-closed, closed-open, ...")
    parser.add_argument("--epochs", type=int, default=1, help="stage-1 epochs (the form's t_ae_epochs)")
    parser.add_argument(
        "--iterations",
        type=int,
        default=20_000,
        help="stage-2 iterations (t_ebm_iterations): more than the windows need; the server is stopped at the end",
    )
    parser.add_argument("--warmup-steps", type=int, default=100, help="stage-2 iterations before the first window")
    args = parser.parse_args()
    repo = args.repo
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ebm-watch-") as tmp:
        data = mnist_dir()
        print(f"repo: {repo}; data: {data or 'synthetic MNIST-shaped set (no MNIST in $EBM_DATA_DIR)'}", flush=True)
        data = data or synthetic_mnist(Path(tmp) / "data")
        with streamlit_server(Path(tmp), repo=repo, env={"EBM_DATA_DIR": str(data)}) as port:
            print(
                f"server on 127.0.0.1:{port}; training {args.epochs} epoch(s), {args.iterations} iterations", flush=True
            )
            windows = asyncio.run(
                measure(port, args.epochs, args.iterations, args.window, args.windows, args.warmup_steps)
            )
    print(f"CPU: {cpu_model()}; load average after {os.getloadavg()}")
    ratio = print_table(windows, args.iterations)
    print(f"watch_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
