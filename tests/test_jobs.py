"""Tests for ebm.jobs (the background training worker) and ebm.runs (saved runs).

No MNIST: the worker gets random binary 784-d images through its `data_loader` parameter.
"""

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from ebm import jobs, runs, training
from ebm.checkpoint import SHIPPED_WEIGHTS, load_model, model_from_bytes, model_to_bytes, save_model
from ebm.data import DatasetError
from ebm.limits import ModelTooLarge, TrainingTooCostly
from ebm.training import DivergenceError, TrainConfig, build_model, train

from conftest import disk_full_under, full_disk, running_job, synthetic_data_loader

TINY = dict(ae_architecture="mlp", ae_epochs=1, ae_hidden_dim=16, ae_batch_size=64, ebm_hidden_dim=8, ebm_layers=2,
            ebm_iterations=30, ebm_batch_size=32, buffer_size=64, mcmc_steps=3, negatives_every=10,
            ebm_likelihood_iterations=10)


def tiny(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, **overrides})


@pytest.fixture(autouse=True)
def one_thread_and_no_leftover_job():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    job = running_job()
    if job is not None:  # never leave a worker running into the next test
        job.stop(by=job.owner)
        job.join(60)
    torch.set_num_threads(before)


def wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_training_runs_in_the_background_and_saves_a_run(tmp_path):
    job = jobs.start_training(tiny(), tmp_path, data_loader=synthetic_data_loader(), owner="me")
    assert jobs.get_job(job.id) is job and jobs.latest_job() is job
    assert job.join(60)
    snap = job.snapshot()
    assert snap.state == "finished" and snap.error is None and snap.done and not snap.active
    assert snap.owner == "me" and snap.config["ebm_iterations"] == 30
    # events of both stages, in order, with their losses
    stages = [e["stage"] for e in snap.events]
    assert stages[0] == "autoencoder" and stages[-1] == "energy" and stages == sorted(stages)
    assert snap.progress == {"autoencoder": 1.0, "energy": 1.0}
    assert any("test_bce" in e["losses"] for e in snap.series("autoencoder"))
    energy = snap.series("energy")  # 20 chain iterations, then 10 likelihood iterations
    assert {"cd_loss", "energy_data", "energy_negatives", "acceptance"} <= set(energy[1]["losses"])
    assert {"cd_loss", "energy_data", "energy_negatives", "proposal_ess"} <= set(energy[-1]["losses"])
    assert snap.negatives is not None and snap.negatives.shape == (16, 784) and snap.negatives_step == 30
    # the saved run: a new folder under the runs dir, loadable, listed, with its history
    assert snap.run_path.parent.parent == tmp_path and snap.run_path.name == runs.WEIGHTS_NAME
    model, extra = load_model(snap.run_path)
    assert extra["stopped_early"] is False and extra["train_config"]["ebm_hidden_dim"] == 8
    assert model.autoencoder.config.hidden_dim == 16
    listed = runs.list_runs(tmp_path)
    assert [r.path for r in listed] == [snap.run_path]
    history = json.loads((snap.run_path.parent / runs.HISTORY_NAME).read_text())
    assert len(history["events"]) == len(snap.events) and history["stopped_early"] is False


def loader_waiting_for(release: threading.Event):
    """A data loader that blocks until `release` is set (at most 30 s), to hold a job in 'loading data'."""
    synthetic = synthetic_data_loader()

    def slow_loader(name, split, threshold):
        release.wait(30)
        return synthetic(name, split, threshold)

    return slow_loader


def test_a_second_training_is_refused_while_one_runs(tmp_path):
    release = threading.Event()
    slow_loader = loader_waiting_for(release)
    job = jobs.start_training(tiny(), tmp_path, data_loader=slow_loader)
    try:
        assert job.snapshot().state in ("starting", "loading data")
        assert running_job() is job
        with pytest.raises(jobs.JobAlreadyRunning, match="already running"):
            jobs.start_training(tiny(), tmp_path, data_loader=synthetic_data_loader())
    finally:
        release.set()
    assert job.join(60) and job.snapshot().state == "finished"
    second = jobs.start_training(tiny(), tmp_path, data_loader=synthetic_data_loader())  # free again
    assert second.join(60) and len(runs.list_runs(tmp_path)) == 2


