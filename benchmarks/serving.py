"""Serving latency: N sessions sampling at once from a real `streamlit run app.py` server.

The server runs in its own process group on 127.0.0.1 and a free port, with runs saved to a
temporary folder; it is stopped at the end, on Ctrl-C and on errors too. The sessions are
clients in this process that speak Streamlit's own websocket protocol (`/_stcore/stream`,
BackMsg/ForwardMsg protobufs from the installed streamlit), not browsers, which would compete
with the server for the cores. Each session opens the Sample page (`seed=<s>` in the query
string), then sets the "Seed" number input R-1 more times. One request is one script run:
from sending `rerun_script` until the run that drew the final grid ("... samples after step
...") has finished. Every request has its own seed, so none is answered from the app's cache.

Errors are exception elements in the deltas, disconnects, timeouts and protocol surprises. A
request that saw a "Queued ... ahead" text anywhere in its deltas counts as queued. Each
scenario (sessions x hog) runs with and without a CPU hog, one `python -c "while True: pass"`
process, since a shared machine is where a server stalls. Before the scenarios, one request
warms the server (imports, compiled kernels) and one more, in a new session, is the
single-request time that the scenarios' latencies compare with.

Run: python -m benchmarks.serving [--sessions 1,8,32] [--requests 3] [--hog both|off|on] [--quick]
Figures go to artifacts/serving.json (artifacts/serving-quick.json with --quick).
The last line is `serving_p95_8=<seconds>` (8 sessions, no hog).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from benchmarks.machine import busy_processes, cpu_model

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
PAGE = "sample"  # the Sample page's url_path in app.py
FINAL_IMAGE_CAPTION = "samples after step"
SEED_LABEL = "Seed"
QUEUED = re.compile(r'Queued[^"]*ahead')  # within one string field of a delta's text form
SERVER_START_TIMEOUT_S = 120  # importing torch on a busy 2-core machine is slow
REQUEST_TIMEOUT_S = 180
MAX_MESSAGE_BYTES = 256 * 2**20  # above the server's own cap (server.maxMessageSize, 200 MB)
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


class ServerDidNotStart(RuntimeError):
    pass


@dataclass
class Result:
    """One request: latency in seconds (None if it failed), the error, and whether it saw a queue."""

    latency_s: float | None
    error: str | None = None
    saw_queued: bool = False
    image_url: str | None = None


@dataclass
class PageView:
    """What a session learned from the server so far, as a browser tab would keep it."""

    seed_widget_id: str | None = None
    query_string: str = ""


@dataclass
class Scenario:
    sessions: int
    hog: bool
    requests: int
    wall_s: float
    results: list[Result] = field(default_factory=list)


REPO_HELP = "the checkout whose app.py the server runs (default: this one)"


def app_checkout(text: str) -> Path:
    """--repo's type: a checkout that has an app.py, resolved."""
    repo = Path(text).resolve()
    if not (repo / "app.py").is_file():
        raise argparse.ArgumentTypeError(f"no app.py in {repo}")
    return repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_is_healthy(port: int) -> bool:
    try:
        with DIRECT.open(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
            return response.read().strip() == b"ok"
    except OSError:
        return False


@contextmanager
def streamlit_server(workdir: Path, repo: Path = REPO, env: dict[str, str] | None = None,
                     python_args: tuple[str, ...] = ("-m", "streamlit")) -> Iterator[int]:
    """`streamlit run app.py` of `repo` on 127.0.0.1, in its own session; yields the port once healthy.

    `repo` (this checkout by default) comes first on the server's PYTHONPATH, so another
    checkout's app runs with its own modules; `env` adds to or overrides the environment;
    `python_args` start streamlit's command line (`-c CODE` sets something up in the server first).
    The whole process group is stopped on the way out, whatever the way out is; the server's
    output goes to workdir/server.log and its tail is in the error when it does not start.
    """
    port = free_port()
    python_path = os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, EBM_RUNS_DIR=str(workdir / "runs"), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
               PYTHONPATH=python_path, **(env or {}))
    command = [sys.executable, *python_args, "run", "app.py", "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(port), "--server.fileWatcherType", "none"]
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        give_up = time.monotonic() + SERVER_START_TIMEOUT_S
        while not server_is_healthy(port):
            if server.poll() is not None or time.monotonic() > give_up:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise ServerDidNotStart(f"the server did not get healthy on port {port}:\n{tail}")
            time.sleep(0.5)
        yield port
    finally:
        stop_process_group(server)


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process's group, SIGKILL it if it lingers."""
    for sig, grace_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace_s)
            return
        except subprocess.TimeoutExpired:
            pass


