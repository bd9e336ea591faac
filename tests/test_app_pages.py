"""The Sample and Latent explorer pages as a first visitor uses them: picking the interpolation's
endpoints from a gallery of digits, a big sample grid shown readably, and every page still running.

AppTest with the shipped weights, as in test_app.py (whose fixtures and helpers this reuses).
"""

import ast
import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import widgets
from ebm.checkpoint import SHIPPED_WEIGHTS, load_model
from ebm.generate import SampleSettings, decode_binary
from ebm.images import image_grid
from ebm.render import sample_view
from ebm.samplers import SAMPLERS
from ebm.scheduler import RUNNING

from test_app import APP, environment, image_captions, open_page, plain, plotly_spec, tiny_mnist  # noqa: F401 (fixtures)


def gallery(at, key: str) -> list[int]:
    """The test-digit indices a gallery shows, in order, from its buttons' keys."""
    prefix = f"{key}_pick_"
    return [int(b.key[len(prefix):]) for b in at.button if b.key and b.key.startswith(prefix)]


def interpolation_caption(at) -> str:
    return next(c for c in image_captions(at) if c.startswith("Straight line"))


# ---- explorer: the interpolation's endpoints -------------------------------------------------------
def test_clicking_gallery_digits_sets_the_interpolation_endpoints(tiny_mnist):
    labels = tiny_mnist["t10k-labels-idx1-ubyte"]
    at = open_page("pages/explorer.py")
    starts, ends = gallery(at, "x_from"), gallery(at, "x_to")
    assert starts == ends and len(starts) == len(np.unique(labels))  # one digit of each class, in class order
    assert [labels[i] for i in starts] == sorted(labels[i] for i in starts)
    assert {0, 1} <= set(starts)  # the default endpoints are among them, and chosen
    assert (
        at.button(key="x_from_pick_0").proto.type == "primary" and at.button(key="x_to_pick_1").proto.type == "primary"
    )
    before = plotly_spec(at, "interp_energy")["data"][0]["y"]

    a, b = [i for i in starts if i not in (0, 1)][:2]
    at.button(key=f"x_from_pick_{a}").click().run()
    at.button(key=f"x_to_pick_{b}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert f"test #{a} (label {labels[a]}) → test #{b} (label {labels[b]})" in interpolation_caption(at)
    assert at.number_input(key="x_from").value == a and at.number_input(key="x_to").value == b
    assert (
        at.button(key=f"x_from_pick_{a}").proto.type == "primary"
        and at.button(key="x_from_pick_0").proto.type == "secondary"
    )
    assert plotly_spec(at, "interp_energy")["data"][0]["y"] != before  # other endpoints, another energy profile
    assert at.query_params["from"] == str(a) and at.query_params["to"] == str(b)


def test_other_digits_shows_another_gallery_and_keeps_the_endpoints(tiny_mnist):
    at = open_page("pages/explorer.py")
    first = gallery(at, "x_from")
    at.button(key="x_gallery_shuffle").click().run()
    assert not at.exception
    assert gallery(at, "x_from") != first and gallery(at, "x_to") == gallery(at, "x_from")
    assert "test #0 " in interpolation_caption(at) and "→ test #1 " in interpolation_caption(at)


def test_the_endpoints_come_from_the_url(tiny_mnist):
    labels = tiny_mnist["t10k-labels-idx1-ubyte"]
    at = open_page("pages/explorer.py", {"from": "5", "to": "17"})
    assert f"test #5 (label {labels[5]}) → test #17 (label {labels[17]})" in interpolation_caption(at)
    at = open_page("pages/explorer.py", {"from": "99999", "to": "x"})
    text = plain(at.warning[0].value)
    assert "from=99999 in the URL is above the maximum" in text and "to=x in the URL is not a number" in text
    assert at.number_input(key="x_from").value == len(labels) - 1


def test_gallery_indices_pick_each_class_reproducibly():
    labels = np.array([3, 1, 3, 0, 1, 3, 0])
    assert widgets.gallery_indices(labels, 0).tolist() == [3, 1, 0]  # the first of each class
    drawn = widgets.gallery_indices(labels, 5)
    assert labels[drawn].tolist() == [0, 1, 3] and drawn.tolist() == widgets.gallery_indices(labels, 5).tolist()
    assert len(widgets.gallery_indices(labels, 1, per_class=2)) == 6


# ---- sample: big grids ---------------------------------------------------------------------------
def test_a_big_grid_shows_its_first_64_digits_and_says_so():
    at = open_page("pages/sample.py", {"chains": "1024", "K": "5"})
    assert "1,024 samples after step 5: the first 64 shown" in image_captions(at)
    show_all = at.toggle(key="s_show_all")
    assert show_all.label == "Show all 1,024" and not show_all.value
    show_all.set_value(True).run()
    assert not at.exception
    assert "1,024 samples after step 5" in image_captions(at)
    assert not any("first 64 shown" in c for c in image_captions(at))


def test_a_grid_of_64_or_fewer_is_shown_whole():
    at = open_page("pages/sample.py", {"chains": "64", "K": "5"})
    assert "64 samples after step 5" in image_captions(at)
    assert not [t for t in at.toggle if t.key == "s_show_all"]


def test_the_readable_subset_is_an_8_by_8_grid_of_the_first_chains():
    model, _ = load_model(SHIPPED_WEIGHTS)
    view = sample_view(model, SampleSettings(num_chains=1024, num_steps=1))
    picture = np.asarray(Image.open(io.BytesIO(view.preview_png)))
    assert picture.shape == ((8 * 30 + 2) * 2,) * 2  # 8 x 8 cells of 28 px and 2 px padding, at scale 2
    first = decode_binary(model, torch.as_tensor(view.final_codes[:64]))
    assert np.array_equal(picture, image_grid(first, ncols=8, scale=2))


# ---- sample: live chains, Stop, and the samplers compared ----------------------------------------------
def test_a_stopped_sample_shows_where_it_got_and_runs_again():
    """Another visitor's run of these settings is under way, caught after its first block; this session asks
    for the same and presses Stop. AppTest cannot click mid-run, so the test joins the run for this session
    and calls what the button's on_click calls (tests/test_browser_sample.py clicks the real one). The page
    then shows the last live frame while the run goes on for the other visitor; Run again shows the digits."""
    at = open_page("pages/sample.py", {"chains": "16", "K": "5"})
    settings = SampleSettings(num_chains=16, num_steps=300, seed=77)
    loaded = widgets.shipped_model()
    first_frame, go_on = threading.Event(), threading.Event()

    def work(progress):
        def publish(frame):
            progress.publish(frame)
            first_frame.set()
            assert go_on.wait(60)

        return sample_view(loaded.model, settings, None, progress, publish, live_interval=0)

    key = widgets.sample_key(loaded, settings)
    other = widgets.scheduler().submit(key, "other visitor", work, settings.num_steps)
    try:
        assert first_frame.wait(60)
        mine = widgets.scheduler().submit(key, at.session_state["session_owner"], work, settings.num_steps)
        widgets.stop_run(at.session_state, key, mine)
        at.slider(key="s_steps").set_value(300)
        at.number_input(key="s_seed").set_value(77).run()
        assert not at.exception, [e.value for e in at.exception]
        assert any("Stopped at step 64 of 300" in plain(i.value) for i in at.info)
        assert image_captions(at) == ["Stopped: 16 chains at step 64 of 300"]
        assert not at.get("progress") and mine.state == other.state == RUNNING  # it goes on for the other visitor
        at.number_input(key="s_seed").set_value(77).run()  # a rerun with the same settings stays stopped
        assert image_captions(at) == ["Stopped: 16 chains at step 64 of 300"]
    finally:
        go_on.set()
    assert other.result().steps_done == 300
    at.button(key="live_run_again").click().run()
    assert not at.exception and "16 samples after step 300" in image_captions(at)


def test_the_samplers_are_compared_on_the_sample_page():
    at = open_page("pages/sample.py", {"K": "5", "compare": "true", "eps": "0.8", "seed": "4"})
    [table] = at.dataframe
    assert table.value["sampler"].tolist() == [name.upper() for name in SAMPLERS]
    assert {"min ESS", "ESS / s", "max R-hat", "W1 z0", "W1 z3", "W1 noise floor"} <= set(table.value.columns)
    charts = [plotly_spec(at, f"compare_marginal_{k}") for k in range(4)]
    assert [len(c["data"]) for c in charts] == [1 + len(SAMPLERS)] * 4  # the exact marginal and one per sampler
    assert at.query_params["compare"] == "True"
    at.toggle(key="s_compare").set_value(False).run()
    assert not at.exception and not at.dataframe and at.query_params["compare"] == "False"


def test_the_comparison_follows_the_step_size_and_seed_and_is_kept():
    at = open_page("pages/sample.py", {"K": "5", "compare": "true", "eps": "0.8", "seed": "4"})
    before = at.dataframe[0].value
    at.slider(key="s_eps").set_value(0.3).run()
    after = at.dataframe[0].value
    assert after["min ESS"].tolist() != before["min ESS"].tolist()  # smaller steps mix otherwise
    at.slider(key="s_eps").set_value(0.8).run()  # back: the scheduler's kept result, timings and all
    assert at.dataframe[0].value["seconds"].tolist() == before["seconds"].tolist()


# ---- every page still runs -------------------------------------------------------------------------
def routed_pages() -> list[str]:
    """The page files app.py routes, read from its `st.Page(...)` calls: a new page is launched here unasked."""
    tree = ast.parse(Path(APP).read_text())
    return [call.args[0].value for call in ast.walk(tree)
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "Page"]


PAGES = routed_pages()


def test_the_routed_pages_are_read_from_app_py():
    assert PAGES[0] == "pages/home.py" and {"pages/sample.py", "pages/explorer.py", "pages/train.py"} <= set(PAGES)


@pytest.mark.parametrize("with_data", [False, True], ids=["no-data", "data"])
@pytest.mark.parametrize("page", PAGES, ids=[Path(p).stem for p in PAGES])
def test_every_page_runs(page, with_data, request):
    """Every routed page runs, and calls widgets.ensure_router() (which marks the session) on its own."""
    if with_data:
        request.getfixturevalue("tiny_mnist")
    at = open_page(None, {"K": "5", "chains": "4"} if page == "pages/sample.py" else None)
    at.session_state["_router_checked"] = False  # set by the default page: the page under test must set it again
    at.switch_page(page)
    at.run()
    assert not at.exception and at.title, [e.value for e in at.exception]
    assert at.session_state["_router_checked"], f"{page} does not call widgets.ensure_router()"
