"""The Sample page's live chains and its comparison of the samplers, in a real browser.

- Live: a request big enough to take a couple of seconds shows its digits as they form: two different
  frames are caught while it runs (read from the <img> as drawn, so a frame that has since been replaced
  still counts), the page is screenshotted mid-run, then Stop ends it where it is and Run again finishes it.
- Compare: every sampler's row in the table and one marginal chart per latent dim, screenshotted.
- Fashion-MNIST: the second shipped model's samples, opened from a link, screenshotted.

The server, browser and helpers are test_browser.py's (same skips, same Chromium); screenshots land in
artifacts/screenshots/ (sample_live.png and sample_compare.png at 1400 px; the same at 1200 px in the dark
theme). Locators are scoped to the main block, whose Stop button is the page's own (Streamlit's toolbar has
another); waits are on state, never sleeps.
"""

from __future__ import annotations

import pytest

from test_browser import (  # noqa: F401 (fixtures)
    MAIN,
    SHOTS,
    assert_no_exception,
    browser,
    main,
    server,
    settle,
    shot,
    sidebar,
    wait_until,
)

LIVE_REQUEST = "sample?chains=1024&K=1950"  # the cap: about 2 s of chains on one core, a frame every 0.3 s
ATTEMPTS = 3  # a run that ends before its second frame (a fast machine) is tried again with another seed
LIVE_FRAME_JS = f"""(old) => {{
    const main = document.querySelector('{MAIN}');
    if ([...main.querySelectorAll('[data-testid="stImage"]')].some(e => e.innerText.includes('samples after step')))
        return 'finished';
    const box = [...main.querySelectorAll('[data-testid="stImage"]')].find(e => e.innerText.includes('Live:'));
    const img = box && box.querySelector('img');
    if (!img || !img.complete || !img.naturalWidth || img.src === old) return null;
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    canvas.getContext('2d').drawImage(img, 0, 0);
    return {{src: img.src, pixels: canvas.toDataURL('image/png'), caption: box.innerText.trim()}};
}}"""
"""The live frame once it is new (another src than `old`) and drawn: its src, its pixels and its caption;
'finished' once the final grid shows instead."""

CLICK_STOP_JS = f"""() => {{
    const stop = [...document.querySelectorAll('{MAIN} button')].find(b => b.innerText.trim().endsWith('Stop'));
    if (stop) stop.click();
    return !!stop;
}}"""
"""Press the page's own Stop button (not the toolbar's, outside the main block) at once; false if it is gone."""

STOPPED_OR_FINISHED_JS = f"""() => {{
    const main = document.querySelector('{MAIN}');
    if ([...main.querySelectorAll('[data-testid="stAlert"]')].some(e => e.innerText.includes('Stopped at step')))
        return 'stopped';
    return [...main.querySelectorAll('[data-testid="stImage"]')].some(e => e.innerText.includes('samples after step'))
        && 'finished';
}}"""

VIEWS = [(1400, "light", 4242), (1200, "dark", 5242)]  # a seed base each: the server keeps the last results


@pytest.fixture(params=VIEWS, ids=[f"{w}px-{s}" for w, s, _ in VIEWS])
def view_page(request, browser):
    width, scheme, seed = request.param
    context = browser.new_context(viewport={"width": width, "height": 1000}, color_scheme=scheme)
    pg = context.new_page()
    pg.set_default_timeout(120_000)
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.suffix = "" if request.param == VIEWS[0] else f"_{width}px_{scheme}"
    pg.seed = seed
    yield pg
    context.close()


def live_frame(page, old: str | None):
    return page.wait_for_function(LIVE_FRAME_JS, arg=old).json_value()


def catch_live(page, server) -> tuple[dict, dict]:
    """Open a run, catch two of its frames, screenshot it and press Stop; a run that finishes before its Stop
    takes effect (a fast or a very busy machine) is tried again with another seed. Returns the two frames."""
    missed = []
    for attempt in range(ATTEMPTS):
        page.goto(f"{server['url']}/{LIVE_REQUEST}&seed={page.seed + attempt}")
        first = live_frame(page, None)
        second = "finished" if first == "finished" else live_frame(page, first["src"])
        if second != "finished":  # the screen, quickly: it runs on; by the second frame the chart has drawn too
            page.screenshot(path=str(SHOTS / f"sample_live{page.suffix}.png"))
        if second == "finished":
            missed.append(f"seed {page.seed + attempt}: finished after {0 if first == 'finished' else 1} frame(s)")
            continue
        progress = main(page).locator('[data-testid="stProgress"]').count()
        if not page.evaluate(CLICK_STOP_JS):  # clicked in the page: the frames redrawn above it keep it moving
            missed.append(f"seed {page.seed + attempt}: finished before Stop")
            continue
        if page.wait_for_function(STOPPED_OR_FINISHED_JS).json_value() == "finished":
            missed.append(f"seed {page.seed + attempt}: finished before the Stop reached the server")
            continue
        print(f"caught live after {attempt + 1} run(s): {missed}, then {first['caption']!r}, {second['caption']!r}")
        assert progress == 1, "a running sample shows its progress"
        return first, second
    pytest.fail(f"every one of {ATTEMPTS} runs finished before it could be watched and stopped: {missed}")


def test_live_chains_change_while_they_run_and_stop_on_request(view_page, server):
    page = view_page
    first, second = catch_live(page, server)
    assert first["pixels"] != second["pixels"], "the chains moved, so their digits must differ"
    assert first["caption"].startswith("Live: the first 64 chains at step") and "of 1,950" in second["caption"]
    stopped = main(page).get_by_text("Stopped at step")
    stopped.wait_for()
    assert "of 1,950" in stopped.inner_text()
    settle(page)
    assert_no_exception(page, "stopped sample")
    assert main(page).get_by_text("samples after step").count() == 0  # stopped, not finished
    shot(page, f"sample_stopped{page.suffix}")
    main(page).get_by_role("button", name="Run again").click()
    main(page).get_by_text("1,024 samples after step 1950").wait_for()
    assert_no_exception(page, "run again")


def test_the_samplers_compared(view_page, server):
    page = view_page
    page.goto(f"{server['url']}/sample?K=20&compare=true")
    table = main(page).locator('[data-testid="stDataFrame"]')
    wait_until(page, f"""() => document.querySelectorAll('{MAIN} [data-testid="stPlotlyChart"]').length >= 6
                               && document.querySelector('{MAIN} [data-testid="stDataFrame"]')""")
    settle(page)
    main(page).get_by_role("heading", name="Compare the samplers").evaluate("h => h.scrollIntoView({block: 'start'})")
    assert table.count() == 1 and main(page).get_by_text("Marginal of z3").count() == 1
    page.screenshot(path=str(SHOTS / f"sample_compare{page.suffix}.png"))
    assert_no_exception(page, "compare")


def test_the_shipped_fashion_mnist_model_samples_clothes(view_page, server):
    """The picker's second shipped model, opened from its link: its grid of 64 samples, screenshotted."""
    page = view_page
    page.goto(f"{server['url']}/sample?model=shipped-fashion-mnist&chains=64&K=500&seed={page.seed}")
    main(page).get_by_text("64 samples after step 500").wait_for()
    settle(page)
    picker = sidebar(page).locator('[data-testid="stSelectbox"]').filter(has_text="Model").locator("input")
    assert picker.input_value() == "Shipped (Fashion-MNIST, 4-D)"
    assert main(page).get_by_role("heading", name="Sample clothes", level=1).count() == 1
    shot(page, f"sample_fashion{page.suffix}")
    assert_no_exception(page, "fashion-mnist samples")
