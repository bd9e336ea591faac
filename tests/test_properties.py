"""Property-based tests of the core's public functions and of the command line.

For any out-of-range setting (ε, K, chains, record_every, seed, latent dimension) the core
raises a ValueError whose message names the setting, and the CLI exits with an `error:` line;
nothing hangs or crashes. Any valid small setting runs and gives finite results of the right
shapes. A damaged weights file raises `WeightsError` and a damaged dataset file `DatasetError`,
whatever the damage.

Run with `--hypothesis-show-statistics` to see how many examples each test ran.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import struct
import tempfile
from datetime import timedelta
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ebm import cli, landscape
from ebm.checkpoint import (
    WeightsError,
    _read_header,
    load_model,
    model_from_bytes,
    model_to_bytes,
)
from ebm.data import RAW_FILES, DatasetError, load_images
from ebm.generate import (
    MAX_SEED,
    SampleSettings,
    chain_frames,
    decode_binary,
    sample_chains,
)
from ebm.limits import (
    MAX_APP_CHAINS,
    MAX_APP_STEPS,
    MAX_CHAIN_STEPS,
    RequestTooLarge,
    check_request_size,
)
from ebm.models import (
    Autoencoder,
    AutoencoderConfig,
    EnergyConfig,
    EnergyNet,
    LatentEBM,
)
from ebm.samplers import MAX_CHAINS, SAMPLERS, build_sampler, check_step_size, run_chains
from ebm.samplers.mala import mala
from ebm.samplers.ula import ula
from ebm.training import TrainConfig

# Modest example counts and a deadline that tolerates a loaded 2-core machine: the file runs in
# well under a minute. The deadline still catches a hang (Hypothesis reports it, it does not wait).
FAST = settings(max_examples=40, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=10, deadline=timedelta(seconds=20), suppress_health_check=[HealthCheck.too_slow])

INF, NAN = float("inf"), float("nan")


@pytest.fixture(scope="module")
def model() -> LatentEBM:
    return load_model()[0]


@pytest.fixture(scope="module")
def weights_bytes(model) -> bytes:
    return model_to_bytes(model, {"dataset": "mnist", "threshold": 0.5})


# ---- strategies ---------------------------------------------------------------------------------

bad_step_sizes = st.one_of(
    st.floats(max_value=0.0, allow_nan=False),  # 0, -0.0, negatives, -inf
    st.sampled_from([NAN, INF, -INF]),
)
non_integers = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9).filter(
    lambda x: x != int(x))
bad_counts = st.one_of(st.integers(max_value=0), non_integers)  # K, record_every: must be integers >= 1
bad_chains = st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_CHAINS + 1, max_value=2**70), non_integers)
bad_seeds = st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_SEED + 1, max_value=2**200), non_integers)


def _settings(**overrides) -> SampleSettings:
    base = {
        "sampler": "mala",
        "step_size": 0.5,
        "num_steps": 3,
        "num_chains": 2,
        "record_every": 1,
        "start": "noise",
        "seed": 0,
    }
    base.update(overrides)
    return SampleSettings(**base)


def _refused(fn, *names: str) -> str:
    """Run fn, expect a ValueError whose message names the setting (any of `names`)."""
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    assert any(n.lower() in message.lower() for n in names), f"message {message!r} names none of {names}"
    return message


# ---- out-of-range sampling settings -------------------------------------------------------------

@FAST
@given(eps=bad_step_sizes, sampler=st.sampled_from(["ula", "mala"]))
def test_bad_step_size_is_refused_everywhere(model, eps, sampler):
    _refused(lambda: _settings(step_size=eps, sampler=sampler).validate(), "step size")
    _refused(lambda: sample_chains(model, _settings(step_size=eps, sampler=sampler)), "step size")
    _refused(lambda: build_sampler(sampler, model.energy_and_grad, eps), "step size")
    _refused(lambda: (ula if sampler == "ula" else mala)(model.energy_and_grad, eps), "step size")
    _refused(lambda: check_step_size(eps), "step size")


@FAST
@given(k=bad_counts)
def test_bad_number_of_steps_is_refused(model, k):
    _refused(lambda: _settings(num_steps=k).validate(), "steps")
    _refused(lambda: sample_chains(model, _settings(num_steps=k)), "steps")
    sampler = build_sampler("mala", model.energy_and_grad, 0.5)
    state = sampler.init(torch.zeros(2, model.latent_dim))
    _refused(lambda: run_chains(sampler, state, k), "steps")


@FAST
@given(chains=bad_chains)
def test_bad_number_of_chains_is_refused(model, chains):
    _refused(lambda: _settings(num_chains=chains).validate(), "chains")
    _refused(lambda: sample_chains(model, _settings(num_chains=chains)), "chains")


def test_too_many_starting_positions_are_refused(model):
    sampler = build_sampler("ula", model.energy_and_grad, 0.5)
    _refused(lambda: sampler.init(torch.zeros(MAX_CHAINS + 1, model.latent_dim)), "chains")


@FAST
@given(every=bad_counts)
def test_bad_record_every_is_refused(model, every):
    _refused(lambda: _settings(record_every=every).validate(), "record_every")
    sampler = build_sampler("ula", model.energy_and_grad, 0.5)
    state = sampler.init(torch.zeros(2, model.latent_dim))
    _refused(lambda: run_chains(sampler, state, 3, every), "steps", "record")


@FAST
@given(seed=bad_seeds)
def test_bad_seed_is_refused(model, seed):
    _refused(lambda: _settings(seed=seed).validate(), "seed")
    _refused(lambda: sample_chains(model, _settings(seed=seed)), "seed")


@FAST
@given(name=st.text(max_size=8))
def test_unknown_sampler_or_start_is_refused(name):
    if name.lower() not in SAMPLERS:
        _refused(lambda: _settings(sampler=name).validate(), "sampler")
    if name not in ("noise", "data"):
        _refused(lambda: _settings(start=name).validate(), "start")


@pytest.mark.parametrize("field,names", [
    ("num_steps", ("steps",)), ("num_chains", ("chains",)), ("record_every", ("record_every",)), ("seed", ("seed",)),
])
@pytest.mark.parametrize("value", [INF, -INF, NAN])
def test_infinite_or_nan_counts_are_refused_with_a_clear_message(field, names, value):
    _refused(lambda: _settings(**{field: value}).validate(), *names)


@pytest.mark.parametrize("k", [INF, NAN])
def test_run_chains_refuses_infinite_k_clearly(model, k):
    sampler = build_sampler("ula", model.energy_and_grad, 0.5)
    _refused(lambda: run_chains(sampler, sampler.init(torch.zeros(1, model.latent_dim)), k), "steps")


# ---- latent dimension mismatches ----------------------------------------------------------------

@FAST
@given(ae_dim=st.integers(1, 8), energy_dim=st.integers(1, 8))
def test_autoencoder_and_energy_must_agree_on_the_latent_dimension(ae_dim, energy_dim):
    ae = Autoencoder(AutoencoderConfig(hidden_dim=8, latent_dim=ae_dim))
    net = EnergyNet(EnergyConfig(latent_dim=energy_dim, hidden_dim=4, num_layers=1))
    def build():
        return LatentEBM(ae, net, torch.zeros(ae_dim), torch.ones(ae_dim))
    if ae_dim == energy_dim:
        assert build().latent_dim == ae_dim
    else:
        _refused(build, "latent dimension")


@FAST
@given(dim=st.integers(1, 9))
def test_landscape_refuses_codes_of_another_dimension(model, dim):
    d = model.latent_dim
    if dim == d:
        return
    _refused(lambda: landscape.interpolate(model, [0.0] * dim, [0.0] * d, 5), "dimension")
    _refused(lambda: landscape.energy_slice(model, (0, 1), [0.0] * dim, 4.0, 5), "latent dim", "fixed")


@FAST
@given(dim=st.integers(1, 9).filter(lambda k: k != 4), n=st.integers(1, 20))
def test_data_codes_of_another_latent_dimension_are_refused(model, dim, n):
    codes = torch.randn(n, dim)
    _refused(lambda: sample_chains(model, _settings(start="data"), codes), "dimension", "latent")


@FAST
@given(dim=st.integers(1, 9).filter(lambda k: k != 4))
def test_energies_refuse_codes_of_another_dimension(model, dim):
    _refused(lambda: landscape.energies(model, torch.zeros(3, dim)), "dimension", "latent")


# ---- valid settings run ------------------------------------------------------------------------

def _expected_record_steps(k: int, every: int) -> list[int]:
    steps = [0] + list(range(every, k + 1, every))
    return steps if steps[-1] == k else steps + [k]


@FAST
@given(
    sampler=st.sampled_from(["ula", "mala"]),
    eps=st.floats(0.01, 2.0),  # the app's slider range
    k=st.integers(1, 25),
    chains=st.integers(1, 12),
    every=st.integers(1, 30),
    start=st.sampled_from(["noise", "data"]),
    seed=st.integers(0, MAX_SEED),
)
def test_valid_settings_give_finite_results_of_the_right_shape(model, sampler, eps, k, chains, every, start, seed):
    d = model.latent_dim
    data_codes = torch.randn(50, d, generator=torch.Generator().manual_seed(1)) if start == "data" else None
    s = SampleSettings(sampler, eps, k, chains, every, start, seed)
    result = sample_chains(model, s, data_codes)
    records = _expected_record_steps(k, every)
    assert result.record_steps == records
    assert result.trajectory.shape == (len(records), chains, d)
    assert result.energies.shape == result.acceptance.shape == (k, chains)
    assert result.state.position.shape == (chains, d) and result.state.grad.shape == (chains, d)
    for t in (result.trajectory, result.energies, result.acceptance, result.state.grad):
        assert torch.isfinite(t).all()
    assert ((result.acceptance >= 0) & (result.acceptance <= 1)).all()
    if sampler == "ula":
        assert (result.acceptance == 1).all()
    if start == "data":  # the chains start on data codes
        assert all(any(torch.equal(row, c) for c in data_codes) for row in result.trajectory[0])
    images = decode_binary(model, result.state.position)
    assert images.shape == (chains, 784) and set(images.unique().tolist()) <= {0.0, 1.0}
    frames = chain_frames(model, result.trajectory)
    assert len(frames) == len(records) and all(f.dtype == np.uint8 and f.ndim == 2 for f in frames)
    again = sample_chains(model, s, data_codes)  # a seed fixes the sample
    assert torch.equal(again.trajectory, result.trajectory)


@FAST
@given(chains=st.integers(1, 2 * MAX_APP_CHAINS), k=st.integers(1, 2 * MAX_APP_STEPS))
def test_request_cap_is_consistent(chains, k):
    fits = chains <= MAX_APP_CHAINS and k <= MAX_APP_STEPS and chains * k <= MAX_CHAIN_STEPS
    if fits:
        assert check_request_size(chains, k) == chains * k
    else:
        with pytest.raises(RequestTooLarge, match="at most|cap"):
            check_request_size(chains, k)


# ---- the command line -------------------------------------------------------------------------

def _run_cli(argv: list[str]) -> tuple[int | str | None, str, str]:
    """ebm.cli.main(argv) -> (exit code or message, stdout, stderr); the thread count is restored."""
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main(argv)
    except SystemExit as e:
        code = e.code
    finally:
        torch.set_num_threads(threads)  # main() sets it to the CPU count
    return code, out.getvalue(), err.getvalue()


def _bad_sample_flag():
    text = st.sampled_from
    return st.one_of(
        st.tuples(st.just("--step-size"), st.one_of(bad_step_sizes.map(repr), text(["abc", "1e400", "-1e400", ""]))),
        st.tuples(st.just("--steps"), st.one_of(bad_counts.map(str), text(["inf", "nan", "abc", "1e3", ""]))),
        st.tuples(st.sampled_from(["--chains", "--num-images"]), st.one_of(bad_chains.map(str), text(["inf", "x"]))),
        st.tuples(st.just("--record-every"), st.one_of(bad_counts.map(str), text(["inf", "nan"]))),
        st.tuples(st.just("--seed"), st.one_of(bad_seeds.map(str), text(["nan", "inf", "0x10", ""]))),
        st.tuples(st.just("--gif-chains"), bad_counts.map(str)),
        st.tuples(st.just("--sampler"), text(["nuts", "MALA ", ""])),
        st.tuples(st.just("--start"), text(["zeros", ""])),
    )


@FAST
@given(flag_value=_bad_sample_flag())
def test_cli_sample_refuses_bad_arguments_with_a_message(flag_value):
    flag, value = flag_value
    with tempfile.TemporaryDirectory() as tmp:
        code, _, err = _run_cli(["sample", f"{flag}={value}", "--steps" if flag != "--steps" else "--seed", "2",
                                   "--out-dir", tmp])
        assert code not in (0, None), f"{flag}={value!r} was accepted"
        message = err + (code if isinstance(code, str) else "")
        assert "error" in message and "Traceback" not in message, message
        assert (
            flag.lstrip("-").split("-")[0] in message.replace("_", "-") or "seed" in message or "chains" in message
        ), message
        assert not any(Path(tmp).iterdir()), "nothing may be written for a refused request"


@SLOW
@given(
    sampler=st.sampled_from(["ula", "mala"]),
    eps=st.floats(0.01, 2.0),
    k=st.integers(1, 12),
    chains=st.integers(1, 9),
    every=st.integers(1, 6),
    seed=st.integers(0, MAX_SEED),
)
def test_cli_sample_runs_for_valid_arguments(sampler, eps, k, chains, every, seed):
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "x.npy"
        code, out, err = _run_cli(["sample", "--sampler", sampler, "--step-size", repr(eps), "--steps", str(k),
                                   "--chains", str(chains), "--record-every", str(every), f"--seed={seed}",
                                   "--out-dir", tmp, "--out", str(npy)])
        assert code in (0, None), err
        report = json.loads(out.strip().splitlines()[-1])
        assert report["settings"]["num_steps"] == k and report["settings"]["seed"] == seed
        images = np.load(npy)
        assert images.shape == (chains, 28, 28) and np.isfinite(images).all()
        assert set(np.unique(images).tolist()) <= {0.0, 1.0}
        frames = iio.imread(Path(tmp) / "chains.gif", index=None)
        # one frame per record, except that the GIF encoder merges identical consecutive frames
        assert 1 <= len(frames) <= len(_expected_record_steps(k, every))
        grid = iio.imread(Path(tmp) / "grid.png")
        assert grid.ndim == 2 and frames.shape[1:3] == grid.shape


def _bad_train_flag():
    return st.one_of(
        st.tuples(st.sampled_from(["--ae-lr", "--ebm-lr", "--mcmc-step-size", "--ebm-tilt-sigma", "--grad-clip",
                                   "--max-energy-gap"]),
                  bad_step_sizes.map(repr)),
        st.tuples(st.sampled_from(["--latent-dim", "--ae-hidden-dim", "--ebm-iterations", "--mcmc-steps",
                                   "--buffer-size", "--ebm-layers", "--ae-batch-size", "--ebm-batch-size"]),
                  st.integers(max_value=0).map(str)),
        st.tuples(st.just("--ae-epochs"), st.integers(max_value=-1).map(str)),
        st.tuples(st.just("--threshold"), st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0)).map(repr)),
        st.tuples(st.just("--reinit-prob"), st.one_of(st.floats(max_value=-1e-9, allow_nan=False),
                                                       st.floats(min_value=1.0 + 1e-9, allow_nan=False)).map(repr)),
        st.tuples(st.sampled_from(["--latent-dim", "--seed", "--ebm-train-images"]), st.sampled_from(["1.5", "x", ""])),
        st.tuples(st.just("--dataset"), st.sampled_from(["cifar10", ""])),
    )


@FAST
@given(flag_value=_bad_train_flag())
def test_cli_train_refuses_bad_arguments_before_loading_data(flag_value):
    flag, value = flag_value
    with tempfile.TemporaryDirectory() as tmp:
        # an empty data dir: if validation let the value through, loading data would fail (or try to download)
        code, _, err = _run_cli(["train", f"{flag}={value}", "--data-dir", f"{tmp}/nothing", "--runs-dir", tmp])
        assert code not in (0, None), f"{flag}={value!r} was accepted"
        message = err + (code if isinstance(code, str) else "")
        assert "error" in message and "Traceback" not in message, message
        assert not Path(tmp, "nothing").exists(), "validation must come before any data loading"


@pytest.mark.parametrize("target", [0.0, 1.0, -0.5, 5.0, NAN])
def test_train_config_refuses_impossible_target_acceptance(target):
    _refused(lambda: TrainConfig(target_acceptance=target).validate(), "target_acceptance")


@FAST
@given(name=st.sampled_from(["missing.safetensors", "truncated.safetensors"]), cut=st.integers(0, 4096))
def test_cli_sample_refuses_a_bad_weights_file(weights_bytes, name, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        if name.startswith("truncated"):
            path.write_bytes(weights_bytes[:cut])
        out_dir = Path(tmp) / "out"
        code, _, err = _run_cli(["sample", "--weights", str(path), "--steps", "2", "--out-dir", str(out_dir)])
        assert isinstance(code, str) and code.startswith("error:") and name in code, (code, err)
        assert not out_dir.exists()


# ---- damaged weights files --------------------------------------------------------------------

def _expect_weights_error(data: bytes, *fragments: str) -> str:
    with pytest.raises(WeightsError) as info:
        model_from_bytes(data, name="upload.safetensors")
    message = str(info.value)
    assert "upload.safetensors" in message, message
    for f in fragments:
        assert f in message, message
    return message


@FAST
@given(
    data=st.one_of(
        st.binary(max_size=4096),
        st.builds(lambda n, body: n.to_bytes(8, "little") + body, st.integers(0, 2**64 - 1), st.binary(max_size=512)),
        st.builds(
            lambda body: len(body).to_bytes(8, "little") + body,
            st.one_of(
                st.binary(max_size=256),
                st.text(max_size=64).map(str.encode),
                st.dictionaries(st.text(max_size=8), st.text(max_size=8)).map(lambda d: json.dumps(d).encode()),
            ),
        ),
    )
)
def test_random_bytes_raise_weights_error(data):
    _expect_weights_error(data)


@FAST
@given(data=st.data())
def test_any_truncation_of_a_valid_file_raises_weights_error(weights_bytes, data):
    cut = data.draw(st.one_of(st.integers(0, 2048), st.integers(0, len(weights_bytes) - 1)))
    _expect_weights_error(weights_bytes[:cut])


def _tensors_and_metadata(weights_bytes: bytes) -> tuple[dict, dict]:
    return dict(load_tensors(weights_bytes)), _read_header(weights_bytes, "weights")[0]


@FAST
@given(data=st.data())
def test_a_tensor_of_the_wrong_shape_raises_weights_error(weights_bytes, data):
    tensors, meta = _tensors_and_metadata(weights_bytes)
    key = data.draw(st.sampled_from(sorted(tensors)))
    shape = tuple(data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
    if shape == tuple(tensors[key].shape):
        shape = shape + (1,)
    tensors[key] = torch.zeros(shape)
    _expect_weights_error(save_tensors(tensors, metadata=meta), key, "shape")


@FAST
@given(data=st.data())
def test_a_missing_or_extra_tensor_raises_weights_error(weights_bytes, data):
    tensors, meta = _tensors_and_metadata(weights_bytes)
    if data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(tensors)))
        del tensors[key]
    else:
        key = data.draw(st.text("abcdefgh.", min_size=1, max_size=12).filter(lambda k: k not in tensors))
        tensors[key] = torch.zeros(2)
    _expect_weights_error(save_tensors(tensors, metadata=meta), key)


@FAST
@given(data=st.data(), value=st.sampled_from([NAN, INF, -INF]))
def test_a_nan_or_infinite_weight_raises_weights_error(weights_bytes, data, value):
    tensors, meta = _tensors_and_metadata(weights_bytes)
    key = data.draw(st.sampled_from(sorted(tensors)))
    flat = tensors[key].clone().reshape(-1)
    flat[data.draw(st.integers(0, flat.numel() - 1))] = value
    tensors[key] = flat.reshape(tensors[key].shape)
    _expect_weights_error(save_tensors(tensors, metadata=meta), key, "NaN or infinity")


@FAST
@given(data=st.data())
def test_non_positive_code_std_raises_weights_error(weights_bytes, data):
    tensors, meta = _tensors_and_metadata(weights_bytes)
    std = tensors["code_std"].clone()
    std[data.draw(st.integers(0, len(std) - 1))] = data.draw(st.floats(-10, 0))
    tensors["code_std"] = std
    _expect_weights_error(save_tensors(tensors, metadata=meta), "code_std")


@FAST
@given(data=st.data())
def test_metadata_of_another_model_raises_weights_error(weights_bytes, data):
    """Latent dimension, widths or depth in the metadata that the tensors do not have."""
    tensors, meta = _tensors_and_metadata(weights_bytes)
    ae, en = json.loads(meta["autoencoder"]), json.loads(meta["energy"])
    which = data.draw(
        st.sampled_from(
            ["ae.latent_dim", "ae.hidden_dim", "en.latent_dim", "en.hidden_dim", "en.num_layers", "both.latent_dim"]
        )
    )
    part, field = which.split(".")
    new = data.draw(st.integers(1, 12).filter(lambda v: v != (ae if part == "ae" else en)[field]))
    if part in ("ae", "both"):
        ae[field] = new
    if part in ("en", "both"):
        en[field] = new
    meta = dict(meta, autoencoder=json.dumps(ae), energy=json.dumps(en))
    _expect_weights_error(save_tensors(tensors, metadata=meta))


@FAST
@given(fmt=st.one_of(st.none(), st.text(max_size=12).filter(lambda s: s != "mnist-ebm/1")))
def test_a_foreign_safetensors_file_raises_weights_error(weights_bytes, fmt):
    tensors, meta = _tensors_and_metadata(weights_bytes)
    meta = {k: v for k, v in meta.items() if k != "format"}
    if fmt is not None:
        meta["format"] = fmt
    _expect_weights_error(save_tensors(tensors, metadata=meta), "format")


def _corrupt_extra(weights_bytes: bytes) -> tuple[int, int]:
    """(position, byte) that turns the metadata's "extra" JSON into invalid JSON: a known failing example."""
    header_len = int.from_bytes(weights_bytes[:8], "little")
    header = weights_bytes[8 : 8 + header_len]
    pos = header.index(b'"extra":"') + len(b'"extra":"')  # its opening brace: still a JSON string, no longer an object
    return 8 + pos, ord("x")