def rerun_message(view: PageView, seed: int) -> BackMsg:
    """The BackMsg a browser sends: the page load with `seed=` in the URL, then a Seed change.

    Only the seed's widget state is sent: the server keeps the other widgets' values from the
    previous run. No cached message hashes are sent, so the server never answers with a
    `ref_hash` reference instead of the message itself.
    """
    back = BackMsg()
    state = back.rerun_script
    state.page_name = PAGE
    if view.seed_widget_id is None:
        state.query_string = f"seed={seed}"
    else:
        state.query_string = view.query_string
        state.widget_states.widgets.add(id=view.seed_widget_id, int_value=seed)
    return back


async def request(ws: ClientConnection, view: PageView, seed: int, timeout_s: float) -> Result:
    """Send one rerun; read ForwardMsgs until the run that drew the final grid has finished."""
    saw_queued, image_url = False, None
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            await ws.send(rerun_message(view, seed).SerializeToString())
            while True:
                msg = ForwardMsg.FromString(await ws.recv())
                kind = msg.WhichOneof("type")
                if kind == "new_session":
                    image_url = None  # the grid must come from the run that finishes
                elif kind == "page_info_changed":
                    view.query_string = msg.page_info_changed.query_string
                elif kind == "delta":
                    saw_queued = saw_queued or bool(QUEUED.search(text_format.MessageToString(msg.delta, as_utf8=True)))
                    element = msg.delta.new_element
                    which = element.WhichOneof("type") if msg.delta.HasField("new_element") else None
                    if which == "exception":
                        return Result(
                            None, f"exception: {element.exception.type}: {element.exception.message}", saw_queued
                        )
                    if which == "number_input" and element.number_input.label == SEED_LABEL:
                        view.seed_widget_id = element.number_input.id
                    if which == "imgs" and any(FINAL_IMAGE_CAPTION in img.caption for img in element.imgs.imgs):
                        image_url = element.imgs.imgs[0].url
                elif kind in ("ref_hash", "page_not_found"):
                    return Result(None, f"unexpected {kind}: {getattr(msg, kind)}", saw_queued)
                elif kind == "script_finished":
                    status = ForwardMsg.ScriptFinishedStatus.Name(msg.script_finished)
                    if msg.script_finished == ForwardMsg.FINISHED_SUCCESSFULLY:
                        if image_url is None:
                            return Result(None, "the run finished without the final grid", saw_queued)
                        return Result(time.perf_counter() - start, None, saw_queued, image_url)
                    if msg.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:  # st.rerun(): the next run follows
                        return Result(None, f"script finished with {status}", saw_queued)
    except TimeoutError:
        return Result(None, f"timeout after {timeout_s:.0f} s", saw_queued)
    except ConnectionClosed as e:
        return Result(None, f"disconnected: {e}", saw_queued)


def connect_session(port: int) -> connect:
    """A new session's websocket to the server, as a browser tab opens it (use with `async with`).

    No client pings (a browser sends none); the origin is the page's, as a browser's is.
    """
    return connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"],
                   origin=f"http://127.0.0.1:{port}", proxy=None, ping_interval=None,
                   max_size=MAX_MESSAGE_BYTES, open_timeout=30)


async def session(port: int, seeds: list[int], deadline: float) -> list[Result]:
    """One browser tab: open the Sample page with the first seed, then change the seed to each next one.

    Stops at the first failed request (the page's state is unknown after it) or at the deadline
    (time.monotonic()); each request gets at most REQUEST_TIMEOUT_S.
    """
    results: list[Result] = []
    view = PageView()
    try:
        async with connect_session(port) as ws:
            for seed in seeds:
                timeout_s = min(REQUEST_TIMEOUT_S, deadline - time.monotonic())
                if timeout_s <= 0:
                    break
                results.append(await request(ws, view, seed, timeout_s))
                if results[-1].error:
                    break
                if view.seed_widget_id is None:
                    results[-1] = Result(None, f"no number input labelled {SEED_LABEL!r} on the page")
                    break
    except (OSError, TimeoutError, InvalidHandshake) as e:
        results.append(Result(None, f"could not connect: {e!r}"))
    return results


async def run_scenario(
    port: int, sessions: int, requests: int, first_seed: int, deadline: float, hog: bool = False
) -> Scenario:
    """`sessions` sessions at once, `requests` each, seeds first_seed, first_seed + 1, ..."""
    seeds = [list(range(first_seed + s * requests, first_seed + (s + 1) * requests)) for s in range(sessions)]
    with busy_processes(1 if hog else 0):
        start = time.perf_counter()
        per_session = await asyncio.gather(*(session(port, s, deadline) for s in seeds))
        wall_s = time.perf_counter() - start
    return Scenario(sessions, hog, sessions * requests, wall_s, [r for rs in per_session for r in rs])


