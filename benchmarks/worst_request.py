"""The worst a visitor can make the server spend, through a URL or an upload: CPU seconds and peak RSS.

Each case runs on a fresh `streamlit run app.py` (with the Dockerfile's XSRF setting, as on a
Space), in headless Chromium, after a warm-up page view; the server's own CPU time
(/proc/<pid>/stat) is counted from the visitor's action until the server is idle again (so work
that goes on after a tab closes counts too), and its peak RSS is the kernel's high-water mark
(VmHWM). The cases:

- url-cap: the largest request a URL may ask of the shipped model (1024 chains x 1950 steps);
- upload-costly: a valid 35 MB upload whose energy net has 8 hidden layers of 1024, then the
  Sample page's default request (64 chains x 500 steps) on it;
- upload-68mb: the same with 16 layers (a 68 MB file);
- header-bomb: a 207-byte file whose header declares the widest model and holds no tensors;
- explorer-leave: the upload-costly file on the Explorer, and the tab closed as soon as its
  grid quadrature shows progress (or the upload is refused);
- made-up-ids: six 199 MiB PUTs to made-up file ids of a live session (what Streamlit stores).

Run: python -m benchmarks.worst_request [--baseline OLD_CHECKOUT] [--repo CHECKOUT] [--cases a,b]
`--baseline` runs an older checkout's app on each case just before this one's: a before/after table
from one run (e.g. `git worktree add /tmp/old a978bbe`, then `--baseline /tmp/old`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import torch

from benchmarks.machine import cpu_model
from benchmarks.serving import DIRECT, REPO, REPO_HELP, app_checkout, streamlit_server
from benchmarks.slider import CHROMIUM, CHROMIUM_ARGS
from ebm.checkpoint import model_to_bytes
from ebm.models import Autoencoder, AutoencoderConfig, EnergyConfig, EnergyNet, LatentEBM

CASES = ("url-cap", "upload-costly", "upload-68mb", "header-bomb", "explorer-leave", "made-up-ids")
TIMEOUT_MS = int(os.environ.get("EBM_WORST_TIMEOUT_MS", "600000"))
IDLE_CPU_S = 0.05  # the server counts as idle when it used less than this in IDLE_WINDOW_S
IDLE_WINDOW_S = 2.0
SETTLED_JS = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return null;
    const alerts = [...document.querySelectorAll('[data-testid="stSidebar"] [data-testid="stAlert"],'
        + ' [data-testid="stMain"] [data-testid="stAlert"], [data-testid="stFileUploaderFileError"],'
        + ' [data-testid="stSidebar"] [data-testid="stFileUploader"] [role="alert"]')];
    const grid = [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"] img')]
        .map(i => i.src).join();
    return JSON.stringify({alerts: alerts.map(a => a.innerText.trim().slice(0, 160)), grid: grid.slice(-40)});
}"""


def weights(layers: int, width: int, seed: int = 0) -> bytes:
    """A valid weights file: the shipped autoencoder's shape and an energy net of `layers` x `width`."""
    torch.manual_seed(seed)
    model = LatentEBM(
        Autoencoder(AutoencoderConfig()), EnergyNet(EnergyConfig(4, width, layers)), torch.zeros(4), torch.ones(4)
    )
    return model_to_bytes(model, {"dataset": "mnist", "threshold": 0.5})


def header_bomb() -> bytes:
    metadata = {"format": "mnist-ebm/1", "autoencoder": json.dumps({"hidden_dim": 4096, "latent_dim": 4}),
                "energy": json.dumps({"latent_dim": 4, "hidden_dim": 4096, "num_layers": 16, "tilt_sigma": 3.0})}
    header = json.dumps({"__metadata__": metadata}).encode()
    return len(header).to_bytes(8, "little") + header


class ServerProcess:
    """The server's CPU seconds and memory, from /proc."""

    def __init__(self, port: int):
        self.pid = next(int(p) for p in os.listdir("/proc") if p.isdigit() and self._serves(p, port))

    @staticmethod
    def _serves(pid: str, port: int) -> bool:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"streamlit" in b" ".join(args) and str(port).encode() in args

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def memory_mb(self, field: str) -> float:
        line = next(x for x in Path(f"/proc/{self.pid}/status").read_text().splitlines() if x.startswith(field + ":"))
        return int(line.split()[1]) / 1024

    def wait_idle(self, limit_s: float) -> None:
        give_up = time.monotonic() + limit_s
        last = self.cpu_s()
        while time.monotonic() < give_up:
            time.sleep(IDLE_WINDOW_S)
            now = self.cpu_s()
            if now - last < IDLE_CPU_S:
                return
            last = now


def settle(page) -> dict:
    return json.loads(page.wait_for_function(SETTLED_JS, timeout=TIMEOUT_MS).json_value())


def upload(page, path: Path, data: bytes) -> None:
    """Upload `data` as the file `path` (Playwright passes buffers only up to 50 MB, so it goes through
    a file, which the browser reads while it uploads: it must outlive the upload)."""
    path.write_bytes(data)
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Use your own weights").click()
    sidebar.locator('input[type="file"]').set_input_files(path)