@FAST
@given(data=st.data())
def test_any_change_to_the_header_loads_or_raises_weights_error(weights_bytes, data):
    header_len = int.from_bytes(weights_bytes[:8], "little")
    pos, byte = _corrupt_extra(weights_bytes)
    if data.draw(st.booleans()):  # a random single-byte change anywhere in the JSON header
        pos = data.draw(st.integers(8, 8 + header_len - 1))
        byte = data.draw(st.integers(0, 255))
    damaged = bytearray(weights_bytes)
    damaged[pos] = byte
    try:
        model, extra = model_from_bytes(bytes(damaged), name="upload.safetensors")
    except WeightsError:
        return
    assert isinstance(extra, dict)
    assert torch.isfinite(model.energy_and_grad(torch.zeros(2, model.latent_dim))[0]).all()


@pytest.mark.parametrize("field,value", [("hidden_dim", 512.5), ("hidden_dim", "512"), ("latent_dim", None)])
def test_config_values_of_the_wrong_type_raise_weights_error(weights_bytes, field, value):
    tensors, meta = _tensors_and_metadata(weights_bytes)
    ae = dict(json.loads(meta["autoencoder"]), **{field: value})
    _expect_weights_error(save_tensors(tensors, metadata=dict(meta, autoencoder=json.dumps(ae))))


