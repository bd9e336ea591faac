"""Weights files, the training loop and the CLI, on tiny models and synthetic data."""

import dataclasses
import itertools
import json
import math
import re
import tempfile
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import save as save_tensors

from ebm import checkpoint, cli, training
from ebm.checkpoint import WeightsError, load_model, model_from_bytes, model_to_bytes, save_model
from ebm.cli import main
from ebm.generate import SampleSettings, decode_binary, sample_chains
from ebm.models import Autoencoder, AutoencoderConfig
from ebm.threads import run_together, set_chain_threads
from ebm.training import (
    DivergenceError,
    Progress,
    TrainConfig,
    autoencoder_gradients,
    autoencoder_loss,
    build_model,
    train,
    train_autoencoder,
    train_energy,
)

from conftest import TINY_CONFIG, disk_full_under, full_disk


def test_weights_round_trip_keeps_every_tensor_and_metadata(tiny_model, tmp_path):
    model, cfg = tiny_model
    path = save_model(model, tmp_path / "m.safetensors", {"dataset": "mnist", "threshold": 0.5})
    loaded, extra = load_model(path)
    assert extra == {"dataset": "mnist", "threshold": 0.5}
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind


def test_shipped_weights_load_and_are_protected(tiny_model):
    model, _ = load_model()  # the default the CLI and app use
    assert model.latent_dim == 4
    with pytest.raises(WeightsError, match="shipped"):
        save_model(tiny_model[0], checkpoint.SHIPPED_WEIGHTS)


def test_wrong_shape_is_refused_with_the_tensor_named(tiny_model):
    model, _ = tiny_model
    data = model_to_bytes(model)
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    tensors["energy.out.weight"] = torch.zeros(1, 3)
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    bad = save_tensors(tensors, metadata=header["__metadata__"])
    with pytest.raises(WeightsError, match=r"energy\.out\.weight.*\(1, 3\)"):
        model_from_bytes(bad)


@pytest.mark.parametrize("payload,match", [
    (b"not a safetensors file at all", "not a valid safetensors"),
    (b"", "not a valid safetensors"),
])
def test_garbage_is_refused(payload, match):
    with pytest.raises(WeightsError, match=match):
        model_from_bytes(payload)


def test_foreign_safetensors_and_nan_tensors_are_refused(tiny_model):
    with pytest.raises(WeightsError, match="not an mnist-ebm weights file"):
        model_from_bytes(save_tensors({"x": torch.zeros(2)}))
    model, _ = tiny_model
    data = model_to_bytes(model)
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    tensors["energy.hidden.0.bias"][0] = float("nan")
    with pytest.raises(WeightsError, match="NaN"):
        model_from_bytes(save_tensors(tensors, metadata=header["__metadata__"]))


@pytest.mark.parametrize("extra,match", [
    ({"dataset": "../../etc/passwd"}, r"unknown dataset '\.\./\.\./etc/passwd'; choose one of mnist, fashion-mnist"),
    ({"threshold": 7}, r"threshold must be in \(0, 1\), got 7"),
    ({"dataset": "mnist", "threshold": "0.5"}, r"threshold must be in \(0, 1\), got '0\.5'"),
])
def test_bad_run_metadata_is_refused_on_load(tiny_model, tmp_path, extra, match):
    data = model_to_bytes(tiny_model[0], extra)
    with pytest.raises(WeightsError, match=f"^run-x: metadata field 'extra' is invalid: {match}$"):
        model_from_bytes(data, name="run-x")
    (tmp_path / "bad.safetensors").write_bytes(data)
    with pytest.raises(SystemExit) as exc:  # the CLI says so in one line, with the file
        main(["sample", "--weights", str(tmp_path / "bad.safetensors"), "--start", "data", "--steps", "2"])
    assert str(exc.value.code).startswith(f"error: {tmp_path / 'bad.safetensors'}: metadata field 'extra' is invalid")


