"""The Streamlit app, page by page, with AppTest and the shipped weights.

No MNIST needed: a tiny synthetic dataset in torchvision's raw layout stands in for it
($EBM_DATA_DIR), and training gets random binary images through the jobs' data loader.
"""

import base64
import gzip
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from ebm import jobs, runs
from ebm.checkpoint import SHIPPED_WEIGHTS, load_model, model_to_bytes, write_atomically
from ebm.data import RAW_FILES, idx_bytes

from conftest import disk_full_under, isolated_server_state, synthetic_data_loader

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 60


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    """Runs under tmp, an empty data dir, one torch thread, no earlier trainings, none left running afterwards."""
    monkeypatch.setattr(jobs, "_jobs", [])  # the server's training registry, as on a fresh server
    monkeypatch.setattr(jobs, "default_data_loader", synthetic_data_loader(train_size=256, test_size=64))
    with isolated_server_state(tmp_path, monkeypatch):
        torch.set_num_threads(1)  # as app.py does (AppTest runs some pages without app.py, see widgets.ensure_router)
        yield tmp_path


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """A 300 + 200 image 'MNIST' of random strokes, in the raw .gz files ebm.data reads."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": (rng.random((300, 28, 28)) < 0.2).astype(np.uint8) * 255,
        "train-labels-idx1-ubyte": rng.integers(0, 10, 300).astype(np.uint8),
        "t10k-images-idx3-ubyte": (rng.random((200, 28, 28)) < 0.2).astype(np.uint8) * 255,
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 200).astype(np.uint8),
    }
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW_FILES:
        (raw / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arrays[name])))
    monkeypatch.setenv("EBM_DATA_DIR", str(tmp_path / "data"))
    return arrays


def open_page(page: str | None = None, query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if query:
        at.query_params.update(query)
    at.run()
    if page is not None:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def image_captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions]


def as_array(value) -> np.ndarray:
    """A plotly JSON array: a plain list, or a typed array {"dtype", "bdata" (base64), "shape"}."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.asarray(value, dtype=float)