def test_stop_saves_what_was_trained(tmp_path):
    job = jobs.start_training(tiny(ebm_iterations=100_000), tmp_path, data_loader=synthetic_data_loader())
    assert wait_for(lambda: job.snapshot().progress.get("energy", 0) > 0)
    job.stop(by=job.owner)
    assert job.snapshot().state in ("stopping", "saving", "stopped")  # asked, and never undone
    assert job.join(60)
    snap = job.snapshot()
    assert snap.state == "stopped" and snap.error is None and snap.run_path is not None
    done = snap.series("energy")[-1]["step"]
    assert 0 < done < 100_000
    _, extra = load_model(snap.run_path)
    assert extra["stopped_early"] is True and 0 < extra["stages_done"]["energy"] < 1
    assert runs.list_runs(tmp_path)[0].label.endswith("(stopped early)")
    frozen = snap.elapsed
    time.sleep(0.05)
    assert job.snapshot().elapsed == frozen  # the clock stops when the job ends


def test_stop_during_the_autoencoder_still_gives_a_usable_model(tmp_path):
    job = jobs.start_training(tiny(ae_epochs=500), tmp_path, data_loader=synthetic_data_loader(train_size=512))
    assert wait_for(lambda: len(job.snapshot().events) > 0)
    job.stop(by=job.owner)
    assert job.join(60)
    snap = job.snapshot()
    assert snap.state == "stopped" and "energy" not in snap.progress
    model, extra = load_model(snap.run_path)
    # the code statistics were fitted even though stage 2 never ran
    assert not torch.allclose(model.code_std, torch.ones(4))
    assert extra["stages_done"]["energy"] == 0


def test_stop_while_loading_data_saves_nothing(tmp_path):
    release = threading.Event()
    slow_loader = loader_waiting_for(release)
    job = jobs.start_training(tiny(), tmp_path, data_loader=slow_loader)
    job.stop(by=job.owner)
    assert job.snapshot().state == "stopping"
    release.set()
    assert job.join(60)
    snap = job.snapshot()
    assert snap.state == "stopped" and snap.run_path is None and runs.list_runs(tmp_path) == []


def test_dataset_errors_are_recorded(tmp_path):
    def missing(name, split, threshold):
        raise DatasetError("MNIST is missing and could not be fetched")

    job = jobs.start_training(tiny(), tmp_path, data_loader=missing)
    assert job.join(30)
    snap = job.snapshot()
    assert snap.state == "failed" and "Dataset problem" in snap.error and "MNIST is missing" in snap.error
    assert snap.run_path is None and running_job() is None


def test_divergence_is_recorded(tmp_path, monkeypatch):
    def diverging(model, train_x, test_x, cfg, should_stop):
        yield from ()
        raise DivergenceError("energy training diverged 6 times; last loss nan")

    monkeypatch.setattr(jobs, "train", diverging)
    job = jobs.start_training(tiny(), tmp_path, data_loader=synthetic_data_loader())
    assert job.join(30)
    snap = job.snapshot()
    assert snap.state == "failed" and "diverged" in snap.error and "smaller learning rate" in snap.error
    assert runs.list_runs(tmp_path) == []


def test_unexpected_errors_are_recorded_not_raised(tmp_path):
    def broken(name, split, threshold):
        return torch.zeros(10, 3), torch.zeros(10)  # wrong image size

    job = jobs.start_training(tiny(), tmp_path, data_loader=broken)
    assert job.join(30)
    snap = job.snapshot()
    assert snap.state == "failed" and snap.error


def test_invalid_requests_are_refused_before_starting(tmp_path):
    with pytest.raises(ValueError):
        jobs.start_training(tiny(ae_lr=-1.0), tmp_path, data_loader=synthetic_data_loader())
    with pytest.raises(ValueError, match="shipped weights"):
        jobs.start_training(tiny(), SHIPPED_WEIGHTS.parent, data_loader=synthetic_data_loader())
    with pytest.raises(ValueError, match="shipped weights"):
        jobs.start_training(tiny(), SHIPPED_WEIGHTS.parent / "sub", data_loader=synthetic_data_loader())
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            jobs.start_training(tiny(device="cuda"), tmp_path, data_loader=synthetic_data_loader())
    assert running_job() is None


def test_remaining_time_is_estimated_while_running(tmp_path):
    job = jobs.start_training(tiny(ebm_iterations=100_000), tmp_path, data_loader=synthetic_data_loader())
    assert wait_for(lambda: job.snapshot().stage == "energy")
    assert job.snapshot().stage_remaining is None  # estimating: one event is no pace
    assert wait_for(lambda: job.snapshot().stage_remaining is not None)
    snap = job.snapshot()
    assert snap.active and snap.stage == "energy" and snap.stage_remaining > 0
    job.stop(by=job.owner)
    assert job.join(60) and job.snapshot().stage_remaining is None