def test_training_yields_both_stages_and_learns():
    cfg = TrainConfig(**TINY_CONFIG | {"ae_epochs": 6, "ae_lr": 1e-2})
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(256, 784, generator=gen) < 0.2).float()
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    events = list(train(model, images[:192], images[192:], cfg))
    stages = [e.stage for e in events]
    assert stages[0] == "autoencoder" and stages[-1] == "energy"
    assert events[-1].step == cfg.ebm_iterations
    assert {"cd_loss", "energy_data", "energy_negatives", "acceptance"} <= set(events[-1].losses)
    ae_test = [e.losses["test_bce"] for e in events if "test_bce" in e.losses]
    # pixels are Bernoulli(0.2): a model must at least learn that (784 H(0.2) = 392 nats), far below a coin's 543
    assert len(ae_test) == 6 and ae_test[-1] < 1.1 * 784 * (-0.2 * np.log(0.2) - 0.8 * np.log(0.8))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("energy.") for k in changed) and any(k.startswith("autoencoder.") for k in changed)
    assert torch.isfinite(model.code_std).all() and (model.code_std > 0).all()


def test_stopping_between_steps_keeps_what_was_trained():
    cfg = TrainConfig(**TINY_CONFIG | {"ebm_iterations": 1000})
    model = build_model(cfg)
    codes = torch.randn(200, 4)
    before = model.energy.out.weight.clone()
    events = train_energy(model, codes, cfg)
    for event in events:
        if event.step >= 30:
            break
    events.close()
    assert event.step == 30
    assert not torch.equal(before, model.energy.out.weight)


def test_the_weight_ema_is_what_is_saved_and_leaves_the_training_itself_alone(monkeypatch):
    """The net ends as the moving average of the weights after each update; the updates (and the
    negatives, drawn from the live net) are those of the same run without it."""
    from torch.optim.swa_utils import AveragedModel

    cfg = TrainConfig(**TINY_CONFIG | {"ebm_iterations": 25})
    codes = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    plain = build_model(cfg)
    list(train_energy(plain, codes, cfg))
    live = []
    record = AveragedModel.update_parameters
    monkeypatch.setattr(AveragedModel, "update_parameters",
                        lambda self, net: (live.append([p.detach().clone() for p in net.parameters()]),
                                           record(self, net))[1])
    averaged = build_model(cfg)
    list(train_energy(averaged, codes, dataclasses.replace(cfg, ebm_weight_ema=0.8)))
    assert len(live) == 25
    assert all(torch.equal(a, b) for a, b in zip(live[-1], plain.energy.parameters(), strict=True))
    expected = live[0]
    for weights in live[1:]:
        expected = [e + 0.2 * (w - e) for e, w in zip(expected, weights, strict=True)]
    for e, p in zip(expected, averaged.energy.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), e)
    assert not torch.equal(averaged.energy.out.weight, plain.energy.out.weight)


def _grid_density(net, lo: float = -6.0, hi: float = 6.0, n: int = 241):
    """A 2-D energy net's normalized density on a grid: the points, their probabilities, mean and covariance."""
    axis = torch.linspace(lo, hi, n, dtype=torch.float64)
    z = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        p = torch.softmax(-net(z.float()).double(), 0)
    mean = p @ z
    centred = z - mean
    return z, p, mean, (p[:, None] * centred).T @ centred


@pytest.mark.parametrize("proposal_density", ["used", "ignored"])
def test_likelihood_iterations_fit_a_known_density_and_need_the_proposals_density(monkeypatch, proposal_density):
    """Codes from a correlated 2-D Gaussian; 300 likelihood iterations only (no chains). The model's density, by
    quadrature, has the Gaussian's moments and is close to it in total variation. Leaving out log q from the
    importance weights (a biased estimator of E_model[∇E]) fails the same test."""
    from ebm import training

    gen = torch.Generator().manual_seed(0)
    scale, shift = torch.tensor([[0.6, 0.0], [0.5, 1.2]]), torch.tensor([1.0, -0.5])
    codes = torch.randn(4000, 2, generator=gen) @ scale.T + shift
    if proposal_density == "ignored":
        real_pool = training.proposal_pool
        monkeypatch.setattr(training, "proposal_pool",
                            lambda c, seed: (real_pool(c, seed)[0], torch.zeros(training.LIKELIHOOD_POOL)))
    cfg = TrainConfig(latent_dim=2, ebm_hidden_dim=32, ebm_layers=2, ebm_iterations=300, ebm_likelihood_iterations=300,
                      likelihood_proposals=1024, likelihood_lr=1e-2, ebm_batch_size=256, ebm_code_noise=0.0)
    model = build_model(cfg)
    events = list(train_energy(model, codes, cfg))
    assert "acceptance" not in events[-1].losses and 0.3 < events[-1].losses["proposal_ess"] <= 1.0
    z, p, mean, cov = _grid_density(model.energy)
    true_cov = (scale @ scale.T).double()
    truth = torch.distributions.MultivariateNormal(shift.double(), true_cov).log_prob(z).exp()
    total_variation = 0.5 * (p - truth / truth.sum()).abs().sum().item()
    fits = ((mean - shift).abs().max() < 0.08 and torch.linalg.norm(cov - true_cov) / torch.linalg.norm(true_cov) < 0.1
            and total_variation < 0.06)
    assert fits == (proposal_density == "used"), (mean, cov, total_variation)