def wait_changed(page, before: dict) -> dict:
    """Wait until the page settled into something other than `before` (a new grid, or a message)."""
    give_up = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < give_up:
        page.wait_for_timeout(250)  # a poll of the page's state; the measurement is the server's CPU, not this
        try:
            now = settle(page)
        except Exception:  # noqa: BLE001 -- the page is rerunning
            continue
        if now != before:
            return now
    raise TimeoutError("the page never changed")


def made_up_uploads(base: str, session_id: str, count: int = 6, mib: int = 199) -> list[int]:
    body_file = b"\0" * (mib * 2**20)
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.safetensors\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + body_file + f"\r\n--{boundary}--\r\n".encode()
    statuses = []
    for _ in range(count):
        req = urllib.request.Request(f"{base}/_stcore/upload_file/{session_id}/{uuid.uuid4()}", data=body, method="PUT",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with DIRECT.open(req, timeout=300) as r:
                statuses.append(r.status)
        except urllib.error.HTTPError as e:
            statuses.append(e.code)
        except OSError:
            statuses.append(-1)  # the server closed the connection mid-body
    return statuses


def run_case(case: str, repo: Path, browser) -> dict:
    with tempfile.TemporaryDirectory(prefix="ebm-worst-") as tmp, \
            streamlit_server(Path(tmp), repo, env={"STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION": "false"}) as port:
        base = f"http://127.0.0.1:{port}"
        server = ServerProcess(port)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        sessions = []
        page.on(
            "request",
            lambda r: (
                sessions.append(r.url.split("/upload_file/")[1].split("/")[0]) if "/upload_file/" in r.url else None
            ),
        )
        page.goto(f"{base}/{'explorer' if case == 'explorer-leave' else 'sample'}")
        page.locator(
            '[data-testid="stMain"] [data-testid="stImage"], [data-testid="stMain"] [data-testid="stPlotlyChart"]'
        ).first.wait_for()
        before = settle(page)
        server.wait_idle(120)
        cpu0, rss0 = server.cpu_s(), server.memory_mb("VmRSS")
        detail: object = None
        if case == "url-cap":
            page.goto(f"{base}/sample?chains=1024&K=1950&seed=7")
            detail = settle(page)["alerts"]
        elif case in ("upload-costly", "upload-68mb", "header-bomb"):
            data = {
                "upload-costly": lambda: weights(8, 1024),
                "upload-68mb": lambda: weights(16, 1024),
                "header-bomb": header_bomb,
            }[case]()
            upload(page, Path(tmp) / f"{case}.safetensors", data)
            detail = {"file_mb": round(len(data) / 1e6, 1), "alerts": wait_changed(page, before)["alerts"]}
        elif case == "explorer-leave":
            upload(page, Path(tmp) / "upload-costly.safetensors", weights(8, 1024))
            page.locator(
                '[data-testid="stMain"] [data-testid="stProgress"], [data-testid="stSidebar"] [data-testid="stAlert"]'
            ).first.wait_for()
            context.close()  # the visitor leaves while the quadrature runs
        elif case == "made-up-ids":
            upload(page, Path(tmp) / "small.safetensors", b"not weights")  # a real upload, to learn the session id
            wait_changed(page, before)
            detail = {"statuses": made_up_uploads(base, sessions[-1])}
        server.wait_idle(1800)
        result = {"case": case, "cpu_s": round(server.cpu_s() - cpu0, 2), "rss_before_mb": round(rss0),
                  "peak_rss_mb": round(server.memory_mb("VmHWM")), "rss_after_mb": round(server.memory_mb("VmRSS")),
                  "detail": detail}
        if case != "explorer-leave":
            context.close()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=app_checkout, default=REPO, help=REPO_HELP)
    parser.add_argument(
        "--baseline",
        type=app_checkout,
        default=None,
        help="another checkout (e.g. a worktree of an older commit) run on each case first, side by side",
    )
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    apps = {"before": args.baseline, "after": args.repo} if args.baseline else {"app": args.repo}
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; " + ", ".join(f"{k}: {v}" for k, v in apps.items()))
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for case in args.cases.split(","):
                for label, repo in apps.items():
                    row = {"app": label, **run_case(case, repo, browser)}
                    rows.append(row)
                    print(
                        f"{row['case']:<15} {label:<6} cpu {row['cpu_s']:>8.2f} s  rss "
                        f"{row['rss_before_mb']:>5} -> peak "
                        f"{row['peak_rss_mb']:>5} MB (after {row['rss_after_mb']:>5})  "
                        f"{json.dumps(row['detail'])[:200]}",
                        flush=True,
                    )
        finally:
            browser.close()
    out = REPO / "artifacts" / "worst_request.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"cpu": cpu_model(), "apps": {k: str(v) for k, v in apps.items()}, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