@pytest.mark.parametrize("tilt", [0.0, -3.0, NAN, INF])
def test_impossible_tilt_raises_weights_error(weights_bytes, tilt):
    tensors, meta = _tensors_and_metadata(weights_bytes)
    en = dict(json.loads(meta["energy"]), tilt_sigma=tilt)
    _expect_weights_error(save_tensors(tensors, metadata=dict(meta, energy=json.dumps(en))), "tilt")


# ---- damaged dataset files ----------------------------------------------------------------------

def _idx(array: np.ndarray) -> bytes:
    magic = 0x00000803 if array.ndim == 3 else 0x00000801
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def _synthetic(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 5, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3, dtype=np.uint8),
    }


def _write(root: Path, files: dict[str, bytes]) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, blob in files.items():
        (raw / name).write_bytes(blob)
    return raw


def _load_both_splits(root: Path) -> None:
    for split in ("train", "test"):
        load_images("mnist", split, root, download=False)


@FAST
@given(file=st.sampled_from(RAW_FILES), data=st.data())
def test_any_truncation_of_a_gz_file_raises_dataset_error(file, data):
    arrays = _synthetic()
    files = {f"{name}.gz": gzip.compress(_idx(a), mtime=0) for name, a in arrays.items()}
    blob = files[f"{file}.gz"]
    files[f"{file}.gz"] = blob[: data.draw(st.integers(0, len(blob) - 1))]
    with tempfile.TemporaryDirectory() as tmp:
        raw = _write(Path(tmp), files)
        with pytest.raises(DatasetError, match=file):
            _load_both_splits(Path(tmp))
        assert not (raw / file).exists(), "a damaged file must not be extracted"
        assert not [p.name for p in raw.iterdir() if p.name.startswith(".")], "no temporary files left"