def test_nan_loss_rolls_back_instead_of_poisoning_the_model(monkeypatch):
    cfg = TrainConfig(**TINY_CONFIG | {"ebm_iterations": 40})
    model = build_model(cfg)
    calls = {"n": 0}
    real_forward = type(model.energy).forward

    def sometimes_nan(self, z):
        calls["n"] += 1
        out = real_forward(self, z)
        return out * float("nan") if calls["n"] in (11, 12) else out

    monkeypatch.setattr(type(model.energy), "forward", sometimes_nan)
    events = list(train_energy(model, torch.randn(200, 4), cfg))
    assert any("rolled back" in e.message for e in events)
    assert all(torch.isfinite(p).all() for p in model.energy.parameters())


def lift_negatives(monkeypatch, model, iterations: range, by: float = 3.0) -> None:
    """Make E(negatives) read `by` nats above its value during `iterations`: what lost chains look like.

    Stage 2 calls the net's forward once per shard and iteration, on the shard's data codes followed by as
    many negatives (one negative per data code), the shards one after the other on one core; the sampler
    uses a compiled snapshot of the net (`EnergyNet.sampling_energy`), so the chains themselves are untouched.
    """
    calls = {"n": 0}
    real_forward = type(model.energy).forward

    def lifted(self, z):
        calls["n"] += 1
        iteration = (calls["n"] - 1) // training.GRADIENT_SHARDS + 1
        is_negative = torch.arange(len(z)) >= len(z) // 2
        return real_forward(self, z) + (by * is_negative if iteration in iterations else 0.0)

    monkeypatch.setattr("ebm.threads._chain_threads", 1)  # the shards in turn: forward calls in a known order
    monkeypatch.setattr(type(model.energy), "forward", lifted)


def test_negatives_stuck_above_the_data_restart_the_chains_once_and_training_goes_on(monkeypatch):
    cfg = TrainConfig(**TINY_CONFIG | {"ebm_iterations": 60, "max_energy_gap": 1.0})
    model = build_model(cfg)
    lift_negatives(monkeypatch, model, range(5, 31))  # the running gap passes 1 after 15-20 lifted iterations
    events = list(train_energy(model, torch.randn(200, 4), cfg))
    restarts = [e for e in events if e.message]
    assert len(restarts) == 1 and "chains restarted from the data codes" in restarts[0].message, restarts
    assert 15 <= restarts[0].step <= 30
    assert events[-1].step == 60 and all(torch.isfinite(p).all() for p in model.energy.parameters())


def test_a_gap_that_never_closes_restarts_the_chains_again_without_ending_training(monkeypatch):
    cfg = TrainConfig(**TINY_CONFIG | {"ebm_iterations": 200})
    model = build_model(cfg)
    lift_negatives(monkeypatch, model, range(1, 201))
    events = list(train_energy(model, torch.randn(200, 4), cfg))
    restarts = [e.step for e in events if "restarted" in e.message]
    assert len(restarts) >= 5 and all(b - a >= 10 for a, b in itertools.pairwise(restarts))  # gap reset each time
    assert events[-1].step == 200