def figures(scenario: Scenario, single_request_s: float) -> dict:
    """The table's row for a scenario, also what goes into the JSON."""
    latencies = [r.latency_s for r in scenario.results if r.error is None]
    p50, p95, top = np.percentile(latencies, [50, 95, 100]) if latencies else (float("nan"),) * 3
    return dict(
        sessions=scenario.sessions, hog=scenario.hog, requests=scenario.requests, completed=len(latencies),
        errors=sum(r.error is not None for r in scenario.results), single_request_s=single_request_s,
        p50_s=float(p50), p95_s=float(p95), max_s=float(top),
        throughput_rps=len(latencies) / scenario.wall_s, wall_s=scenario.wall_s,
        queued=sum(r.saw_queued for r in scenario.results),
        error_messages=sorted({r.error for r in scenario.results if r.error}),
        latencies_s=latencies,
    )


def print_table(rows: list[dict]) -> None:
    columns = [("sessions", "sessions", "d"), ("hog", "hog", ""), ("requests", "requests", "d"),
               ("completed", "completed", "d"), ("errors", "errors", "d"), ("single (s)", "single_request_s", ".2f"),
               ("p50 (s)", "p50_s", ".2f"), ("p95 (s)", "p95_s", ".2f"), ("max (s)", "max_s", ".2f"),
               ("req/s", "throughput_rps", ".2f"), ("wall (s)", "wall_s", ".1f"), ("queued", "queued", "d")]
    print(" ".join(f"{title:>10}" for title, _, _ in columns))
    for row in rows:
        cells = [("yes" if row[key] else "no") if key == "hog" else format(row[key], spec) for _, key, spec in columns]
        print(" ".join(f"{cell:>10}" for cell in cells))
    for row in rows:
        for message in row["error_messages"]:
            print(f"error ({row['sessions']} sessions, hog {'yes' if row['hog'] else 'no'}): {message}")


async def benchmark(
    port: int, sessions: list[int], requests: int, hogs: list[bool], deadline: float
) -> tuple[float, list[dict]]:
    """Warm-up request, single-request time, then every scenario in turn; returns (single, rows)."""
    warm_up = (await run_scenario(port, 1, 1, first_seed=1, deadline=deadline)).results
    single = (await run_scenario(port, 1, 1, first_seed=2, deadline=deadline)).results
    for name, results in (("warm-up", warm_up), ("single request", single)):
        if not results or results[0].error:
            raise RuntimeError(f"the {name} failed: {results[0].error if results else 'no request was sent'}")
    single_request_s = single[0].latency_s
    print(f"warm-up request {warm_up[0].latency_s:.2f} s, single request (warm) {single_request_s:.2f} s", flush=True)
    rows, next_seed = [], 3
    for n in sessions:
        for hog in hogs:
            scenario = await run_scenario(port, n, requests, next_seed, deadline, hog)
            next_seed += n * requests
            rows.append(figures(scenario, single_request_s))
            print(f"{n} sessions, hog {'yes' if hog else 'no'}: {rows[-1]['completed']}/{scenario.requests} requests "
                  f"in {scenario.wall_s:.1f} s", flush=True)
    return single_request_s, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,8,32", help="comma-separated session counts, one scenario each")
    parser.add_argument(
        "--requests", type=int, default=3, help="requests per session (the page load, then seed changes)"
    )
    parser.add_argument(
        "--hog", choices=("both", "off", "on"), default="both", help="run each scenario without and/or with a CPU hog"
    )
    parser.add_argument(
        "--deadline", type=float, default=3600, help="seconds for the whole run; later requests are not sent"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 sessions, 1 request, no hog")
    parser.add_argument("--repo", type=app_checkout, default=REPO, help=REPO_HELP)
    args = parser.parse_args()
    sessions = [2] if args.quick else [int(n) for n in args.sessions.split(",")]
    requests = 1 if args.quick else args.requests
    hogs = [False] if args.quick else {"both": [False, True], "off": [False], "on": [True]}[args.hog]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {os.getloadavg()}", flush=True)
    deadline = time.monotonic() + args.deadline
    with tempfile.TemporaryDirectory(prefix="ebm-serving-") as tmp, streamlit_server(Path(tmp), repo=args.repo) as port:
        print(f"server on 127.0.0.1:{port}; repo {args.repo}", flush=True)
        single_request_s, rows = asyncio.run(benchmark(port, sessions, requests, hogs, deadline))
    print_table(rows)
    loadavg = os.getloadavg()
    print(f"load average {loadavg}")
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / ("serving-quick.json" if args.quick else "serving.json")
    out.write_text(json.dumps(dict(cpu=cpu_model(), cores=os.cpu_count(), loadavg_after=loadavg,
                                   requests_per_session=requests, single_request_s=single_request_s, scenarios=rows),
                              indent=2))
    print(f"figures written to {out.relative_to(REPO)}")
    p95_8 = next((row["p95_s"] for row in rows if row["sessions"] == 8 and not row["hog"]), float("nan"))
    print(f"serving_p95_8={p95_8:.2f}")


if __name__ == "__main__":
    main()
