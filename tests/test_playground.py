"""The Playground: its three runs in the core (`ebm.playground`) and the page in AppTest, one tool at a time."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ebm.checkpoint import SHIPPED_WEIGHTS, load_model
from ebm.classifier import load_classifier
from ebm.conditioning import ClassSettings, latent_classifier_path, load_latent_classifier
from ebm.generate import SampleSettings, decode_binary
from ebm.playground import RepairSettings, compose_view, inpaint_view, repair_view
from ebm.scheduler import Cancelled

from test_app import open_page, tiny_mnist  # noqa: F401 (fixture)

needs_mnist = pytest.mark.skipif(not os.environ.get("EBM_DATA_DIR"), reason="needs MNIST in EBM_DATA_DIR")


@pytest.fixture(scope="module")
def shipped():
    return load_model()[0]


@pytest.fixture(scope="module")
def first_test_digit():
    from ebm.data import DatasetError, load_binarized

    try:
        images, labels = load_binarized("mnist", "test", os.environ["EBM_DATA_DIR"])
    except (DatasetError, KeyError) as e:
        pytest.skip(f"no MNIST test set: {e}")
    return images[0], int(labels[0])


@needs_mnist
def test_repair_keeps_a_digit_in_its_basin_at_the_defaults(shipped, first_test_digit):
    """From a clean 7, small steps at T = 0.5 stay in the 7's basin: the chains still read as 7s."""
    image, label = first_test_digit
    view = repair_view(shipped, image, RepairSettings())
    classifier = load_classifier()[0]
    read = classifier.predict(decode_binary(shipped, torch.from_numpy(view.final_codes)))[1].argmax(-1)
    assert label == 7 and (read == label).float().mean() >= 0.75
    assert repair_view(shipped, image, RepairSettings()).png == view.png  # same settings, same digits


def test_a_stopped_repair_raises_cancelled(shipped):
    image = (torch.rand(784, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    with pytest.raises(Cancelled):
        repair_view(shipped, image, RepairSettings(num_steps=500), should_stop=lambda step: True)


def test_inpainting_shows_the_hidden_half_grey_and_is_reproducible(shipped):
    image = (shipped.decode(torch.zeros(1, shipped.latent_dim))[0] > 0.5).float()
    settings = SampleSettings(num_steps=20, num_chains=4, record_every=5)
    view = inpaint_view(shipped, image, "bottom", seed=1, settings=settings)
    assert view.num_chains == 4 and 0 < view.mean_acceptance <= 1 and view.step_size > 0
    masked = np.asarray(Image.open(io.BytesIO(view.masked_png)).convert("L")).astype(int)
    assert masked.shape == (28, 28)
    assert (masked[14:] == 128).all() and set(np.unique(masked[:14])) <= {0, 255}  # hidden half grey, top as given
    assert np.array_equal(masked[:14] > 0, image.reshape(28, 28)[:14].numpy() > 0)
    assert inpaint_view(shipped, image, "bottom", seed=1, settings=settings).png == view.png
    assert Image.open(io.BytesIO(view.gif)).n_frames == 5  # one frame per recorded step


def test_compose_reports_what_the_classifier_reads(shipped):
    latent = load_latent_classifier(latent_classifier_path(SHIPPED_WEIGHTS), shipped)[0]
    classes = ClassSettings(digits="3")
    view = compose_view(shipped, latent, load_classifier()[0], classes, seed=0)
    assert view.histogram.sum() == view.samples.num_chains == 64
    assert view.share_in_allowed == round(view.histogram[3] / 64, 4) >= 0.9  # reported to 4 places


# ---- the page --------------------------------------------------------------------------------------
def playground(query: dict):
    return open_page("pages/playground.py", query)


@pytest.mark.parametrize("tool", ["score", "repair", "inpaint", "compose"])
def test_each_tool_runs_on_a_test_digit(tool, tiny_mnist):
    at = playground({"tool": tool, "source": "test", "digit": "3", "steps": "20", "classes": "3,8"})
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    if tool == "score":
        assert [m.label for m in at.metric] == ["Energy E(z)", "log p(z)", "log p(x)"]
        assert any("training digits" in a.value or "Unlike anything" in a.value for a in (*at.success, *at.warning))
    if tool == "compose":
        assert at.metric[0].label == "In the chosen classes" and at.metric[0].value.endswith("%")
    assert at.query_params["tool"] == tool


def test_the_drawing_canvas_asks_for_a_digit_before_scoring():
    at = playground({})
    assert not at.exception
    assert any("Draw a digit with the mouse" in c.value for c in at.caption)
    assert any("to see its score" in i.value for i in at.info)


def test_bad_classes_in_the_url_are_ignored_with_a_message(tiny_mnist):
    at = playground({"tool": "compose", "classes": "3,11", "lambda": "500"})
    assert not at.exception
    text = " ".join(w.value for w in at.warning)
    assert "classes=3" in text and "in the URL is not valid" in text
    assert "lambda=500 in the URL is above the maximum" in text
    assert at.session_state["p_classes"] == [] and at.session_state["p_lambda"] == 20.0


def test_excluding_every_digit_says_so():
    at = playground({"tool": "compose", "classes": "3", "not": "3"})
    assert not at.exception
    assert any("no digit is left" in e.value for e in at.error)
