"""The pages in a real browser at the widths visitors use: no label or option cut short on any page
(light and dark), the output before the controls on a phone, gallery clicks and a big grid's readable subset.

The server, browser and helpers are test_browser.py's (same skips, same Chromium); screenshots land
in artifacts/screenshots/. Locators are scoped to the main block; waits are on state, never sleeps.
"""

from __future__ import annotations

import pytest

from test_browser import MAIN, browser, main, open_page, page, server, settle, shot, wait_until  # noqa: F401 (fixtures)

WIDTHS = [1400, 1200, 420]
CLIPPED = f"""() => [...document.querySelectorAll('{MAIN} *')]
    .filter(e => e.offsetParent !== null && !e.closest('[data-testid="stPlotlyChart"], .katex') && e.innerText
                 && getComputedStyle(e).overflowX !== 'visible'
                 && e.scrollWidth > e.clientWidth + (e.classList.contains('katex-display') ? 4 : 1))
    .map(e => e.innerText.trim())"""
"""Texts in the main block that are cut short: an element that hides or scrolls what does not fit (a label's
ellipsis, a segmented control scrolling its options) and is narrower than its content. Charts and KaTeX
formulas lay out their own boxes (a multi-line formula's box overflows by 2 px of struts, which show nothing)."""


@pytest.fixture(params=WIDTHS, ids=[f"{w}px" for w in WIDTHS])
def sized_page(request, browser):
    width = request.param
    context = browser.new_context(viewport={"width": width, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(120_000)
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.width = width
    yield pg
    context.close()


def _top(locator) -> float:
    box = locator.first.bounding_box()
    assert box is not None, "not visible"
    return box["y"]


PAGES = [("", "Digits from an energy landscape"), ("sample", "Sample digits"), ("explorer", "Latent explorer"),
         ("playground", "Playground"), ("train", "Train your own model")]


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("path,heading", PAGES, ids=[p or "home" for p, _ in PAGES])
def test_no_label_or_option_is_cut_short(sized_page, server, path, heading, scheme):
    """Every page at each width, in the light and the dark theme (Streamlit follows the browser's);
    the screenshots are the ones to look at (artifacts/screenshots/<page>_<width>px_<theme>.png)."""
    sized_page.emulate_media(color_scheme=scheme)
    open_page(sized_page, server, path, heading)
    shot(sized_page, f"{path or 'home'}_{sized_page.width}px_{scheme}")
    assert sized_page.evaluate(CLIPPED) == [], "these labels show cut short"


def test_sample_shows_digits_before_the_controls(sized_page, server):
    open_page(sized_page, server, "sample", "Sample digits")
    first_image = main(sized_page).locator('[data-testid="stImage"] img')
    sampler = main(sized_page).get_by_text("Sampler", exact=True)
    if sized_page.width < 640:  # columns stack: the digits come first, inside the first screen
        assert _top(first_image) < _top(sampler) and _top(first_image) < 600
    else:  # side by side: the digits and the controls start level
        assert abs(_top(first_image) - _top(sampler)) < 40


def test_explorer_shows_the_map_before_the_controls(sized_page, server):
    open_page(sized_page, server, "explorer", "Latent explorer")
    chart = main(sized_page).locator('[data-testid="stPlotlyChart"]')
    chart.first.wait_for()
    controls = main(sized_page).get_by_text("Slice through dims", exact=True)
    if sized_page.width < 640:
        assert _top(chart) < _top(controls) and _top(chart) < 700
    else:
        assert _top(controls) > _top(chart) - 200  # beside the map, not above it


def test_gallery_click_changes_the_interpolation(page, server):
    open_page(page, server, "explorer", "Latent explorer")
    caption = main(page).get_by_text("Straight line in code space")
    before = caption.inner_text()
    start_gallery = main(page).locator(".st-key-x_from_gallery")
    start_gallery.get_by_role("button", name="3", exact=True).click()
    wait_until(page, f"(old) => {{ const c = [...document.querySelectorAll('{MAIN} [data-testid=\"stImage\"]')]"
                     ".find(e => e.innerText.includes('Straight line')); return c && c.innerText !== old "
                     "&& c.innerText.includes('(label 3) →'); }", arg=before)
    settle(page)
    shot(page, "explorer_gallery_start_3")
    assert "from=" in page.url


def test_a_big_grid_shows_a_readable_subset_then_all(page, server):
    open_page(page, server, "sample?chains=1024&K=20", "Sample digits")
    main(page).get_by_text("1,024 samples after step 20: the first 64 shown").wait_for()
    grid = main(page).locator('[data-testid="stImage"]').filter(has_text="samples after step").locator("img")
    assert grid.evaluate("img => img.naturalWidth") == (8 * 30 + 2) * 2  # 8 digits a row
    main(page).get_by_text("Show all 1,024").click()
    wait_until(
        page, "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')].some(i => i.naturalWidth > 1000)"
    )
    settle(page)
    shot(page, "sample_1024_all")
    assert main(page).get_by_text("first 64 shown").count() == 0