def event(step: int, time_s: float, total: int = 1000) -> dict:
    return {"step": step, "total_steps": total, "time": time_s}


def test_the_remaining_time_waits_for_a_measured_pace_and_ignores_the_stage_start():
    first = event(10, 60.0)  # a minute of loading and code statistics before the stage's first event
    assert jobs.remaining_seconds(first, first, 61.0) is None
    assert jobs.remaining_seconds(first, event(20, 62.0), 62.0) is None  # 1% in 2 s: still estimating
    assert jobs.remaining_seconds(first, event(30, 64.0), 64.0) == pytest.approx(0.2 * 970)  # 2%: 0.2 s per step
    assert jobs.remaining_seconds(first, event(30, 64.0), 65.0) == pytest.approx(0.2 * 970 - 1)  # counts down
    assert jobs.remaining_seconds(first, event(12, 90.0), 90.0) == pytest.approx(15 * 988)  # 30 s: a slow stage
    assert jobs.remaining_seconds(first, event(1000, 99.0), 99.0) is None  # done


def test_only_the_session_that_started_a_training_can_stop_it(tmp_path):
    release = threading.Event()
    job = jobs.start_training(tiny(), tmp_path, data_loader=loader_waiting_for(release), owner="alice")
    try:
        for someone_else in ("mallory", None, ""):
            with pytest.raises(jobs.NotOwner, match="only the visitor who started this training can stop it"):
                job.stop(by=someone_else)
        assert job.snapshot().state in ("starting", "loading data")
        job.stop(by="alice")
        assert job.snapshot().state == "stopping"
    finally:
        release.set()
    assert job.join(60) and job.snapshot().state == "stopped"


def test_a_stop_with_huge_settings_is_honoured_within_an_iteration(tmp_path, monkeypatch):
    """Within the caps, 500 Langevin steps an update: the stop ends the iteration under way.

    The worker holds at the end of its third block of steps until Stop is pressed, so the press
    lands mid-iteration however slowly a busy machine schedules this test's thread.
    """
    blocks, pressed = [], threading.Event()
    real_run_chains = training.run_chains

    def counting_run_chains(*args, callback, **kwargs):
        def counting(done):
            blocks.append(done)
            if len(blocks) == 3:
                pressed.wait(60)
            return callback(done)
        return real_run_chains(*args, callback=counting, **kwargs)

    monkeypatch.setattr(training, "run_chains", counting_run_chains)
    job = jobs.start_training(tiny(ae_epochs=0, ebm_iterations=1000, mcmc_steps=500), tmp_path,
                              data_loader=synthetic_data_loader(), owner="alice")
    assert wait_for(lambda: len(blocks) >= 3)
    job.stop(by="alice")
    pressed.set()
    assert job.join(60)
    snap = job.snapshot()
    assert snap.state == "stopped" and snap.events[-1]["losses"] == {}  # the last event says where it stopped
    assert blocks[-1] < 500  # the stopped iteration never reached its 500th step
    assert snap.progress["energy"] == snap.events[-1]["step"] / 1000 < 1


def test_trainings_above_the_apps_budgets_are_refused_before_starting(tmp_path):
    before = jobs.latest_job()
    form_maxima = tiny(ebm_hidden_dim=1024, ebm_layers=8, ebm_batch_size=4096, mcmc_steps=500)
    with pytest.raises(ModelTooLarge, match="8 hidden layers of 1024"):
        jobs.start_training(form_maxima, tmp_path, data_loader=synthetic_data_loader())
    served_net = tiny(ebm_hidden_dim=256, ebm_layers=4, ebm_batch_size=4096, mcmc_steps=500)
    with pytest.raises(TrainingTooCostly, match="lower the Langevin steps per update to at most 58"):
        jobs.start_training(served_net, tmp_path, data_loader=synthetic_data_loader())
    with pytest.raises(TrainingTooCostly, match="lower the iterations to at most"):
        jobs.start_training(TrainConfig(ebm_iterations=100_000, mcmc_steps=40), tmp_path,
                            data_loader=synthetic_data_loader())
    assert jobs.latest_job() is before and runs.list_runs(tmp_path) == []


def test_elapsed_is_real_time_and_a_failed_job_says_when_it_failed(tmp_path):
    release = threading.Event()

    def failing_late(name, split, threshold):
        release.wait(30)
        raise DatasetError("MNIST is missing and could not be fetched")

    job = jobs.start_training(tiny(), tmp_path, data_loader=failing_late)
    time.sleep(0.3)
    snap = job.snapshot()
    assert snap.elapsed >= 0.3 and snap.ended_at is None  # the clock runs while the data loads
    release.set()
    assert job.join(30)
    snap = job.snapshot()
    assert snap.state == "failed" and snap.elapsed >= 0.3
    assert snap.ended_at == pytest.approx(snap.started_at + snap.elapsed)


