"""From a setting's change to the new image, in a real browser: the Sample page's Seed, 10 times.

One `streamlit run app.py` server (benchmarks/serving.py's, on 127.0.0.1, runs saved to a
temporary folder) of the repository given by --repo (this checkout by default), and Debian's
headless Chromium driven by Playwright (as tests/test_browser.py does). The page loads and
shows its final grid (the image captioned "... samples after step ..." in the main block);
then, --changes times, the main block's "Seed" number input gets a new value (one never used
before on this server, so no answer comes from the app's cache) and Enter. One latency is
from the Enter key until the final grid's <img> src has changed AND the app says its script
is no longer running (`data-test-script-state="notRunning"`), both read in the page, waited
for by Playwright (no sleeps). Browser and server share the machine's cores, as they would on
a laptop.

Run: python -m benchmarks.slider [--repo PATH] [--changes 10]
The last line is `slider_s=<median seconds>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file from another checkout: find this one's benchmarks.serving
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from playwright.sync_api import sync_playwright

from benchmarks.machine import cpu_model
from benchmarks.serving import FINAL_IMAGE_CAPTION, PAGE, REPO, REPO_HELP, SEED_LABEL, app_checkout, streamlit_server

CHROMIUM = os.environ.get("EBM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [  # tests/test_browser.py's
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LOAD_TIMEOUT_MS = 180_000  # the first run imports and compiles the kernels
CHANGE_TIMEOUT_MS = 120_000
FIRST_SEED = 1_000_001  # far from the page's default seed

# The final grid's src once the script has stopped running (null while it runs or before the
# grid exists), or "exception" when Streamlit shows one. `old` is the src to differ from.
GRID_DONE_JS = """(old) => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (document.querySelector('[data-testid="stException"]')) return 'exception';
    if (!app || app.getAttribute('data-test-connection-state') !== 'CONNECTED'
        || app.getAttribute('data-test-script-state') !== 'notRunning') return null;
    const grid = [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"]')]
        .find(e => e.innerText.includes(CAPTION));
    const img = grid && grid.querySelector('img');
    return img && img.src && img.src !== old ? img.src : null;
}""".replace("CAPTION", repr(FINAL_IMAGE_CAPTION))


def wait_for_new_grid(page, old_src: str | None, timeout_ms: int) -> str:
    src = page.wait_for_function(GRID_DONE_JS, arg=old_src, timeout=timeout_ms, polling="raf").json_value()
    if src == "exception":
        text = page.locator('[data-testid="stException"]').first.inner_text()[:2000]
        raise RuntimeError(f"Streamlit shows an exception: {text}")
    return src


def measure(url: str, changes: int) -> tuple[float, list[float]]:
    """Returns (page load seconds, one latency per Seed change)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            start = time.perf_counter()
            page.goto(f"{url}/{PAGE}")
            src = wait_for_new_grid(page, None, LOAD_TIMEOUT_MS)
            load_s = time.perf_counter() - start
            seed_box = page.locator('[data-testid="stMain"]').get_by_label(SEED_LABEL, exact=True)
            latencies = []
            for n in range(changes):
                seed_box.fill(str(FIRST_SEED + n))
                start = time.perf_counter()
                seed_box.press("Enter")
                src = wait_for_new_grid(page, src, CHANGE_TIMEOUT_MS)
                latencies.append(time.perf_counter() - start)
                print(f"seed {FIRST_SEED + n}: {latencies[-1]:.3f} s", flush=True)
            if errors:
                raise RuntimeError(f"JavaScript errors on the page: {errors}")
            return load_s, latencies
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=app_checkout, default=REPO, help=REPO_HELP)
    parser.add_argument("--changes", type=int, default=10, help="Seed changes to time")
    args = parser.parse_args()
    repo = args.repo
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {os.getloadavg()}", flush=True)
    print(f"repo: {repo}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ebm-slider-") as tmp, streamlit_server(Path(tmp), repo=repo) as port:
        load_s, latencies = measure(f"http://127.0.0.1:{port}", args.changes)
    median, p95 = np.percentile(latencies, [50, 95])
    print(f"page load (first grid) {load_s:.2f} s; load average after {os.getloadavg()}")
    print(f"{len(latencies)} Seed changes: median {median:.3f} s, p95 {p95:.3f} s, "
          f"min {min(latencies):.3f} s, max {max(latencies):.3f} s")
    print(f"slider_s={median:.3f}")


if __name__ == "__main__":
    main()
