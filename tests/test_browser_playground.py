"""The Playground in a real browser: draw a stroke on the canvas and see its score; repair, inpaint, compose.

- Draw: the mouse draws a 7 on the canvas (the drawable-canvas component, in the page itself); the page shows
  the 28×28 digit the model sees and the three scores, then keeps the drawing when the tool changes to Repair.
- Inpaint and Compose run on a test digit and on "3 or 8" from the URL.

The server, browser and helpers are test_browser.py's (same skips, same Chromium); screenshots land in
artifacts/screenshots/ (playground_*.png at 1400 px; the same at 1200 px in the dark theme). Locators are
scoped to the main block; waits are on state, never sleeps.
"""

from __future__ import annotations

import pytest

from test_browser import MAIN, SHOTS, assert_no_exception, browser, main, server, settle, wait_until  # noqa: F401

VIEWS = [(1400, "light"), (1200, "dark")]
SEVEN = [(60, 50), (170, 50), (145, 110), (120, 170), (100, 205)]
"""A 7 in canvas pixels (240 × 240): the top bar, then the stem."""
CANVAS = f'{MAIN} .st-key-p_canvas canvas'


@pytest.fixture(params=VIEWS, ids=[f"{w}px-{s}" for w, s in VIEWS])
def view_page(request, browser):
    width, scheme = request.param
    context = browser.new_context(viewport={"width": width, "height": 1100}, color_scheme=scheme)
    pg = context.new_page()
    pg.set_default_timeout(240_000)  # the first score of a model builds its reference (tens of seconds)
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.suffix = "" if request.param == VIEWS[0] else f"_{width}px_{scheme}"
    yield pg
    context.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"playground_{name}{page.suffix}.png"), full_page=True)


def image_caption(page, text: str) -> None:
    """Wait until an image whose caption contains `text` is in the main block and loaded."""
    wait_until(page, """(text) => [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"]')]
        .some(e => e.innerText.includes(text) && e.querySelector('img')?.complete
                   && e.querySelector('img').naturalWidth > 0)""", text)


def draw(page, points) -> None:
    box = page.locator(CANVAS).first.bounding_box()
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
    page.mouse.up()


def test_a_drawn_stroke_gets_a_score_and_then_a_repair(view_page, server):
    page = view_page
    page.goto(f"{server['url']}/playground")
    wait_until(page, f"() => document.querySelector('{MAIN} .st-key-p_canvas')")
    page.locator(CANVAS).first.wait_for()  # inside the component's shadow root, which Playwright's locators pierce
    settle(page)
    assert main(page).get_by_text("Draw a digit with the mouse").count() == 1
    draw(page, SEVEN)
    image_caption(page, "What the model sees")
    wait_until(page, f"""() => [...document.querySelectorAll('{MAIN} [data-testid="stMetric"]')]
                               .some(e => e.innerText.includes('log p(x)'))""")
    settle(page)
    verdict = main(page).locator('[data-testid="stAlert"]').first.inner_text()
    assert "Like the training digits" in verdict or "Unlike anything in training" in verdict
    assert main(page).locator('[data-testid="stPlotlyChart"]').count() == 2  # the slice and the histograms
    assert_no_exception(page, "score")
    shot(page, "score")

    main(page).get_by_role("radio", name="Repair").click()
    image_caption(page, "Where they are after step 50")
    settle(page)
    assert_no_exception(page, "repair")
    shot(page, "repair")


def test_inpainting_and_composing_from_the_url(view_page, server):
    page = view_page
    page.goto(f"{server['url']}/playground?source=test&digit=0&tool=inpaint&hide=bottom")
    image_caption(page, "8 completions")
    settle(page)
    assert main(page).get_by_text("the bottom half hidden").count() == 1
    assert_no_exception(page, "inpaint")
    shot(page, "inpaint")

    page.goto(f"{server['url']}/playground?tool=compose&classes=3,8")
    image_caption(page, "64 samples of E(z)")
    settle(page)
    share = main(page).locator('[data-testid="stMetric"]').filter(has_text="In the chosen classes").inner_text()
    assert share.strip().endswith("%")
    assert_no_exception(page, "compose")
    shot(page, "compose")