# ---- stopping inside the training loops ------------------------------------------------------------
def synthetic_split(split: str, train_size: int = 256) -> torch.Tensor:
    return synthetic_data_loader(train_size=train_size)("mnist", split, 0.5)[0]


class StopAfter:
    """A should_stop that says True from its `calls`-th call on, counting every call."""

    def __init__(self, calls: float):
        self.calls, self.count = calls, 0

    def __call__(self) -> bool:
        self.count += 1
        return self.count >= self.calls


def test_a_stop_check_that_never_fires_changes_nothing():
    """Asking should_stop inside the loops draws no random numbers: same seed, same tensors, same events."""
    cfg = tiny(ae_epochs=2, ebm_iterations=40, mcmc_steps=70)  # 70 steps: two blocks per iteration
    plain, checked = build_model(cfg), build_model(cfg)
    plain_events = [
        (e.stage, e.step, e.losses) for e in train(plain, synthetic_split("train"), synthetic_split("test"), cfg)
    ]
    never = StopAfter(float("inf"))
    checked_events = [
        (e.stage, e.step, e.losses)
        for e in train(checked, synthetic_split("train"), synthetic_split("test"), cfg, should_stop=never)
    ]
    assert checked_events == plain_events
    assert never.count >= 2 * 4 + 40 * 2  # asked before every batch and after every block of Langevin steps
    for (name, a), b in zip(plain.state_dict().items(), checked.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_stop_inside_the_langevin_steps_drops_that_iteration():
    cfg = tiny(ae_epochs=0, ebm_iterations=5, mcmc_steps=500, ebm_likelihood_iterations=0)  # 8 blocks of 64 steps each
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.energy.state_dict().items()}
    stop = StopAfter(3)  # asked once between the stages, then after each block: True after the second block
    events = list(train(model, synthetic_split("train"), synthetic_split("test"), cfg, should_stop=stop))
    assert stop.count == 4  # two blocks, then once more to drop the iteration: 128 of its 500 steps ran
    assert [(e.stage, e.step, e.losses) for e in events] == [("energy", 0, {})]  # where it stopped: no iteration done
    assert all(torch.equal(before[k], v) for k, v in model.energy.state_dict().items())  # no half update


def test_a_stop_inside_an_autoencoder_epoch_ends_before_the_next_batch():
    cfg = tiny(ae_epochs=3, ae_batch_size=8)  # 32 batches an epoch
    model = build_model(cfg)
    events = list(train(model, synthetic_split("train"), synthetic_split("test"), cfg, should_stop=StopAfter(11)))
    assert (events[-1].stage, events[-1].step, events[-1].losses) == ("autoencoder", 10, {})
    assert all(e.stage == "autoencoder" for e in events)


# ---- runs -----------------------------------------------------------------------------------------
def test_new_run_dirs_are_unique_and_time_named(tmp_path):
    now = time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))
    a = runs.new_run_dir(tmp_path, "fashion-mnist", now=now)
    b = runs.new_run_dir(tmp_path, "fashion-mnist", now=now)
    assert a.name == "20260102-030405-fashion-mnist" and b.name == "20260102-030405-fashion-mnist-2"
    assert a.is_dir() and b.is_dir()
    assert runs.new_run_dir(tmp_path, "../x y", now=now).parent == tmp_path


def test_runs_never_go_under_the_shipped_weights():
    with pytest.raises(ValueError):
        runs.new_run_dir(SHIPPED_WEIGHTS.parent, "mnist")
    with pytest.raises(ValueError):
        runs.check_runs_dir(SHIPPED_WEIGHTS.parent / "deeper")


def test_default_runs_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EBM_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert runs.default_runs_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("EBM_RUNS_DIR")
    assert runs.default_runs_dir() == Path("runs")


def test_list_runs_reads_headers_and_skips_other_files(tmp_path):
    assert runs.list_runs(tmp_path / "missing") == []
    model = build_model(tiny())
    old = save_model(model, tmp_path / "a" / runs.WEIGHTS_NAME, {"dataset": "mnist"})
    os.utime(old, (time.time() - 100, time.time() - 100))
    new = save_model(model, tmp_path / "b" / runs.WEIGHTS_NAME, {"dataset": "fashion-mnist", "stopped_early": True})
    loose = save_model(model, tmp_path / "loose.safetensors", {})
    assert loose.is_file()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "model.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "a" / ".model.safetensors.123.tmp").write_bytes(b"partial")
    listed = runs.list_runs(tmp_path)
    assert {r.name for r in listed} == {"a", "b", "loose"}
    assert listed[-1].path == old  # newest first
    by_name = {r.name: r for r in listed}
    assert by_name["b"].dataset == "fashion-mnist" and by_name["b"].label == "b (stopped early)"
    assert by_name["a"].size == old.stat().st_size and not (old.parent / runs.HISTORY_NAME).exists()
    assert by_name["b"].path == new
    assert runs.read_extra(tmp_path / "c" / "model.safetensors") is None