@FAST
@given(file=st.sampled_from(RAW_FILES), data=st.data())
def test_any_truncation_or_extension_of_an_extracted_file_raises_dataset_error(file, data):
    arrays = _synthetic()
    files = {name: _idx(a) for name, a in arrays.items()}
    blob = files[file]
    if data.draw(st.booleans()):
        files[file] = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        files[file] = blob + data.draw(st.binary(min_size=1, max_size=64))
    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp), files)
        with pytest.raises(DatasetError, match=file):
            _load_both_splits(Path(tmp))


@FAST
@given(file=st.sampled_from(RAW_FILES), data=st.data())
def test_any_header_damage_of_an_idx_file_raises_dataset_error(file, data):
    """A changed byte in the IDX header (magic, counts, image size) is always caught."""
    arrays = _synthetic()
    files = {name: _idx(a) for name, a in arrays.items()}
    header_size = 4 + 4 * (3 if "-images-" in file else 1)
    blob = bytearray(files[file])
    pos = data.draw(st.integers(0, header_size - 1))
    blob[pos] = data.draw(st.integers(0, 255).filter(lambda b: b != blob[pos]))
    files[file] = bytes(blob)
    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp), files)
        with pytest.raises(DatasetError, match=file):
            _load_both_splits(Path(tmp))


@FAST
@given(file=st.sampled_from(RAW_FILES), blob=st.binary(max_size=512))
def test_random_bytes_as_a_gz_file_raise_dataset_error(file, blob):
    arrays = _synthetic()
    files = {f"{name}.gz": gzip.compress(_idx(a), mtime=0) for name, a in arrays.items()}
    files[f"{file}.gz"] = blob
    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp), files)
        with pytest.raises(DatasetError, match=file):
            _load_both_splits(Path(tmp))


def test_cli_refuses_an_absurd_number_of_steps_without_a_traceback(tmp_path):
    import resource
    import subprocess
    import sys

    def limit_memory():  # in the child: an allocation that would succeed lazily fails instead
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    proc = subprocess.run(
        [sys.executable, "-m", "ebm", "sample", "--steps", str(10**12), "--chains", "2", "--out-dir", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=120, preexec_fn=limit_memory,
        cwd=Path(__file__).resolve().parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "error" in proc.stderr.lower(), proc.stderr[-2000:]