def test_sampling_is_deterministic_and_decodes_to_binary_images(tiny_model):
    model, _ = tiny_model
    settings = SampleSettings(num_steps=10, num_chains=6, record_every=5, seed=3)
    a, b = sample_chains(model, settings), sample_chains(model, settings)
    assert torch.equal(a.state.position, b.state.position)
    images = decode_binary(model, a.state.position)
    assert images.shape == (6, 784) and set(images.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("field,value,match", [
    ("step_size", 0.0, "step size"), ("num_steps", 0, "steps"), ("num_chains", 0, "chains"),
    ("num_chains", 10**9, "chains"), ("record_every", 0, "record_every"), ("seed", -1, "seed"),
    ("sampler", "nuts", "sampler"), ("start", "moon", "start"),
])
def test_bad_sample_settings_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        SampleSettings(**{field: value}).validate()


def test_cli_sample_writes_grid_gif_and_npy(tmp_path, capsys):
    out = tmp_path / "x.npy"
    main(["sample", "--steps", "20", "--num-images", "12", "--record-every", "5",
          "--out", str(out), "--out-dir", str(tmp_path)])
    images = np.load(out)
    assert images.shape == (12, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    frames = iio.imread(tmp_path / "chains.gif", index=None)
    assert len(frames) == 5  # start + 4 records
    assert iio.imread(tmp_path / "grid.png").ndim == 2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["settings"]["num_chains"] == 12


@pytest.mark.parametrize("argv,match", [
    (["sample", "--step-size", "0"], "step-size"),
    (["sample", "--steps", "0"], "steps"),
    (["sample", "--num-images", "-5"], "num-images"),
    (["sample", "--num-images", "99999999"], "chains"),
    (["sample", "--weights", "/nonexistent.safetensors"], "does not exist"),
])
def test_cli_bad_arguments_exit_with_a_message(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code != 0
    err = capsys.readouterr().err + str(exc.value.code)
    assert match in err


def test_cli_train_on_tiny_dataset_writes_a_loadable_run(tiny_data_dir, tmp_path):
    argv = ["train", "--data-dir", str(tiny_data_dir), "--runs-dir", str(tmp_path)]
    for key, value in TINY_CONFIG.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    main(argv)
    (run,) = tmp_path.glob("*/model.safetensors")
    model, extra = load_model(run)
    assert extra["dataset"] == "mnist" and extra["train_config"]["ebm_iterations"] == TINY_CONFIG["ebm_iterations"]


def test_original_train_flags_map_onto_the_config(monkeypatch):
    import train as original_train

    seen = {}
    monkeypatch.setattr(original_train, "run_train", lambda args: seen.update(vars(args)))
    monkeypatch.setattr("sys.argv", ["train.py", "--auto_hidden_dim", "1024", "--encoded_dim", "4",
                                     "--auto_num_epochs", "30", "--auto_batch_size", "64", "--auto_lr", "3e-4",
                                     "--ebm_hidden_dim", "8", "--ebm_num_epochs", "3", "--ebm_batch_size", "1024",
                                     "--ebm_lr", "3e-4", "--mcmc_samples_per_datapoint", "8"])
    original_train.main()
    assert (seen["ae_hidden_dim"], seen["latent_dim"], seen["ae_epochs"], seen["ae_batch_size"]) == (1024, 4, 30, 64)
    assert (seen["ebm_hidden_dim"], seen["ebm_batch_size"], seen["negatives_per_datapoint"]) == (8, 1024, 8)
    assert seen["ebm_iterations"] == 3 * 59  # three passes over 60,000 codes in batches of 1024
    assert seen["ae_lr"] == seen["ebm_lr"] == 3e-4


def test_original_infer_writes_files_instead_of_a_plot_window(tmp_path, monkeypatch):
    import infer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["infer.py", "--num_images", "10"])
    infer.main()
    assert iio.imread(tmp_path / "samples" / "grid.png").ndim == 2
    assert len(iio.imread(tmp_path / "samples" / "chains.gif", index=None)) > 1


# ---- the CLI's train on a read-only or full disk ------------------------------------------------
def tiny_train_argv(runs_dir, data_dir="/nonexistent") -> list[str]:
    argv = ["train", "--data-dir", str(data_dir), "--runs-dir", str(runs_dir)]
    for key, value in TINY_CONFIG.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


def test_cli_train_refuses_a_read_only_runs_dir_before_any_work(read_only_dir, monkeypatch):
    monkeypatch.setattr(cli, "load_binarized", lambda *a, **k: pytest.fail("the data was loaded"))
    with pytest.raises(SystemExit) as exc:
        main(tiny_train_argv(read_only_dir / "runs"))
    message = str(exc.value.code)
    assert message.startswith(f"error: the runs folder {read_only_dir / 'runs'} is not writable (")
    assert message.endswith("; pick another place with --runs-dir") and "\n" not in message


def test_cli_train_refuses_a_full_disk_before_any_work(tmp_path, monkeypatch):
    full_disk(monkeypatch)
    monkeypatch.setattr(cli, "load_binarized", lambda *a, **k: pytest.fail("the data was loaded"))
    with pytest.raises(SystemExit) as exc:
        main(tiny_train_argv(tmp_path / "runs"))
    assert re.fullmatch(rf"error: the runs folder {re.escape(str(tmp_path / 'runs'))} has 1\.0 MB free on its disk "
                        r"and a run needs about \d+\.\d MB; pick another place with --runs-dir", str(exc.value.code))
    with pytest.raises(SystemExit) as exc:  # --out: its folder, and the flag to change
        main(tiny_train_argv(tmp_path / "runs") + ["--out", str(tmp_path / "w" / "m.safetensors")])
    assert str(exc.value.code).endswith("MB; pick another place with --out")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def quick_training(monkeypatch):
    """The CLI's train without data or work: a few random images and a training that yields one event,
    then does what `ending` says (nothing, or raise). Records the runs dir's contents at that event."""
    images = (torch.rand(64, 784, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    monkeypatch.setattr(cli, "load_binarized", lambda *a, **k: (images, torch.zeros(64)))
    state = {"ending": None, "seen": None, "runs_dir": None}

    def fake_train(model, train_x, test_x, cfg):
        state["seen"] = sorted(state["runs_dir"].glob("*")) if state["runs_dir"].exists() else []
        yield Progress("autoencoder", 1, 2, 0, 0.0)
        if state["ending"] is not None:
            raise state["ending"]

    monkeypatch.setattr(cli, "train", fake_train)
    return state


def test_cli_train_makes_the_run_folder_at_save_time(tmp_path, quick_training):
    quick_training["runs_dir"] = tmp_path / "runs"
    quick_training["ending"] = DivergenceError("energy training diverged 6 times; last loss nan")
    with pytest.raises(SystemExit) as exc:
        main(tiny_train_argv(tmp_path / "runs"))
    assert str(exc.value.code) == ("error: training diverged: energy training diverged 6 times; last loss nan; "
                                   "try a smaller learning rate or step size")
    assert quick_training["seen"] == [] and not (tmp_path / "runs").exists()  # no empty run folder, before or after
    quick_training["ending"] = KeyboardInterrupt()  # Ctrl-C: what was trained is saved, in a folder made then
    main(tiny_train_argv(tmp_path / "runs"))
    (path,) = (tmp_path / "runs").glob("*/model.safetensors")
    assert quick_training["seen"] == [] and list((tmp_path / "runs").iterdir()) == [path.parent]


def test_cli_train_saves_to_a_temp_folder_when_the_runs_disk_is_full(tmp_path, quick_training, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    quick_training["runs_dir"] = tmp_path / "runs"
    disk_full_under(monkeypatch, tmp_path / "runs")
    main(tiny_train_argv(tmp_path / "runs"))  # no exit status: the model was written somewhere
    err = capsys.readouterr().err.strip().splitlines()
    (fallback,) = (tmp_path / "tmp").glob("mnist-ebm-*/model.safetensors")
    assert err[-1] == (f"warning: the runs folder {tmp_path / 'runs'} could not be written (No space left on device), "
                       f"so the trained model was saved to {fallback} instead; "
                       "pick another place with --runs-dir next time")
    assert load_model(fallback)[1]["train_config"]["ae_hidden_dim"] == TINY_CONFIG["ae_hidden_dim"]
    assert list((tmp_path / "runs").iterdir()) == []  # no half-written run


def test_cli_train_exits_non_zero_only_when_nothing_could_be_written(tmp_path, quick_training, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    quick_training["runs_dir"] = tmp_path / "runs"
    disk_full_under(monkeypatch, tmp_path)  # the runs folder and the temp folder
    with pytest.raises(SystemExit) as exc:
        main(tiny_train_argv(tmp_path / "runs"))
    message = str(exc.value.code)
    runs_dir = tmp_path / "runs"
    assert message.startswith(f"error: the runs folder {runs_dir} could not be written (No space left on device), "
                              "and the temp folder could not be written either (No space left on device)")
    assert "the trained model is lost" in message and message.endswith("pick another place with --runs-dir")
    assert list((tmp_path / "tmp").iterdir()) == [] and list((tmp_path / "runs").iterdir()) == []


def test_home_animation_shows_chains_settling_into_digits():
    """Frame by frame: far-out starts at high energy fall to the data's level, each frame a small change."""
    from ebm.render import BirthSettings, birth_view

    settings = BirthSettings()
    model, _ = load_model()
    view = birth_view(model, settings)
    frames = iio.imread(view.gif, index=None).astype(float) / 255  # (frames, H, W) gray
    assert len(frames) == len(view.record_steps) == settings.num_steps // settings.record_every + 1
    mean_energy = view.energies.mean(axis=1)
    assert mean_energy[0] > 100 and mean_energy[-1] < 5, mean_energy  # data codes sit near 0
    assert np.all(np.diff(mean_energy[: len(mean_energy) // 2]) < 0)  # falling while the chains come in
    changed = (np.abs(np.diff(frames, axis=0)) > 0.25).mean(axis=(1, 2))
    assert np.median(changed) < 0.03, np.median(changed)  # smooth: the old Home GIF changed ~10% per frame
    assert (np.abs(frames[-1] - frames[0]) > 0.25).mean() > 0.1  # yet the digits at the end are not the start's
    assert view.mean_acceptance > 0.9


def test_temp_files_of_killed_saves_are_cleaned_and_a_save_in_progress_is_kept(tiny_model, tmp_path):
    """A `kill -9` mid-save leaves `.model.safetensors.*.tmp`: the next listing deletes it (and a
    run folder left with nothing else), but not a fresh one that a live save is still writing."""
    import os

    from ebm import runs

    kept = runs.save_run(model_to_bytes(tiny_model[0]), "mnist", runs_dir=tmp_path).parent
    killed = tmp_path / "20260101-000000-mnist"
    killed.mkdir()
    stale = [kept / f".{runs.WEIGHTS_NAME}.a1.tmp", killed / f".{runs.WEIGHTS_NAME}.b2.tmp", tmp_path / ".x.c3.tmp"]
    fresh = tmp_path / f"20260101-000001-mnist/.{runs.WEIGHTS_NAME}.d4.tmp"
    fresh.parent.mkdir()
    for tmp in [*stale, fresh]:
        tmp.write_bytes(b"half a file")
    old = time.time() - runs.STALE_TEMP_SECONDS - 60
    for tmp in stale:
        os.utime(tmp, (old, old))

    assert [r.path.parent for r in runs.list_runs(tmp_path)] == [kept]
    assert not any(t.exists() for t in stale) and not killed.exists()
    assert fresh.exists() and (kept / runs.WEIGHTS_NAME).is_file()


def test_a_conv_autoencoder_trains_saves_and_loads_bit_identically(tmp_path):
    """The conv choice builds, trains a step, keeps the flat (..., 784) interface and survives a save and load;
    a file whose metadata lacks the architecture (saved before it existed) loads as the MLP it holds."""
    cfg = TrainConfig(**TINY_CONFIG | {"ae_architecture": "conv", "ae_conv_channels": 4, "ae_hidden_dim": 16})
    model = build_model(cfg)
    images = (torch.rand(64, 784, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    events = list(train_autoencoder(model.autoencoder, images, images[:16], dataclasses.replace(cfg, ae_epochs=1)))
    assert math.isfinite(events[-1].losses["test_bce"])
    codes = model.encode(images[:8])
    assert codes.shape == (8, cfg.latent_dim) and model.decode(codes).shape == (8, 784)
    stacked = codes.reshape(2, 4, cfg.latent_dim)  # draws x images, as ebm.scoring decodes them
    assert torch.equal(model.decode(stacked), model.decode(codes).reshape(2, 4, 784))
    assert torch.equal(model.encode(images[:8].reshape(2, 4, 784)), codes.reshape(2, 4, -1))
    loaded, _ = model_from_bytes(model_to_bytes(model))
    assert loaded.autoencoder.config.architecture == "conv"
    assert torch.equal(loaded.decode(codes), model.decode(codes))
    old = AutoencoderConfig(**{"hidden_dim": 8, "latent_dim": 4})
    assert old.architecture == "mlp" and isinstance(Autoencoder(old).encoder[0], torch.nn.Linear)


@pytest.mark.parametrize("batches", [1, 2, 9, 10, 11, 20])
def test_stage_one_trains_for_any_number_of_steps(batches):
    """Ten steps make torch's OneCycleLR rise over a single step and divide by zero (`--ae-batch-size 6000
    --ae-epochs 1` on MNIST did): the schedule rises over two there, and over a tenth of the steps elsewhere."""
    cfg = TrainConfig(**TINY_CONFIG | {"ae_epochs": 1, "ae_batch_size": 4})
    images = (torch.rand(4 * batches, 784, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    events = list(train_autoencoder(build_model(cfg).autoencoder, images, images[:4], cfg))
    assert events[-1].step == batches and math.isfinite(events[-1].losses["test_bce"])


def test_the_image_classifier_trains_when_its_rise_would_be_one_step():
    """The image classifier rises over a fifth of its steps: at 5 steps (`train-classifier --epochs 1
    --batch-size 12000` on MNIST) that is one, where OneCycleLR divides by zero; `one_cycle` makes it two."""
    from ebm.classifier import fit_classes

    inputs = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    labels, losses = (inputs[:, 0] > 0).long(), []
    fit_classes(torch.nn.Linear(4, 2), inputs, labels, epochs=1, batch_size=4, lr=1e-2, seed=0, pct_start=0.2,
                log=lambda epoch, loss: losses.append(loss))
    assert len(losses) == 1 and math.isfinite(losses[0])


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_stage_one_is_the_same_on_one_core_or_two_and_its_shards_add_up_to_the_batch(architecture):
    """Stage 1 splits each batch's gradient into AE_SHARDS shards, one per core: the trained weights are the
    same floats on one thread or two, and the shards' sum is the whole batch's gradient. The helper threads
    first ran torch on two threads, as they do after a process changes its count: they must not keep it."""
    cfg = TrainConfig(**TINY_CONFIG | {"ae_architecture": architecture, "ae_conv_channels": 4, "ae_hidden_dim": 16,
                                       "ae_epochs": 2, "ae_batch_size": 25})
    images = (torch.rand(64, 784, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    weights, before = [], torch.get_num_threads()
    torch.set_num_threads(2)
    run_together([lambda: None] + [lambda: torch.ones(256, 256) @ torch.ones(256, 256)] * 2)
    torch.set_num_threads(1)
    try:
        for threads in (1, 2):
            set_chain_threads(threads)
            model = build_model(cfg)
            list(train_autoencoder(model.autoencoder, images, images[:16], cfg))
            weights.append(torch.cat([p.detach().flatten() for p in model.autoencoder.parameters()]))
    finally:
        set_chain_threads(None)
        torch.set_num_threads(before)
    assert torch.equal(weights[0], weights[1])
    noise = torch.randn(len(images), cfg.latent_dim, generator=torch.Generator().manual_seed(1))
    sharded, bce = autoencoder_gradients(model.autoencoder, images, noise, cfg)
    loss, whole_bce = autoencoder_loss(model.autoencoder, images, cfg, noise)
    whole = torch.autograd.grad(loss, list(model.autoencoder.parameters()))
    assert bce == pytest.approx(whole_bce.item(), rel=1e-5)
    for a, b in zip(sharded, whole):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_stage_two_is_the_same_on_one_core_or_two_and_its_shards_add_up_to_the_batch():
    """Stage 2's energies and backward passes run in GRADIENT_SHARDS shards, chain and likelihood iterations
    alike: the same floats on one thread or two, and the shards' gradient is the whole batch's."""
    cfg = TrainConfig(**TINY_CONFIG | {"ebm_iterations": 30, "ebm_likelihood_iterations": 10, "ebm_batch_size": 33})
    codes = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    weights = []
    try:
        for threads in (1, 2):
            set_chain_threads(threads)
            model = build_model(cfg)
            list(train_energy(model, codes, cfg))
            weights.append(torch.cat([p.detach().flatten() for p in model.energy.parameters()]))
    finally:
        set_chain_threads(None)
    assert torch.equal(weights[0], weights[1])
    data, negatives = codes[:33], codes[33:99]
    w = torch.softmax(torch.randn(66, generator=torch.Generator().manual_seed(1)), 0)
    graphs = training.in_shards(lambda d, n: (model.energy(d), model.energy(n)), data, negatives)
    sharded = training.energy_gradients(model.energy, graphs, w, 0.1)
    e_pos, e_neg = model.energy(data), model.energy(negatives)
    whole = torch.autograd.grad(e_pos.mean() - w @ e_neg + 0.1 * (e_pos.square().mean() + e_neg.square().mean()),
                                list(model.energy.parameters()))
    for a, b in zip(sharded, whole):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