def test_history_round_trip(tmp_path):
    run_dir = runs.new_run_dir(tmp_path, "mnist")
    runs.write_history(run_dir, {"events": [{"step": 1}]})
    assert json.loads((run_dir / runs.HISTORY_NAME).read_text()) == {"events": [{"step": 1}]}


# ---- faults: a read-only or full runs directory, a killed save ---------------------------------------
def test_training_is_refused_at_once_on_a_read_only_runs_dir(read_only_dir):
    before = jobs.latest_job()
    for root in (read_only_dir, read_only_dir / "runs"):  # the folder itself, or one to be made in it
        with pytest.raises(runs.RunsDirError, match="is not writable") as info:
            jobs.start_training(tiny(), root, data_loader=synthetic_data_loader())
        assert str(read_only_dir) not in info.value.reason  # the reason is for the browser
    assert jobs.latest_job() is before  # no job was started


def test_training_is_refused_at_once_when_the_disk_is_full(tmp_path, monkeypatch):
    full_disk(monkeypatch)
    before = jobs.latest_job()
    with pytest.raises(runs.RunsDirError, match=r"has 1\.0 MB free on its disk and a run needs about \d+\.\d MB"):
        jobs.start_training(tiny(), tmp_path / "runs", data_loader=synthetic_data_loader())
    assert jobs.latest_job() is before and not (tmp_path / "runs").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(runs.RunsDirError, match=r"is not a folder \(file is a file\)"):
        runs.check_room(tmp_path / "file" / "runs", 1000)


@pytest.mark.parametrize("failing", ["model.safetensors", "history.json"])
def test_a_failed_save_fails_the_job_keeps_the_model_and_lists_no_run(tmp_path, monkeypatch, failing):
    disk_full_under(monkeypatch, tmp_path, failing)
    job = jobs.start_training(tiny(), tmp_path, data_loader=synthetic_data_loader())
    assert job.join(60)
    snap = job.snapshot()
    assert snap.state == "failed" and snap.run_path is None
    assert snap.error == ("Could not save the run: the runs folder could not be written (No space left on device), "
                          "so the trained model is kept in memory only.")
    model, extra = model_from_bytes(snap.unsaved_model)  # the trained weights, whole
    assert extra["train_config"]["ebm_iterations"] == 30 and model.autoencoder.config.hidden_dim == 16
    assert runs.list_runs(tmp_path) == [] and list(tmp_path.iterdir()) == []  # no half-written run either


def test_stale_temp_files_of_killed_saves_are_cleaned_when_listing_or_saving(tmp_path):
    model = build_model(tiny())
    kept = save_model(model, tmp_path / "kept" / runs.WEIGHTS_NAME, {"dataset": "mnist"})
    old = time.time() - runs.STALE_TEMP_SECONDS - 10
    stale = [tmp_path / ".loose.safetensors.a1.tmp", kept.parent / ".history.json.b2.tmp"]
    (tmp_path / "killed").mkdir()  # a save killed while writing its weights, after the history
    (tmp_path / "killed" / runs.HISTORY_NAME).write_text("{}")
    stale.append(tmp_path / "killed" / ".model.safetensors.c3.tmp")
    fresh = kept.parent / ".model.safetensors.d4.tmp"  # a save in progress
    for path in [*stale, fresh]:
        path.write_bytes(b"partial")
    for path in stale:
        os.utime(path, (old, old))
    assert [r.name for r in runs.list_runs(tmp_path)] == ["kept"]
    assert not any(p.exists() for p in stale) and fresh.exists() and kept.exists()
    assert not (tmp_path / "killed").exists()  # nothing of that run is left
    os.utime(fresh, (old, old))
    path = runs.save_run(model_to_bytes(model, {"dataset": "mnist"}), "mnist", {"events": []}, tmp_path)
    assert not fresh.exists() and json.loads((path.parent / runs.HISTORY_NAME).read_text()) == {"events": []}
    assert {r.path for r in runs.list_runs(tmp_path)} == {kept, path}
