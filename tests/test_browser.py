"""End-to-end tests in a real browser: `streamlit run app.py` driven by Playwright in Debian's Chromium.

The server is started once for the module (on a free port, with $EBM_DATA_DIR passed through
and runs saved to a temporary folder) and stopped at the end. Each test looks at the app as a
person would: headings, no exception boxes, images that change when a slider moves, a GIF
that downloads and decodes, a chart that follows the slice selector, a training run that
grows its charts and stops. Screenshots land in artifacts/screenshots/ (gitignored).

Every locator is scoped to the page's own elements, the main block or the sidebar (`main`,
`sidebar`), never Streamlit's header and toolbar, which have buttons of their own (a "Stop"
while a script runs); and every wait is a wait on state, never a sleep.

Skipped, with the reason, when Playwright or Chromium is missing (CI installs both: .ci/run).
Chromium is Debian's (/usr/bin/chromium, or $EBM_CHROMIUM): Playwright cannot download its own here.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from benchmarks import serving

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("EBM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
RUN_TIMEOUT = 120_000  # ms for one script run of a page (the first sampling run is not cached)

MAIN = '[data-testid="stMain"]'
SIDEBAR = '[data-testid="stSidebar"]'
EXCEPTION = f'{MAIN} [data-testid="stException"], {SIDEBAR} [data-testid="stException"]'

if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set $EBM_CHROMIUM)",
                allow_module_level=True)

def _mnist_dir() -> Path | None:
    """$EBM_DATA_DIR if it holds MNIST (raw or .gz), else None."""
    root = os.environ.get("EBM_DATA_DIR")
    if not root:
        return None
    raw = Path(root) / "MNIST" / "raw"
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if all((raw / n).is_file() or (raw / f"{n}.gz").is_file() for n in names):
        return Path(root)
    return None


def _synthetic_mnist(root: Path) -> Path:
    """A small MNIST-shaped dataset (random strokes) in torchvision's raw layout, for training offline."""
    import gzip

    import numpy as np

    from ebm.data import RAW_FILES, idx_bytes

    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    sizes = {"train": 2048, "t10k": 256}
    for name in RAW_FILES:
        n = sizes[name.split("-")[0]]
        array = ((rng.random((n, 28, 28)) < 0.2) * 255).astype(np.uint8) if "images" in name else \
            rng.integers(0, 10, n).astype(np.uint8)
        (raw / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    return root


@contextmanager
def streamlit_server(data: Path, workdir: Path, python_args: tuple[str, ...] = ("-m", "streamlit")):
    """The app's server (`benchmarks.serving.streamlit_server`) with this data, its runs in
    workdir/runs and its log in workdir/server.log; yields its URL. `python_args`: see `FAKE_DOWNLOAD`."""
    env = {"EBM_DATA_DIR": str(data), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with serving.streamlit_server(workdir, env=env, python_args=python_args) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app's server for this module; yields its URL and folders.

    Data: $EBM_DATA_DIR when it holds MNIST, else a tiny synthetic MNIST-shaped set (so
    training works offline). Runs go to a temporary folder, never into the checkout.
    """
    workdir = tmp_path_factory.mktemp("browser_server")
    data = _mnist_dir() or _synthetic_mnist(tmp_path_factory.mktemp("browser_data"))
    try:
        with streamlit_server(data, workdir) as url:
            yield {"url": url, "runs": workdir / "runs", "data": data, "log": workdir / "server.log"}
    finally:
        if SHOTS.is_dir() and (workdir / "server.log").is_file():
            shutil.copy(workdir / "server.log", SHOTS / "streamlit.log")


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(RUN_TIMEOUT)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    yield pg
    context.close()


def main(page):
    """The page's main block: where the app's own content is (not Streamlit's header and toolbar)."""
    return page.locator(MAIN)


def sidebar(page):
    return page.locator(SIDEBAR)


def shot(page, name: str, element=None) -> Path:
    path = SHOTS / f"{name}.png"
    (element or page).screenshot(path=str(path), **({} if element else {"full_page": True}))
    return path


def settle(page, timeout: int = RUN_TIMEOUT) -> None:
    """Wait until the script run is over and no skeleton placeholders are left."""
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            return app && app.getAttribute('data-test-connection-state') === 'CONNECTED'
                && app.getAttribute('data-test-script-state') === 'notRunning'
                && !document.querySelector('[data-testid="stSkeleton"]');
        }""", timeout=timeout)


def wait_until(page, condition: str, arg=None, timeout: int = RUN_TIMEOUT) -> None:
    """Wait for a JS condition `(arg) => bool`, but stop early, and fail, if Streamlit shows an exception."""
    page.wait_for_function(
        f"(arg) => !!document.querySelector({EXCEPTION!r}) || !!(({condition})(arg))",
        arg=arg, timeout=timeout)
    assert_no_exception(page, page.url)


def open_page(page, server, path: str, heading: str) -> None:
    page.goto(f"{server['url']}/{path}")
    wait_until(page, f"() => document.querySelector('{MAIN} h1')")
    settle(page)
    assert_no_exception(page, path or "home")
    main(page).get_by_role("heading", name=heading, level=1).wait_for(timeout=10_000)


def assert_no_exception(page, what: str) -> None:
    boxes = page.locator(EXCEPTION)
    assert boxes.count() == 0, f"{what}: Streamlit shows an exception: {boxes.first.inner_text()[:2000]}"
    assert not page.errors, f"{what}: JavaScript errors: {page.errors}"


def img_bytes(page, locator) -> bytes:
    """The bytes an <img> shows, fetched through the page (same origin, same session)."""
    src = locator.get_attribute("src")
    data = page.evaluate(
        """async (src) => {
            const r = await fetch(src);
            const b = new Uint8Array(await r.arrayBuffer());
            let s = ''; for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
            return btoa(s);
        }""", src)
    import base64

    return base64.b64decode(data)


# ---- every page opens --------------------------------------------------------------------------

PAGES = [
    ("", "Digits from an energy landscape", "home"),
    ("sample", "Sample digits", "sample"),
    ("explorer", "Latent explorer", "explorer"),
    ("playground", "Playground", "playground"),
    ("train", "Train your own model", "train"),
]


@pytest.mark.parametrize("path,heading,name", PAGES, ids=[p[2] for p in PAGES])
def test_page_opens_without_errors(page, server, path, heading, name):
    start = time.monotonic()
    open_page(page, server, path, heading)
    seconds = time.monotonic() - start
    shot(page, f"page_{name}")
    assert_no_exception(page, name)
    assert page.title(), "the page has a title"
    nav = sidebar(page).locator('[data-testid="stSidebarNav"]')
    for label in ("Home", "Sample", "Latent explorer", "Playground", "Train"):
        assert nav.get_by_text(label, exact=True).count() == 1, f"navigation lacks {label}"
    if name in ("home", "sample"):
        assert main(page).locator('[data-testid="stImage"] img').count() >= 1, "no sample picture"
    print(f"\n{name}: opened and settled in {seconds:.1f} s")


def test_navigation_between_pages(page, server):
    open_page(page, server, "", "Digits from an energy landscape")
    sidebar(page).locator('[data-testid="stSidebarNav"]').get_by_text("Sample", exact=True).click()
    main(page).get_by_role("heading", name="Sample digits", level=1).wait_for()
    settle(page)
    assert page.url.startswith(f"{server['url']}/sample")
    assert_no_exception(page, "sample via navigation")


# ---- Sample ------------------------------------------------------------------------------------

def _grid_image(page):
    """The final grid: the image whose caption says '… samples after step …'."""
    return main(page).locator('[data-testid="stImage"]').filter(has_text="samples after step").locator("img")


def test_sample_slider_changes_the_grid(page, server):
    open_page(page, server, "sample", "Sample digits")
    grid = _grid_image(page)
    before_src, before = grid.get_attribute("src"), img_bytes(page, grid)
    caption_before = main(page).get_by_text("samples after step").first.inner_text()
    shot(page, "sample_before")

    chains = main(page).get_by_role("slider", name="Chains")
    start_value = int(chains.get_attribute("value"))
    chains.focus()
    for _ in range(4):
        chains.press("ArrowLeft")  # 64 -> 60 chains
    wait_until(page, f"(old) => {{ const i = [...document.querySelectorAll('{MAIN} [data-testid=\"stImage\"]')]"
                     ".find(e => e.innerText.includes('samples after step')); "
                     "return i && i.querySelector('img') && i.querySelector('img').src !== old; }", arg=before_src)
    settle(page)
    assert int(chains.get_attribute("value")) == start_value - 4
    after = img_bytes(page, _grid_image(page))
    caption_after = main(page).get_by_text("samples after step").first.inner_text()
    shot(page, "sample_after_slider")
    assert after != before, "the grid did not change when the number of chains changed"
    assert f"{start_value - 4} samples" in caption_after and caption_after != caption_before
    assert f"chains={start_value - 4}" in page.url, "the URL keeps the settings"
    assert_no_exception(page, "sample after slider")


def test_sample_seed_is_reproducible_from_the_url(page, server):
    open_page(page, server, "sample?seed=7&chains=16&K=50", "Sample digits")
    first = img_bytes(page, _grid_image(page))
    open_page(page, server, "sample?seed=7&chains=16&K=50", "Sample digits")
    assert img_bytes(page, _grid_image(page)) == first, "the same link must show the same digits"
    open_page(page, server, "sample?seed=8&chains=16&K=50", "Sample digits")
    assert img_bytes(page, _grid_image(page)) != first, "another seed must show other digits"


def test_sample_gif_downloads_and_decodes(page, server):
    import imageio.v3 as iio

    open_page(page, server, "sample?chains=9&K=60&every=5", "Sample digits")
    with page.expect_download() as info:
        main(page).locator('[data-testid="stDownloadButton"]').filter(has_text="GIF").locator("button").click()
    download = info.value
    assert download.suggested_filename == "chains.gif"
    path = SHOTS / "downloaded_chains.gif"
    download.save_as(path)
    data = path.read_bytes()
    assert data[:6] in (b"GIF87a", b"GIF89a")
    frames = iio.imread(io.BytesIO(data), index=None, extension=".gif")
    assert frames.ndim >= 3 and len(frames) >= 3, f"expected an animation, got {frames.shape}"
    assert len(frames) <= 60 // 5 + 1
    assert not all((frames[0] == f).all() for f in frames[1:]), "the chains did not move"
    assert_no_exception(page, "sample after download")


def test_sample_too_large_request_is_refused_with_a_message(page, server):
    from ebm.limits import MAX_CHAIN_STEPS

    open_page(page, server, "sample?chains=1024&K=5000", "Sample digits")
    assert 1024 * 5000 > MAX_CHAIN_STEPS
    warning = main(page).locator('[data-testid="stAlert"]').filter(has_text="too large")
    assert warning.count() == 1, "a request above the cap must be refused with a message"
    shot(page, "sample_too_large")
    assert_no_exception(page, "sample too large")


def test_url_values_show_as_text_not_markdown(page, server):
    """A link whose values are Markdown (a link, an image, bold, code, a coloured span) shows them as written."""
    import urllib.parse

    values = {"model": "![i](http://x.example/i.png) **b**", "sampler": "[a](http://x.example) `c` :red[d]",
              "start": "www.x.example me@x.example $x$"}
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    open_page(page, server, "sample?" + urllib.parse.urlencode(values), "Sample digits")
    alerts = page.locator(f'{MAIN} [data-testid="stAlert"], {SIDEBAR} [data-testid="stAlert"]')
    text = " ".join(alerts.all_inner_texts()).replace("\u2060", "")  # the invisible joiners that stop autolinks
    for value in values.values():
        assert value in text, f"{value!r} is not shown as written in {text!r}"
    assert alerts.locator("a, img, strong, code, span[style*='color']").count() == 0, alerts.first.inner_html()
    assert not [u for u in requests if urllib.parse.urlparse(u).hostname == "x.example"], (
        "the page fetched a value's URL"
    )
    assert "\\" not in text, "escapes must not show"


# ---- Latent explorer ---------------------------------------------------------------------------

TITLE_JS = ("(d) => String((d.layout && d.layout.title && (d.layout.title.text || d.layout.title)) || '')"
            ".replace(/<[^>]+>/g, '')")


def _slice_figure(page) -> dict | None:
    """Title, axis titles and a digest of the heatmap of the slice chart, read from Plotly's own div.

    (Streamlit's Plotly theme wraps titles in <b> tags; they are stripped.)
    """
    return page.evaluate(
        """() => {
            const title = TITLE_JS;
            const div = [...document.querySelectorAll('MAIN .js-plotly-plot')].find(d => title(d).startsWith('Slice'));
            if (!div) return null;
            const heat = div.data.find(t => t.type === 'heatmap');
            // z may be nested arrays, typed arrays or Plotly's base64 encoding: compare its JSON text
            return {title: title(div), x: div.layout.xaxis.title.text, y: div.layout.yaxis.title.text,
                    z: JSON.stringify(heat.z)};
        }""".replace("TITLE_JS", TITLE_JS).replace("MAIN", MAIN))


def test_explorer_slice_selector_changes_the_figure(page, server):
    open_page(page, server, "explorer", "Latent explorer")
    wait_until(page, f"() => [...document.querySelectorAll('{MAIN} .js-plotly-plot')].some(d => d.data)")
    before = _slice_figure(page)
    assert before is not None, "no slice chart"
    assert before["title"] == "Slice z0 × z1" and (before["x"], before["y"]) == ("z0", "z1")
    chart = main(page).locator('[data-testid="stPlotlyChart"]').first
    shot(page, "explorer_before", chart)

    # pick by keyboard, in the select itself: its option list is a popup outside the main block
    select = main(page).locator('[data-testid="stSelectbox"]').filter(has_text="Slice through dims")
    select.locator("input").click()
    select.locator("input").fill("z2 × z3")
    select.locator("input").press("Enter")
    wait_until(page, f"() => [...document.querySelectorAll('{MAIN} .js-plotly-plot')]"
                     f".some(d => ({TITLE_JS})(d) === 'Slice z2 × z3')")
    settle(page)
    after = _slice_figure(page)
    shot(page, "explorer_after_slice", main(page).locator('[data-testid="stPlotlyChart"]').first)
    shot(page, "explorer_page")
    assert (after["x"], after["y"]) == ("z2", "z3")
    assert after["z"] != before["z"], "the energy slice did not change with the dims"
    assert "pair=2-3" in page.url, "the URL keeps the slice"
    assert_no_exception(page, "explorer after slice change")


def test_explorer_density_draws_zero_density_dark(page, server):
    """Magma's first colour, #000004, is one of the placeholders Streamlit's chart theme swaps for
    a theme colour: zero density was drawn pink (#ffabab). Read the colour scale as Plotly drew it."""
    open_page(page, server, "explorer?view=density", "Latent explorer")
    wait_until(page, f"() => [...document.querySelectorAll('{MAIN} .js-plotly-plot')].some(d => d._fullData)")
    scale = page.evaluate(
        """() => {
            const title = TITLE_JS;
            const div = [...document.querySelectorAll('MAIN .js-plotly-plot')].find(d => title(d).startsWith('Slice'));
            return div._fullData.find(t => t.type === 'heatmap').colorscale;
        }""".replace("TITLE_JS", TITLE_JS).replace("MAIN", MAIN))
    import plotly.colors

    magma = plotly.colors.get_colorscale("Magma")
    assert len(scale) == len(magma)
    for (position, drawn), (want_position, want) in zip(scale, magma):
        assert position == pytest.approx(want_position)
        rgb = plotly.colors.hex_to_rgb(drawn) if drawn.startswith("#") else plotly.colors.unlabel_rgb(drawn)
        assert max(abs(a - b) for a, b in zip(rgb, plotly.colors.hex_to_rgb(want))) <= 1, (position, drawn, want)


def test_a_stopped_run_shows_how_far_it_got_in_the_picker(page, server):
    from ebm import runs
    from ebm.checkpoint import load_model, model_to_bytes, write_atomically

    model, _ = load_model()
    extra = {"dataset": "mnist", "train_config": {"ae_epochs": 12, "ebm_iterations": 5000}, "stopped_early": True,
             "stages_done": {"autoencoder": 1.0, "energy": 0.31}}
    write_atomically(server["runs"] / "stopped-run" / runs.WEIGHTS_NAME, model_to_bytes(model, extra))
    open_page(page, server, "sample?model=stopped-run&chains=4&K=5", "Sample digits")
    caption = sidebar(page).locator('[data-testid="stCaptionContainer"]').first
    assert caption.inner_text() == "MNIST · 12 epochs, 1,550 of 5,000 iterations · stopped early"


# The server's dataset download, offline: copies a prepared folder (sys.argv[1]) instead of fetching.
FAKE_DOWNLOAD = """
import shutil, sys
import ebm.data
mirror = sys.argv.pop(1)
ebm.data._fetch = lambda name, root, raw_dir: shutil.copytree(mirror, raw_dir, dirs_exist_ok=True)
from streamlit.web import cli
sys.argv = ["streamlit", *sys.argv[1:]]
sys.exit(cli.main())
"""


def test_download_box_goes_once_the_download_worked(page, tmp_path):
    """The 'not on this server yet' box and its button used to stay after a successful download.
    The server's download copies a synthetic MNIST from a local folder: no network needed."""
    mirror = _synthetic_mnist(tmp_path / "mirror") / "MNIST" / "raw"
    data = tmp_path / "data"
    data.mkdir()
    with streamlit_server(data, tmp_path, ("-c", FAKE_DOWNLOAD, str(mirror))) as url:
        open_page(page, {"url": url}, "explorer", "Latent explorer")
        box = main(page).locator('[data-testid="stAlert"]').filter(has_text="MNIST test set")
        button = main(page).get_by_role("button", name="Download MNIST")
        assert box.count() == 1 and button.count() == 1
        button.click()
        wait_until(page, f"() => [...document.querySelectorAll('{MAIN} .js-plotly-plot')]"
                         ".some(d => d.data && d.data.some(t => t.name === '0'))")  # the test codes' scatter
        settle(page)
        assert box.count() == 0 and button.count() == 0


# ---- Train -------------------------------------------------------------------------------------

TINY_TRAINING = {  # (stage column header, label) -> value: a run that is quick per step but long overall
    ("Stage 1", "Epochs"): 2,
    ("Stage 1", "Hidden width"): 16,
    ("Stage 1", "Batch size"): 512,
    ("Stage 2", "Iterations"): 100_000,
    ("Stage 2", "Hidden width"): 8,
    ("Stage 2", "Batch size"): 16,
    ("Stage 2", "Langevin steps per update"): 2,
    ("Stage 2", "Replay buffer"): 64,
}


def _progress(page, stage: str) -> float:
    bar = main(page).locator('[data-testid="stProgress"]').filter(has_text=stage)
    if bar.count() == 0:
        return 0.0
    value = bar.get_by_role("progressbar").get_attribute("aria-valuenow")
    return float(value or 0)


POINTS_JS = """(prefix) => {
    const title = TITLE_JS;
    const div = [...document.querySelectorAll('MAIN .js-plotly-plot')].find(d => title(d).startsWith(prefix));
    if (!div || !div.data) return -1;
    const n = (x) => !x ? 0 : (Array.isArray(x) || ArrayBuffer.isView(x)) ? x.length
                     : x.shape ? Number(String(x.shape).split(',')[0]) : 0;
    return div.data.reduce((total, trace) => total + n(trace.x), 0);
}""".replace("TITLE_JS", TITLE_JS).replace("MAIN", MAIN)


def chart_points(page, title: str) -> int:
    """Number of points drawn in the Plotly chart whose title starts with `title` (-1: no such chart)."""
    return page.evaluate(POINTS_JS, title)


def wait_for_more_points(page, title: str, than: int, timeout: int = 180_000) -> int:
    wait_until(page, f"(n) => ({POINTS_JS})({title!r}) > n", arg=than, timeout=timeout)
    return chart_points(page, title)


def _fill(page, header: str, label: str, value) -> None:
    stage = main(page).locator(f".st-key-{header.lower().replace(' ', '_')}")  # the stage's own container
    box = stage.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")


def test_train_start_watch_and_stop(page, server):
    earlier = set(server["runs"].glob("*/model.safetensors"))  # other tests' runs share the server
    open_page(page, server, "train", "Train your own model")
    shot(page, "train_form")
    for (header, label), value in TINY_TRAINING.items():
        _fill(page, header, label, value)
    main(page).get_by_role("button", name="Start training").click()

    stop = main(page).get_by_role("button", name="Stop")
    stop.wait_for(timeout=60_000)
    # The live panel refreshes every second. Stage 1 is short; stage 2 (100,000 iterations) runs until
    # stopped: its contrastive-loss curve must grow while we watch, and its progress bar move.
    ae_title, cd_title = "Autoencoder BCE", "Contrastive loss"
    wait_for_more_points(page, ae_title, 0)
    shot(page, "train_stage1")
    m1 = wait_for_more_points(page, cd_title, 0, timeout=300_000)
    energy_1 = _progress(page, "Stage 2")
    m2 = wait_for_more_points(page, cd_title, m1)
    m3 = wait_for_more_points(page, cd_title, m2)
    wait_until(
        page,
        f"(p) => Number([...document.querySelectorAll('{MAIN} [data-testid=stProgress]')]"
        ".find(e => e.innerText.includes('Stage "
        "2'))?.querySelector('[role=progressbar]')?.getAttribute('aria-valuenow')) > p",
        arg=energy_1,
        timeout=180_000,
    )
    shot(page, "train_stage2")
    assert 0 < m1 < m2 < m3
    assert _progress(page, "Stage 1") == 100 and chart_points(page, ae_title) > 0
    assert_no_exception(page, "train while running")

    stop.click()
    main(page).get_by_text("(what was trained is saved)").wait_for(timeout=120_000)
    main(page).get_by_text("Saved as run").wait_for(timeout=60_000)
    settle(page)
    shot(page, "train_stopped")
    saved = sorted(set(server["runs"].glob("*/model.safetensors")) - earlier)
    assert len(saved) == 1, f"expected one new saved run, found {saved}"
    from ebm.checkpoint import load_model

    _, meta = load_model(saved[0])
    assert meta["stopped_early"] is True and meta["train_config"]["ebm_iterations"] == 100_000
    assert 0 < meta["stages_done"]["energy"] < 1
    assert main(page).get_by_role("button", name="Start training").is_enabled(), "Start is enabled again after the stop"
    assert_no_exception(page, "train after stop")
