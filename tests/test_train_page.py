"""The Train page on a public server: who may stop a training, what settings cost before Start,
and readouts that say what is happening (AppTest; trainings get random images, no MNIST)."""

import re
import threading
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from ebm import calibration, jobs, runs
from ebm.checkpoint import load_model, model_to_bytes, write_atomically
from ebm.data import DatasetError
from ebm.limits import stage_macs
from ebm.training import TrainConfig

from conftest import isolated_server_state, synthetic_data_loader

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TINY_FORM = {"t_ae_epochs": 1, "t_ae_hidden_dim": 16, "t_ebm_hidden_dim": 8, "t_ebm_layers": 2, "t_ebm_iterations": 30,
             "t_ebm_batch_size": 32, "t_buffer_size": 64, "t_mcmc_steps": 3, "t_negatives_every": 10}
STAGE_1_FORM_MAXIMA = {"t_ae_hidden_dim": 2048, "t_ae_batch_size": 4096}
STAGE_2_FORM_MAXIMA = {"t_ebm_hidden_dim": 1024, "t_ebm_layers": 8, "t_ebm_batch_size": 4096, "t_mcmc_steps": 500}


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    """A fresh server's registry, runs under tmp, random images for training, none left running afterwards."""
    monkeypatch.setattr(jobs, "_jobs", [])
    monkeypatch.setattr(jobs, "default_data_loader", synthetic_data_loader(train_size=256, test_size=64))
    with isolated_server_state(tmp_path, monkeypatch):
        torch.set_num_threads(1)
        yield tmp_path


def open_train_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/train.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def fill(at: AppTest, **values) -> None:
    for key, value in values.items():
        at.number_input(key=key).set_value(value)
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def start(at: AppTest, **overrides) -> jobs.TrainingJob:
    for key, value in {**TINY_FORM, **overrides}.items():
        at.number_input(key=key).set_value(value)
    at.button(key="start_training").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return jobs.latest_job()


