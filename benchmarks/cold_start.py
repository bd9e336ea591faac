"""Cold start: from `streamlit run app.py` to the Sample page's first image in a browser.

What a visitor waits for after a Space (re)starts. Each run starts a fresh server
(benchmarks/serving.py's `streamlit_server`: its own process group, 127.0.0.1, a free port, runs
in a temporary folder) and, once it answers its health check (polled every 0.5 s), opens
/sample in a new context of one headless Chromium (Playwright) and waits until an image is
visible in the main block: the app's imports, the shipped model's load, the compiled kernels
and the first sampling all count. Also timed: `python -c "import widgets"` in a fresh
interpreter, the imports every page starts with.

With --baseline OLD_CHECKOUT (e.g. `git worktree add /tmp/base 03cdb7b`) the older checkout is
measured in the same run, its runs alternating with this one's so that both see the same load.
Before timing, each checkout imports widgets once unmeasured, so both have their bytecode cached.

Run: python -m benchmarks.cold_start [--baseline OLD_CHECKOUT] [--repo CHECKOUT] [--runs 3]
Figures go to artifacts/cold_start.json; the last line is `cold_start_s=<median, --repo>`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file from another checkout: find this one's benchmarks.serving
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model
from benchmarks.serving import PAGE, REPO, REPO_HELP, app_checkout, streamlit_server
from benchmarks.slider import CHROMIUM, CHROMIUM_ARGS, LOAD_TIMEOUT_MS

FIRST_IMAGE = '[data-testid="stMain"] [data-testid="stImage"] img'


def import_widgets_s(repo: Path) -> float:
    """Wall seconds of `python -c "import widgets"` in `repo`, a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import widgets"], cwd=repo, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def cold_start_s(repo: Path, browser) -> tuple[float, float]:
    """Seconds from starting `repo`'s server until it is healthy, and until the Sample page shows an image."""
    with tempfile.TemporaryDirectory(prefix="ebm-cold-") as tmp:
        start = time.perf_counter()
        with streamlit_server(Path(tmp), repo) as port:
            healthy = time.perf_counter() - start
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            try:
                page = context.new_page()
                page.goto(f"http://127.0.0.1:{port}/{PAGE}")
                page.locator(FIRST_IMAGE).first.wait_for(state="visible", timeout=LOAD_TIMEOUT_MS)
                return healthy, time.perf_counter() - start
            finally:
                context.close()


def summary(values: list[float]) -> str:
    return f"min {min(values):6.2f} s  median {statistics.median(values):6.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=app_checkout, default=REPO, help=REPO_HELP)
    parser.add_argument("--baseline", type=app_checkout, default=None,
                        help="another checkout (e.g. a worktree of an older commit), "
                             "measured alternately in the same run")
    parser.add_argument("--runs", type=int, default=3, help="cold starts (and imports) per checkout")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    from playwright.sync_api import sync_playwright

    apps = {"before": args.baseline, "after": args.repo} if args.baseline else {"app": args.repo}
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; " + ", ".join(f"{k}: {v}" for k, v in apps.items()), flush=True)
    times: dict[str, dict[str, list[float]]] = {label: {"import_widgets_s": [], "healthy_s": [], "first_image_s": []}
                                                for label in apps}
    for repo in apps.values():
        import_widgets_s(repo)  # unmeasured: writes the checkout's bytecode caches
    for run in range(args.runs):
        for label, repo in apps.items():
            times[label]["import_widgets_s"].append(seconds := import_widgets_s(repo))
            print(f"import widgets  run {run + 1}  {label:<6} {seconds:6.2f} s", flush=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for run in range(args.runs):
                for label, repo in apps.items():
                    healthy, image = cold_start_s(repo, browser)
                    times[label]["healthy_s"].append(healthy)
                    times[label]["first_image_s"].append(image)
                    print(f"cold start      run {run + 1}  {label:<6} "
                          f"healthy {healthy:6.2f} s  first image {image:6.2f} s", flush=True)
        finally:
            browser.close()
    print()
    for key, title in (("import_widgets_s", "import widgets"), ("healthy_s", "server healthy"),
                       ("first_image_s", "first Sample image")):
        print(f"{title:<20}" + "   ".join(f"{label}: {summary(times[label][key])}" for label in apps))
    out = REPO / "artifacts" / "cold_start.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu_model(), "apps": {k: str(v) for k, v in apps.items()}, "runs": args.runs,
                               "seconds": times}, indent=1))
    print(f"cold_start_s={statistics.median(times[list(apps)[-1]]['first_image_s']):.2f}")


if __name__ == "__main__":
    main()