def rendered_text(at: AppTest) -> str:
    """Everything the app sent to the browser, main area and sidebar: the protobuf text of every
    element and block (bodies, labels, captions, help texts, expander titles)."""
    parts = []

    def walk(node) -> None:
        if getattr(node, "proto", None) is not None:
            parts.append(str(node.proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(parts)


def save_run_with(runs_dir: Path, name: str, extra: dict | None = None, tensors: dict | None = None) -> Path:
    """A run folder holding the shipped model with other `extra` metadata or other tensors."""
    from safetensors.torch import save as save_tensors

    model, meta = load_model()
    data = model_to_bytes(model, meta if extra is None else extra)
    if tensors is not None:
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        data = save_tensors({**model.state_dict(), **tensors}, metadata=header["__metadata__"])
    return write_atomically(runs_dir / name / runs.WEIGHTS_NAME, data)


def plain(markdown: str) -> str:
    """Markdown text with its backslash escapes resolved: what the reader sees."""
    return re.sub(r"\\(.)", r"\1", markdown)


def unescaped(text: str, chars: str) -> list[str]:
    """The characters of `chars` in Markdown `text` that no backslash escapes."""
    return re.findall(rf"(?<!\\)(?:\\\\)*([{re.escape(chars)}])", text)


def plotly_spec(at: AppTest, key: str) -> dict:
    (chart,) = [c for c in at.get("plotly_chart") if c.key == key]
    return json.loads(chart.proto.spec)


# ---- home ------------------------------------------------------------------------------------
def test_home_explains_and_shows_digits():
    at = open_page()
    assert at.title[0].value.startswith("Digits from an energy landscape")
    latex = " ".join(formula.value for formula in at.latex)
    assert "Z_\\theta" in latex and "\\nabla_\\theta" in latex and "\\varepsilon" in latex and "\\min" in latex
    assert any("16 chains started far from the data" in c for c in image_captions(at))
    (energy,) = at.get("plotly_chart")
    assert "Energy of each chain" in energy.proto.spec
    tries = {(link.proto.page, link.proto.query_string) for link in at.get("page_link")}
    assert {
        ("sample", "sampler=ula&eps=1.2"),
        ("sample", "chains=1&K=3000&every=10"),
        ("explorer", "view=density"),
    } <= tries


@pytest.mark.parametrize("query", ["sampler=ula&eps=1.2", "chains=1&K=3000&every=10"])
def test_home_try_this_links_open_the_sample_page_with_their_settings(query):
    at = open_page("pages/sample.py", dict(pair.split("=") for pair in query.split("&")))
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    assert all(at.query_params[k] == v for k, v in (pair.split("=") for pair in query.split("&")))


# ---- sample ----------------------------------------------------------------------------------
def test_sample_page_more_chains_more_images():
    at = open_page("pages/sample.py")
    assert any(c.startswith("64 samples after step 500") for c in image_captions(at))
    urls = {i.caption.split(" after")[0]: i.url for img in at.image for i in img.proto.imgs}
    assert urls["64 samples"].endswith(".png") and urls["64 chains over 500 steps (51 frames)"].endswith(".gif"), urls
    assert at.query_params["chains"] == "64" and at.query_params["sampler"] == "mala"
    assert any("MALA acceptance" in m.label for m in at.metric)
    at.slider(key="s_chains").set_value(100).run()
    assert not at.exception
    assert any(c.startswith("100 samples") for c in image_captions(at))
    assert any(c.startswith("the first 64 chains") for c in image_captions(at))  # the animation is capped
    assert at.query_params["chains"] == "100"
    traces = plotly_spec(at, "energy_traces")
    assert "mean of 100 chains" in json.dumps(traces)


def test_sample_page_ula_and_resample():
    at = open_page("pages/sample.py")
    at.segmented_control(key="s_sampler").set_value("ula").run()
    assert not at.exception and at.query_params["sampler"] == "ula"
    assert any(m.value == "100%" for m in at.metric)
    seed = at.number_input(key="s_seed").value
    [resample] = [b for b in at.button if b.label == "Resample"]
    resample.click().run()
    assert not at.exception and at.number_input(key="s_seed").value != seed
    assert at.query_params["seed"] == str(at.number_input(key="s_seed").value)


def test_sample_page_shows_a_samplers_own_parameters_only_while_it_is_chosen():
    at = open_page("pages/sample.py", {"sampler": "hmc", "leapfrog_steps": "3", "eps": "0.3", "K": "20", "chains": "4"})
    assert not at.exception and at.slider(key="s_leapfrog_steps").value == 3
    assert at.query_params["leapfrog_steps"] == "3" and any("HMC acceptance" in m.label for m in at.metric)
    at.segmented_control(key="s_sampler").set_value("mala").run()
    assert not at.exception and "leapfrog_steps" not in at.query_params
    assert not [s for s in at.slider if s.key == "s_leapfrog_steps"]


def test_sample_settings_come_from_the_url_and_bad_values_are_handled():
    at = open_page("pages/sample.py", {"chains": "9", "K": "40", "eps": "0.3", "sampler": "ula", "seed": "7"})
    assert at.slider(key="s_chains").value == 9 and at.slider(key="s_steps").value == 40
    assert any(c.startswith("9 samples after step 40") for c in image_captions(at))
    assert not at.warning
    at = open_page("pages/sample.py", {"chains": "100000", "K": "abc", "eps": "nan", "sampler": "nuts", "seed": "-3"})
    text = plain(at.warning[0].value)
    assert "chains=100000 in the URL is above the maximum" in text and "K=abc" in text and "sampler=nuts" in text
    assert "eps=nan" in text and "seed=-3" in text
    assert at.slider(key="s_chains").value == 1024 and at.slider(key="s_steps").value == 500
    assert at.number_input(key="s_seed").value == 0
    at.slider(key="s_chains").set_value(8).run()  # once the user changes a setting, the note goes
    assert not at.exception and not at.warning and at.query_params["chains"] == "8"


def test_one_chain_one_step_reads_in_the_singular():
    at = open_page("pages/sample.py", {"chains": "1", "K": "1", "every": "1"})
    assert set(image_captions(at)) == {"1 chain over 1 step (2 frames)", "1 sample after step 1"}
    assert {t.get("name") for t in plotly_spec(at, "energy_traces")["data"]} >= {"mean of 1 chain"}


def test_sample_page_refuses_oversized_requests_clearly():
    at = open_page("pages/sample.py", {"chains": "1024", "K": "5000"})
    assert any("too large" in w.value and "K ≤ 1,953" in w.value for w in at.warning)
    assert not at.image and not at.get("progress")


def test_sample_from_data_codes_falls_back_without_data():
    at = open_page("pages/sample.py", {"start": "data", "chains": "4", "K": "20"})
    assert any("needs the MNIST train set, which is not on this server yet" in i.value for i in at.info)
    assert any("Starting from noise instead" in i.value for i in at.info)
    assert at.query_params["start"] == "noise" and at.session_state["s_start"] == "noise"  # the URL says what ran
    assert any(c.startswith("4 samples") for c in image_captions(at))


def test_sample_from_data_codes(tiny_mnist):
    at = open_page("pages/sample.py", {"start": "data", "chains": "4", "K": "20"})
    assert not at.info and any(c.startswith("4 samples") for c in image_captions(at))


# ---- model picker ----------------------------------------------------------------------------
def test_a_bad_upload_keeps_the_previous_model():
    at = open_page("pages/sample.py")
    at.file_uploader(key="model_upload").upload("broken.safetensors", b"definitely not weights").run()
    assert not at.exception
    assert any("cannot be used" in e.value and "broken.safetensors" in plain(e.value) for e in at.sidebar.error)
    assert at.selectbox(key="model_choice").value == "shipped"
    assert any(c.startswith("64 samples") for c in image_captions(at))


def test_a_good_upload_is_selected():
    at = open_page("pages/sample.py")
    at.file_uploader(key="model_upload").upload("mine.safetensors", SHIPPED_WEIGHTS.read_bytes()).run()
    assert not at.exception and not at.sidebar.error
    assert at.selectbox(key="model_choice").value.startswith("upload:")
    assert "model" not in at.query_params  # an upload cannot be shared by link
    assert any(c.startswith("64 samples") for c in image_captions(at))


def test_a_session_keeps_its_last_three_uploads():
    shipped, meta = load_model(SHIPPED_WEIGHTS)
    at = open_page("pages/sample.py", {"K": "5", "chains": "4"})
    for n in range(4):  # four distinct valid files
        at.file_uploader(key="model_upload").upload(
            f"m{n}.safetensors", model_to_bytes(shipped, {**meta, "copy": n})
        ).run()
        assert not at.exception and not at.sidebar.error
    options = at.selectbox(key="model_choice").options
    assert [o for o in options if o.startswith("Uploaded")] == [f"Uploaded: m{n}.safetensors" for n in (1, 2, 3)]
    assert at.selectbox(key="model_choice").value == at.session_state["model_choice"]
    assert len(at.session_state["uploads"]) == 3


def test_an_upload_too_large_for_the_app_is_refused_and_a_costly_one_gets_smaller_requests():
    from ebm.models import Autoencoder, AutoencoderConfig, EnergyConfig, EnergyNet, LatentEBM

    def model_bytes(energy: EnergyConfig) -> bytes:
        torch.manual_seed(0)
        model = LatentEBM(Autoencoder(AutoencoderConfig(64, 4)), EnergyNet(energy), torch.zeros(4), torch.ones(4))
        return model_to_bytes(model, {"dataset": "mnist", "threshold": 0.5})

    at = open_page("pages/sample.py", {"chains": "1024", "K": "1950"})
    at.file_uploader(key="model_upload").upload("wide.safetensors", model_bytes(EnergyConfig(4, 1024, 2))).run()
    assert not at.exception
    assert any(
        "wide.safetensors is too large for this app" in plain(e.value) and "56x the shipped net" in plain(e.value)
        for e in at.sidebar.error
    )
    assert at.selectbox(key="model_choice").value == "shipped"
    at.file_uploader(key="model_upload").upload("costly.safetensors", model_bytes(EnergyConfig(4, 256, 4))).run()
    assert not at.exception and not at.sidebar.error
    assert at.selectbox(key="model_choice").value.startswith("upload:")
    assert any("10.5x the shipped one per step" in w.value for w in at.warning)  # 1024 × 1950 fit only the shipped net
    assert not image_captions(at)


def test_weights_of_finite_garbage_are_flagged_in_the_picker():
    shipped, meta = load_model(SHIPPED_WEIGHTS)
    gen = torch.Generator().manual_seed(0)
    garbage = {
        k: v if k == "code_std" else 50 * torch.randn(v.shape, generator=gen) for k, v in shipped.state_dict().items()
    }
    shipped.load_state_dict(garbage)
    at = open_page("pages/sample.py", {"K": "5", "chains": "4"})
    assert not at.sidebar.warning  # the shipped model is fine
    at.file_uploader(key="model_upload").upload("noise.safetensors", model_to_bytes(shipped, meta)).run()
    assert not at.exception and at.selectbox(key="model_choice").value.startswith("upload:")
    assert [w.value for w in at.sidebar.warning] == [
        "This model loads, but its chains barely move at the default settings (MALA acceptance 0.0%), "
        "so its samples stay where they started: try another."]


def test_a_stopped_run_is_listed_with_what_it_trained(environment):
    config = {"ae_epochs": 12, "ebm_iterations": 5000}
    save_run_with(
        environment / "runs",
        "stopped-run",
        {
            "dataset": "mnist",
            "train_config": config,
            "stopped_early": True,
            "stages_done": {"autoencoder": 1.0, "energy": 0.31},
        },
    )
    save_run_with(
        environment / "runs",
        "whole-run",
        {
            "dataset": "mnist",
            "train_config": {"ae_epochs": 1, "ebm_iterations": 10},
            "stages_done": {"autoencoder": 1.0, "energy": 1.0},
        },
    )
    at = open_page("pages/sample.py", {"model": "stopped-run", "K": "5", "chains": "4"})
    assert [c.value for c in at.sidebar.caption][0] == "MNIST · 12 epochs, 1,550 of 5,000 iterations · stopped early"
    at = open_page("pages/sample.py", {"model": "whole-run", "K": "5", "chains": "4"})
    assert [c.value for c in at.sidebar.caption][0] == "MNIST · 1 epoch, 10 iterations"


def test_unknown_model_in_the_url_falls_back_to_shipped():
    at = open_page("pages/sample.py", {"model": "no-such-run"})
    assert [plain(w.value) for w in at.sidebar.warning] == [
        "The model no-such-run from the link was not found; using the shipped model"
    ]
    assert at.selectbox(key="model_choice").value == "shipped"


def test_the_shipped_fashion_mnist_model_is_in_the_picker_and_its_link_opens_it():
    at = open_page("pages/sample.py")
    assert at.selectbox(key="model_choice").options[:2] == ["Shipped (MNIST, 4-D)", "Shipped (Fashion-MNIST, 4-D)"]
    at = open_page("pages/sample.py", {"model": "shipped-fashion-mnist", "chains": "4", "K": "5"})
    assert not at.exception and not at.sidebar.warning
    assert at.selectbox(key="model_choice").value == "shipped-fashion-mnist"
    assert at.query_params["model"] == "shipped-fashion-mnist" and at.image


def test_the_playground_asks_for_a_digit_model_when_given_fashion_mnist():
    at = open_page("pages/playground.py", {"model": "shipped-fashion-mnist"})
    assert not at.exception and not at.get("canvas")
    assert [plain(i.value) for i in at.info] == [
        "The Playground is made for digits, and this model was trained on Fashion-MNIST: pick an MNIST model in "
        "the sidebar."]


EVIL = ("x` **Session expired.** [Log in again](https://evil.example/login) ![t](https://evil.example/p.png) `"
        + "A" * 100_000)


def test_url_values_are_shown_cut_and_escaped():
    at = open_page("pages/sample.py", {"model": EVIL, "sampler": EVIL, "chains": "9" * 100_000,
                                       "start": "http://x.example www.x.example me@x.example"})
    (model_warning,) = at.sidebar.warning
    (settings_warning,) = at.main.warning
    for body in (model_warning.value, settings_warning.value):
        assert len(body) < 400 and "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" not in body
        assert "](" not in body and "**" not in body and "x`" not in body
        assert unescaped(body, "[]()!`*_<") == [], body
        # Streamlit links addresses even in escaped text: a word joiner must break each one
        assert not re.search(r"(?i)(https?|www)\\?[:.]|[\w.+-]\\?@", body), body
    assert "start=http\u2060\\:\\/\\/x\\.example www\u2060\\.x\\.example me\u2060\\@x\\.exa…" in settings_warning.value
    assert model_warning.value.startswith("The model x\\` \\*\\*Session expired\\.\\*\\* \\[Log in")
    assert "…" in model_warning.value and "not found; using the shipped model" in model_warning.value
    assert "sampler=x\\` \\*\\*Session" in settings_warning.value and "chains=999" in settings_warning.value


def test_a_run_with_a_nan_tensor_is_refused_by_name(environment):
    save_run_with(environment / "runs", "nan-run", tensors={"energy.out.bias": torch.full((1,), float("nan"))})
    at = open_page("pages/sample.py", {"model": "nan-run"})
    assert [plain(e.value) for e in at.sidebar.error] == [
        "Could not load Run nan-run: nan-run: tensor 'energy.out.bias' contains NaN or infinity. Using the "
        "shipped model."
    ]
    assert any(c.startswith("64 samples") for c in image_captions(at))  # from the shipped model
    assert str(environment) not in rendered_text(at)


@pytest.mark.parametrize(
    "extra,problem",
    [
        (
            {"dataset": "../../etc/passwd", "threshold": 0.5},
            "unknown dataset '../../etc/passwd'; choose one of mnist, fashion-mnist",
        ),
        ({"dataset": "mnist", "threshold": 7}, "threshold must be in (0, 1), got 7"),
    ],
)
@pytest.mark.parametrize(
    "page,query",
    [("pages/explorer.py", {}), ("pages/sample.py", {"start": "data", "chains": "4", "K": "20"})],
    ids=["explorer", "sample-from-data"],
)
def test_a_run_with_bad_metadata_shows_a_message_not_an_exception(environment, tiny_mnist, extra, problem, page, query):
    save_run_with(environment / "runs", "bad-run", extra)
    at = open_page(page, {"model": "bad-run", **query})  # open_page fails on any exception
    assert [plain(e.value) for e in at.sidebar.error] == [
        f"Could not load Run bad-run: bad-run: metadata field 'extra' is invalid: {problem}. Using the shipped model."]
    assert at.image and "model" not in at.query_params  # the shipped model's page
    assert str(environment) not in rendered_text(at)


# ---- explorer --------------------------------------------------------------------------------
def test_explorer_without_test_data():
    at = open_page("pages/explorer.py")
    assert any("needs the MNIST test set, which is not on this server yet" in i.value for i in at.info)
    spec = plotly_spec(at, "slice_0-1")
    assert {t.get("name") for t in spec["data"]} >= {"slice", "contours", "click"}
    assert not any(t.get("name") == "0" for t in spec["data"])  # no test-code scatter
    assert any("sample #0" in c for c in image_captions(at))  # interpolation between sampled digits
    assert "log Z" in " ".join(c.value for c in at.caption)


def test_explorer_pair_change_changes_the_figure(tiny_mnist):
    at = open_page("pages/explorer.py")
    assert not at.info
    first = plotly_spec(at, "slice_0-1")
    assert {"0", "chain paths (○ start, × end)"} <= {t.get("name") for t in first["data"]}
    assert [s.key for s in at.slider if s.key.startswith("x_fix")] == ["x_fix2", "x_fix3"]
    at.selectbox(key="x_pair").set_value("2-3").run()
    assert not at.exception
    second = plotly_spec(at, "slice_2-3")
    assert not np.allclose(as_array(second["data"][0]["z"]), as_array(first["data"][0]["z"]))
    assert second["layout"]["xaxis"]["title"]["text"] == "z2"
    assert [s.key for s in at.slider if s.key.startswith("x_fix")] == ["x_fix0", "x_fix1"]
    assert at.query_params["pair"] == "2-3"
    at.slider(key="x_fix0").set_value(1.0).run()
    third = plotly_spec(at, "slice_2-3")
    assert not np.allclose(as_array(third["data"][0]["z"]), as_array(second["data"][0]["z"]))
    at.segmented_control(key="x_view").set_value("density").run()
    density = as_array(plotly_spec(at, "slice_2-3")["data"][0]["z"])
    assert density.shape == (101, 101) and density.min() >= 0
    assert density.sum() * (8 / 100) ** 2 == pytest.approx(1.0, rel=1e-4)  # normalized on the slice


def test_explorer_interpolates_between_test_digits(tiny_mnist):
    at = open_page("pages/explorer.py")
    at.number_input(key="x_from").set_value(5).run()
    at.number_input(key="x_to").set_value(17).run()
    caption = next(c for c in image_captions(at) if "Straight line" in c)
    labels = tiny_mnist["t10k-labels-idx1-ubyte"]
    assert f"test #5 (label {labels[5]}) → test #17 (label {labels[17]})" in caption
    profile = plotly_spec(at, "interp_energy")["data"][0]
    assert len(as_array(profile["y"])) == 12


def test_explorer_follows_a_model_with_another_latent_dimension():
    from ebm.checkpoint import model_to_bytes
    from ebm.training import TrainConfig, build_model

    three_d = model_to_bytes(build_model(TrainConfig(latent_dim=3, ae_hidden_dim=16, ebm_hidden_dim=8)))
    at = open_page("pages/explorer.py")
    at.selectbox(key="x_pair").set_value("2-3").run()
    at.file_uploader(key="model_upload").upload("three.safetensors", three_d).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="model_choice").value.startswith("upload:")
    assert at.selectbox(key="x_pair").options == ["z0 × z1", "z0 × z2", "z1 × z2"]
    assert at.selectbox(key="x_pair").value == "0-1"
    assert "3-D space" in at.caption[0].value
    assert any("32^3 grid" in c.value for c in at.caption)


def test_explorer_bad_url_values():
    at = open_page("pages/explorer.py", {"pair": "0-0", "z2": "99", "view": "??"})
    text = plain(at.warning[0].value)
    assert "pair=0-0" in text and "z2=99" in text and "view=??" in text
    assert at.slider(key="x_fix2").value == 3.0


# ---- train -----------------------------------------------------------------------------------
TINY_FORM = {"t_ae_epochs": 1, "t_ae_hidden_dim": 16, "t_ebm_hidden_dim": 8, "t_ebm_layers": 2, "t_ebm_iterations": 30,
             "t_ebm_batch_size": 32, "t_buffer_size": 64, "t_mcmc_steps": 3, "t_negatives_every": 10}


def fill_and_start(at: AppTest, **overrides) -> None:
    for key, value in {**TINY_FORM, **overrides}.items():
        at.number_input(key=key).set_value(value)
    [start] = [b for b in at.button if b.label == "Start training"]
    start.click().run()
    assert not at.exception, [e.value for e in at.exception]


def wait_until(predicate, timeout=60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_train_end_to_end(environment):
    at = open_page("pages/train.py")
    assert any("No training yet" in c.value for c in at.caption)
    fill_and_start(at)
    job = jobs.latest_job()
    assert job is not None and job.owner == at.session_state["session_owner"]
    assert job.cfg.ebm_iterations == 30 and job.cfg.negatives_every == 10
    wait_until(lambda: job.snapshot().done)
    at.run()
    assert not at.exception
    snap = job.snapshot()
    assert snap.state == "finished", snap.error
    assert any("Saved as run" in s.value and snap.run_path.parent.name in plain(s.value) for s in at.success)
    assert {"chart_ae", "chart_cd", "chart_energy", "chart_acc"} <= {c.key for c in at.get("plotly_chart")}
    assert [p.value for p in at.get("progress")] == [100, 100]
    assert any(c.startswith("iteration 30") for c in image_captions(at))  # decoded negatives
    assert snap.run_path.parent.parent == environment / "runs"
    assert any(b.label == "Download weights" for b in at.get("download_button"))
    # the new run can be picked on the other pages
    run_name = snap.run_path.parent.name
    at.switch_page("pages/sample.py")
    at.run()
    at.selectbox(key="model_choice").set_value(run_name).run()
    assert not at.exception and at.query_params["model"] == run_name
    assert any(c.startswith("64 samples") for c in image_captions(at))
    at.switch_page("pages/explorer.py")
    at.run()
    assert not at.exception and at.selectbox(key="model_choice").value == run_name


def test_train_stop_and_other_sessions(environment):
    at = open_page("pages/train.py")
    fill_and_start(at, t_ebm_iterations=100_000)
    job = jobs.latest_job()
    wait_until(lambda: job.snapshot().progress.get("energy", 0) > 0)
    at.run()
    assert any(m.label == "Elapsed" for m in at.metric)
    # another session sees the running training and cannot start a second one
    other = open_page("pages/train.py")
    assert any("already running" in i.value for i in other.info)
    [start] = [b for b in other.button if b.label == "Start training"]
    assert start.disabled
    # stop from the page: the worker stops between steps and saves what it trained
    at.button(key="stop_training").click().run()
    assert job.join(60)
    at.run()
    snap = job.snapshot()
    assert snap.state == "stopped" and snap.run_path is not None
    assert any("Saved as run" in s.value for s in at.success)
    assert [r.path for r in runs.list_runs(environment / "runs")] == [snap.run_path]
    assert runs.list_runs(environment / "runs")[0].extra["stopped_early"] is True
    # ... and a new training can start again
    other.run()
    [start] = [b for b in other.button if b.label == "Start training"]
    assert not start.disabled


def test_train_reports_dataset_errors(monkeypatch):
    from ebm.data import DatasetError

    def missing(name, split, threshold):
        raise DatasetError(f"{name} is missing and could not be fetched")

    monkeypatch.setattr(jobs, "default_data_loader", missing)
    at = open_page("pages/train.py")
    fill_and_start(at)
    wait_until(lambda: jobs.latest_job().snapshot().done)
    at.run()
    assert any("Dataset problem" in e.value and "mnist is missing" in e.value for e in at.error)


def test_train_refuses_to_start_on_a_read_only_runs_dir(read_only_dir, monkeypatch):
    monkeypatch.setenv("EBM_RUNS_DIR", str(read_only_dir / "runs"))
    at = open_page("pages/train.py")
    fill_and_start(at)
    assert jobs.latest_job() is None  # refused before any work
    (error,) = at.error
    assert re.fullmatch(
        r"Cannot start: the runs folder is not writable \(.+\), so the trained model could not be saved; "
        r"set the server's `EBM_RUNS_DIR` to a writable folder with free space\.",
        plain(error.value),
    )
    assert str(read_only_dir) not in rendered_text(at)


def test_train_on_a_full_disk_fails_and_offers_the_model_for_download(environment, monkeypatch):
    disk_full_under(monkeypatch, environment / "runs")
    at = open_page("pages/train.py")
    fill_and_start(at)
    job = jobs.latest_job()
    wait_until(lambda: job.snapshot().done)
    at.run()
    assert not at.exception and job.snapshot().state == "failed"
    assert [plain(e.value) for e in at.error] == [
        "Could not save the run: the runs folder could not be written (No space "
        "left on device), so the trained model is kept in memory only."
    ]
    assert [b.proto.label for b in at.get("download_button")] == ["Download the trained model"]
    assert runs.list_runs() == [] and not at.success and "Saved runs (0)" in rendered_text(at)
    assert str(environment) not in rendered_text(at)


def test_the_train_page_names_runs_never_server_paths(environment):
    at = open_page("pages/train.py")
    fill_and_start(at)
    job = jobs.latest_job()
    wait_until(lambda: job.snapshot().done)
    at.run()
    name = job.snapshot().run_path.parent.name
    assert [plain(s.value) for s in at.success] == [f"Saved as run **{name}**. Pick it in the "
                                                    "sidebar's Model menu on the Sample and Explorer pages."]
    text = rendered_text(at)
    assert "Saved runs (1)" in text and str(environment) not in text