def wait_until(predicate, timeout=60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def plain(markdown: str) -> str:
    """Markdown with its backslash escapes resolved: what the reader sees."""
    return re.sub(r"\\(.)", r"\1", markdown)


def metric(at: AppTest, label: str) -> str:
    (value,) = [m.value for m in at.metric if m.label == label]
    return value


def progress_texts(at: AppTest) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def start_button(at: AppTest):
    return at.button(key="start_training")


def test_only_the_visitor_who_started_a_training_can_stop_it():
    owner = open_train_page()
    job = start(owner, t_ebm_iterations=100_000)
    wait_until(lambda: job.snapshot().progress.get("energy", 0) > 0)
    owner.run()
    assert [b.key for b in owner.button if b.key == "stop_training"] == ["stop_training"]
    visitor = open_train_page()
    assert "stop_training" not in [b.key for b in visitor.button]  # read-only: no Stop
    assert "Started by another visitor: you can watch it here, and only they can stop it." in [
        c.value for c in visitor.caption
    ]
    assert {"chart_ae", "chart_cd", "chart_energy", "chart_acc"} <= {c.key for c in visitor.get("plotly_chart")}
    assert len(visitor.get("progress")) == 2 and start_button(visitor).disabled
    with pytest.raises(jobs.NotOwner):
        job.stop(by=visitor.session_state["session_owner"])
    assert job.snapshot().state == "training"  # not stopped by the visitor
    owner.button(key="stop_training").click().run()
    assert job.join(60) and job.snapshot().state == "stopped"


def test_the_forms_maxima_are_refused_with_the_reason_before_anything_starts():
    at = open_train_page()
    fill(at, **STAGE_2_FORM_MAXIMA)
    [error] = [plain(e.value) for e in at.error]
    assert error.startswith(
        "Cannot start: its energy net (8 hidden layers of 1024) costs 14,690,304 multiply-adds per step"
    )
    assert start_button(at).disabled and not any(c.value.startswith("About") for c in at.caption)
    fill(at, t_ebm_hidden_dim=256, t_ebm_layers=4)  # a net the app serves, at 4,096 × 500 steps an iteration
    assert [plain(e.value) for e in at.error] == [
        "Cannot start: one energy-net iteration of 4,096 × 500 Langevin steps costs 817 billion "
        "multiply-adds, above the "
        "cap of 100 billion per iteration (a few seconds): lower the Langevin steps per update to at most 58, "
        "or stage 2's "
        "batch size"
    ]
    at.button_group(key="t_ae_architecture").set_value("mlp")  # the cap below is worked out for the MLP
    fill(at, t_ebm_batch_size=512, t_mcmc_steps=20, **STAGE_1_FORM_MAXIMA)
    [error] = [plain(e.value) for e in at.error]
    assert error.startswith("Cannot start: one autoencoder batch of 4,096 images 2,048 wide costs 143 billion")
    assert start_button(at).disabled and jobs.latest_job() is None  # jobs.start_training refuses them too (test_jobs)


def test_the_cost_of_the_settings_shows_next_to_start(monkeypatch):
    paces = {"autoencoder": 1e10, "energy": 2e10}  # multiply-adds per second, as if measured
    monkeypatch.setattr(calibration, "_paces", lambda mini_fields: paces)
    at = open_train_page()
    stages = stage_macs(TrainConfig())
    assert round(stages["autoencoder"] / 1e10 + stages["energy"] / 2e10) == 767  # seconds
    assert "About 13 min on this server" in [c.value for c in at.caption]
    fill(at, t_ebm_iterations=100)
    assert "About 6 min on this server" in [c.value for c in at.caption]  # stage 1's 331 s, now nearly all of it


def test_settings_too_short_to_give_digits_are_warned_about_before_start():
    at = open_train_page()
    assert not at.warning
    fill(at, t_ae_epochs=0, t_ebm_iterations=30)
    assert [w.value for w in at.warning] == [
        "These settings are too short to give digits: 0 autoencoder epochs leave the decoder untrained, so "
        "every sample "
        "decodes to noise; 30 energy-net iterations are fewer than the 200 it takes the samples to find the digits."
    ]
    fill(at, t_ae_epochs=1, t_ebm_iterations=200)
    assert not at.warning


def test_a_training_without_autoencoder_epochs_shows_stage_1_skipped():
    at = open_train_page()
    job = start(at, t_ae_epochs=0)
    wait_until(lambda: job.snapshot().done)
    at.run()
    assert job.snapshot().state == "finished"
    assert progress_texts(at) == ["Stage 1 · autoencoder: skipped (0 epochs)", "Stage 2 · energy net: 100%"]


def test_the_remaining_time_says_estimating_until_the_pace_is_known(monkeypatch):
    release = threading.Event()
    synthetic = synthetic_data_loader(train_size=256, test_size=64)

    def slow(name, split, threshold):
        release.wait(30)
        return synthetic(name, split, threshold)

    monkeypatch.setattr(jobs, "default_data_loader", slow)
    at = open_train_page()
    job = start(at)
    try:
        assert job.snapshot().state in ("starting", "loading data")
        assert metric(at, "Stage remaining") == "estimating…"
    finally:
        release.set()
    assert job.join(60)
    at.run()
    assert metric(at, "Stage remaining") == "—"


def test_a_failed_training_says_when_it_failed_and_how_long_it_ran(monkeypatch):
    def missing(name, split, threshold):
        raise DatasetError("MNIST is missing and could not be fetched")

    monkeypatch.setattr(jobs, "default_data_loader", missing)
    at = open_train_page()
    job = start(at)
    wait_until(lambda: job.snapshot().done)
    at.run()
    snap = job.snapshot()
    when = time.strftime("%H:%M:%S %Z", time.localtime(snap.ended_at))
    assert any(f"· :material/error: failed at {when}" in m.value for m in at.markdown)
    assert not [m for m in at.metric if m.label == "Elapsed"] and re.fullmatch(r"\d+:\d\d", metric(at, "Ran for"))


def test_saved_runs_say_how_far_a_stopped_run_got(environment):
    model, _ = load_model()
    extra = {"dataset": "mnist", "train_config": {"ae_epochs": 12, "ebm_iterations": 5000}, "stopped_early": True,
             "stages_done": {"autoencoder": 1.0, "energy": 0.31}}
    write_atomically(environment / "runs" / "stopped-run" / runs.WEIGHTS_NAME, model_to_bytes(model, extra))
    at = open_train_page()
    assert any("MNIST · 12 epochs, 1,550 of 5,000 iterations · stopped early" in plain(m.value) for m in at.markdown)
