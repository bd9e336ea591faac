"""What one visitor can make the server spend: request and model budgets, and weights judged by their header.

The budgets are counted in multiply-adds from the architecture (`ebm.limits`), so they hold
for any uploaded model; a weights file's header (format, architecture, tensor names and
shapes) is checked before a tensor is read or a module allocated (`ebm.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ebm import calibration
from ebm.checkpoint import MAX_HEADER_BYTES, WeightsError, model_from_bytes, model_to_bytes
from ebm.landscape import marginal_densities
from ebm.limits import (
    MAX_APP_PARAMETERS,
    MAX_APP_STEP_MACS,
    MAX_CHAIN_STEPS,
    MAX_ITERATION_MACS,
    MAX_TRAINING_MACS,
    REFERENCE_STEP_MACS,
    STEP_OVERHEAD_MACS,
    UPDATE_OVERHEAD_MACS,
    ModelTooLarge,
    RequestTooLarge,
    TrainingTooCostly,
    autoencoder_forward_macs,
    check_app_architecture,
    check_request_size,
    check_training_cost,
    energy_iteration_macs,
    energy_step_macs,
    parameter_count,
    stage_macs,
    training_macs,
)
from ebm.models import Autoencoder, AutoencoderConfig, EnergyConfig, EnergyNet, LatentEBM
from ebm.scheduler import Cancelled
from ebm.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def header_only(autoencoder: dict, energy: dict) -> bytes:
    """A safetensors file with mnist-ebm metadata and no tensors at all: a few hundred bytes."""
    header = json.dumps({"__metadata__": {"format": "mnist-ebm/1", "autoencoder": json.dumps(autoencoder),
                                          "energy": json.dumps(energy)}}).encode()
    return len(header).to_bytes(8, "little") + header


WIDEST = (
    {"hidden_dim": 4096, "latent_dim": 4},
    {"latent_dim": 4, "hidden_dim": 4096, "num_layers": 16, "tilt_sigma": 3.0},
)


def test_a_step_costs_what_the_layers_multiply():
    assert REFERENCE_STEP_MACS == 2 * (4 * 96 + 96 * 96 + 96 * 96 + 96)  # the shipped net, forward and backward
    assert energy_step_macs(EnergyConfig(4, 256, 4)) == 2 * (4 * 256 + 3 * 256 * 256 + 256)
    assert parameter_count(AutoencoderConfig(), EnergyConfig()) == sum(
        t.numel() for t in LatentEBM(Autoencoder(AutoencoderConfig()), EnergyNet(EnergyConfig()),
                                     torch.zeros(4), torch.ones(4)).state_dict().values())


def test_a_request_on_a_costlier_net_gets_proportionally_fewer_chain_steps():
    assert check_request_size(1000, MAX_CHAIN_STEPS // 1000) == MAX_CHAIN_STEPS  # the shipped net: the chain-step cap
    heavy = 8 * REFERENCE_STEP_MACS
    check_request_size(1000, MAX_CHAIN_STEPS // 8000, heavy)
    with pytest.raises(RequestTooLarge, match=r"8\.0x the shipped one per step.*fits 250,000 chain-steps"):
        check_request_size(1000, MAX_CHAIN_STEPS // 8000 + 1, heavy)
    with pytest.raises(RequestTooLarge, match="chain-steps is above the cap"):  # a cheaper net does not lift the cap
        check_request_size(1000, MAX_CHAIN_STEPS // 1000 + 1, REFERENCE_STEP_MACS // 4)


def test_the_app_serves_models_up_to_its_budgets_and_names_the_one_exceeded():
    check_app_architecture(AutoencoderConfig(), EnergyConfig())
    check_app_architecture(AutoencoderConfig(2048, 4), EnergyConfig(4, 256, 4))  # the Train form's widest
    with pytest.raises(ModelTooLarge, match=r"costs 31,467,520 multiply-adds per step, 832x the shipped net"):
        check_app_architecture(AutoencoderConfig(), EnergyConfig(4, 1024, 16))
    with pytest.raises(ModelTooLarge, match=f"parameters; the app serves at most {MAX_APP_PARAMETERS:,}"):
        check_app_architecture(AutoencoderConfig(4096, 4), EnergyConfig())
    assert energy_step_macs(EnergyConfig(4, 1024, 16)) > MAX_APP_STEP_MACS


def test_an_oversized_architecture_is_refused_from_the_header_alone():
    with pytest.raises(
        WeightsError, match=r"^up\.safetensors is too large for this app: its energy net \(16 hidden layers of 4096\)"
    ):
        model_from_bytes(header_only(*WIDEST), name="up.safetensors", check_architecture=check_app_architecture)


def test_a_header_declaring_the_widest_model_without_tensors_is_refused_in_bounded_memory():
    """Before the header-first check this built the declared model (about 1.3 GB) to find it had no tensors."""
    script = textwrap.dedent(f"""
        import json, resource, sys
        sys.path.insert(0, {str(REPO)!r})
        from ebm.checkpoint import WeightsError, model_from_bytes
        data = bytes.fromhex({header_only(*WIDEST).hex()!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            model_from_bytes(data, name="bomb")
            message = None
        except WeightsError as e:
            message = str(e)
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({{"grew_kb": grew, "message": message, "size": len(data)}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["size"] < 400
    assert result["message"].startswith("bomb: tensors do not match the architecture; missing [")
    assert result["grew_kb"] < 100 * 1024, result  # peak RSS grew by less than 100 MB


@pytest.mark.parametrize("data,match", [
    (b"\x07", "header length is missing"),
    ((10**9).to_bytes(8, "little") + b"{}", "past the end of the file"),
    ((MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b" " * (MAX_HEADER_BYTES + 1), f"above {MAX_HEADER_BYTES:,} bytes"),
    ((5).to_bytes(8, "little") + b"[1,2]", "header is not what safetensors writes"),
    ((7).to_bytes(8, "little") + b'{"x":1}', "header is not what safetensors writes"),
])
def test_a_malformed_header_is_refused_in_one_sentence(data, match):
    with pytest.raises(WeightsError, match=match):
        model_from_bytes(data, name="f")


def test_integer_tensors_are_refused(tiny_model):
    model, _ = tiny_model
    data = model_to_bytes(model)
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    from safetensors.torch import save as save_tensors

    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    tensors["code_std"] = torch.ones(model.latent_dim, dtype=torch.int32)
    with pytest.raises(WeightsError, match="'code_std' holds torch.int32, not floating-point numbers"):
        model_from_bytes(save_tensors(tensors, metadata=header["__metadata__"]))


def test_a_loaded_model_is_the_saved_one(tiny_model):
    model, _ = tiny_model
    loaded, _ = model_from_bytes(model_to_bytes(model))
    assert all(p.device.type == "cpu" and p.requires_grad for p in loaded.parameters())
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_the_grid_quadrature_stops_when_asked(tiny_model):
    asked = []

    def stop_after_three(slices_done: int) -> bool:
        asked.append(slices_done)
        return slices_done == 3

    with pytest.raises(Cancelled, match="after 3 of 8 slices"):
        marginal_densities(tiny_model[0], resolution=8, should_stop=stop_after_three)
    assert asked == [1, 2, 3]


# ---- training ------------------------------------------------------------------------------------
# The default autoencoder before issue 11 (12 epochs), and the stage 2 of then: 16,000 iterations of 20 Langevin steps.
MLP = dict(ae_architecture="mlp", ae_hidden_dim=512, ae_lr=1e-3, ae_epochs=12, ebm_iterations=16_000, mcmc_steps=20)


def mlp_config(**settings) -> TrainConfig:
    """A config with the MLP autoencoder and the stage 2 above, whose cost the figures in these tests are
    worked out for."""
    return TrainConfig(**{**MLP, **settings})


def test_a_training_costs_its_epochs_and_iterations():
    default = mlp_config()  # the formulas below are the MLP autoencoder's
    per_image = 3 * 2 * (784 * 512 + 512 * 512 + 512 * 4)  # forward through the six layers, backward twice that
    epoch = 60_000 * per_image + 469 * UPDATE_OVERHEAD_MACS  # 469 batches of 128
    iteration = (
        20 * (512 * REFERENCE_STEP_MACS + STEP_OVERHEAD_MACS)
        + 1024 * REFERENCE_STEP_MACS * 3 // 2
        + UPDATE_OVERHEAD_MACS
    )
    assert stage_macs(default) == {"autoencoder": 12 * epoch, "energy": 16_000 * iteration}
    assert energy_iteration_macs(default) == iteration and training_macs(default) == 12 * epoch + 16_000 * iteration
    assert MAX_TRAINING_MACS / 6 < training_macs(default) < MAX_TRAINING_MACS / 4  # the defaults: a fifth of the cap
    check_training_cost(default)
    check_training_cost(TrainConfig())  # and today's default, the conv autoencoder
    assert stage_macs(mlp_config(ae_epochs=0))["autoencoder"] == 0


@pytest.mark.parametrize(
    "settings,match",
    [
        (
            dict(ae_hidden_dim=2048, ae_batch_size=4096),
            r"^one autoencoder batch of 4,096 images 2,048 wide costs 143 billion "
            r"multiply-adds, above the cap of 100 billion per batch \(a few seconds\): lower stage 1's batch "
            r"size to at most 2,868",
        ),
        (
            dict(ebm_hidden_dim=256, ebm_layers=4, ebm_batch_size=4096, mcmc_steps=500),
            r"^one energy-net iteration of 4,096 × 500 "
            r"Langevin steps costs 817 billion .* lower the Langevin steps per update to at most 58, or stage "
            r"2's batch size$",
        ),
        (dict(ebm_hidden_dim=1024, ebm_layers=8, ebm_batch_size=4096, mcmc_steps=500), r"lower stage 2's batch size$"),
        (
            dict(ae_epochs=200),
            r"^the whole training costs 62 trillion multiply-adds, above the app's cap of 60 trillion "
            r"\(about 30 minutes\): lower the epochs to at most 193 \(`python -m ebm train` has no cap\)$",
        ),
        (dict(ebm_iterations=100_000), r"lower the iterations to at most 98,786 "),
        (
            dict(
                ae_epochs=0, ebm_iterations=100_000, ebm_hidden_dim=8, ebm_batch_size=8, mcmc_steps=500
            ),  # tiny steps, many
            r"lower the iterations to at most",
        ),
        (
            dict(
                ae_hidden_dim=2048,
                ae_epochs=200,
                ebm_hidden_dim=256,
                ebm_layers=4,
                ebm_batch_size=1024,
                mcmc_steps=100,
                ebm_iterations=100_000,
            ),
            r"lower the iterations and the epochs",
        ),
    ],
)
def test_a_training_above_the_caps_is_refused_naming_the_setting_to_lower(settings, match):
    with pytest.raises(TrainingTooCostly, match=match):
        check_training_cost(mlp_config(**settings))


def test_what_a_refusal_suggests_fits():
    check_training_cost(mlp_config(ae_hidden_dim=2048, ae_batch_size=2868))
    check_training_cost(
        mlp_config(ebm_hidden_dim=256, ebm_layers=4, ebm_batch_size=4096, mcmc_steps=58, ebm_iterations=500)
    )
    assert (
        energy_iteration_macs(mlp_config(ebm_hidden_dim=256, ebm_layers=4, ebm_batch_size=4096, mcmc_steps=59))
        > MAX_ITERATION_MACS
    )
    check_training_cost(mlp_config(ae_epochs=193))
    check_training_cost(mlp_config(ebm_iterations=98_786))


def test_the_time_estimate_is_measured_here_once_per_shape(monkeypatch):
    """`ebm.calibration` times a miniature of the training through the real code, once per shape."""
    timed = []
    real_train = calibration.train

    def counting_train(model, train_images, test_images, cfg):
        timed.append((cfg.ae_hidden_dim, cfg.ae_batch_size, cfg.ebm_batch_size, cfg.mcmc_steps, len(train_images)))
        return real_train(model, train_images, test_images, cfg)

    monkeypatch.setattr(calibration, "train", counting_train)
    calibration._paces.cache_clear()
    small = TrainConfig(
        ae_hidden_dim=16, ebm_hidden_dim=8, ebm_layers=2, ebm_batch_size=1024, mcmc_steps=50, ebm_iterations=300
    )
    try:
        seconds = calibration.estimate_seconds(small)
        assert (
            timed == [(16, 128, 256, 20, 3 * 128)] * 2
        )  # 3 batches of 128; 256 chains of 20 steps; warm-up, then timed
        longer = calibration.estimate_seconds(dataclasses.replace(small, ebm_iterations=600))
        calibration.estimate_seconds(dataclasses.replace(small, ae_epochs=1))
        assert len(timed) == 2  # same shapes, other lengths: no second timing
        paces = calibration._paces(dataclasses.astuple(calibration.miniature(small)))
        assert set(paces) == {"autoencoder", "energy"} and all(0 < p < float("inf") for p in paces.values())
        assert seconds == pytest.approx(sum(m / paces[s] for s, m in stage_macs(small).items()))
        assert longer == pytest.approx(seconds + stage_macs(small)["energy"] / paces["energy"])  # twice the iterations
        calibration.estimate_seconds(dataclasses.replace(small, ae_hidden_dim=32))
        assert len(timed) == 4  # another width: timed again
    finally:
        calibration._paces.cache_clear()


@pytest.mark.parametrize("architecture, hidden, channels, latent", [("mlp", 512, 32, 4), ("mlp", 24, 32, 3),
                                                                   ("conv", 256, 32, 4), ("conv", 40, 5, 2)])
def test_autoencoder_macs_and_parameters_match_torch_counts(architecture, hidden, channels, latent):
    """The cost model's multiply-adds and parameters of either autoencoder are torch's own counts."""
    config = AutoencoderConfig(hidden, latent, architecture, channels)
    autoencoder = Autoencoder(config)
    with FlopCounterMode(display=False) as counter:
        autoencoder.decode_logits(autoencoder.encode(torch.zeros(1, 784)))
    assert autoencoder_forward_macs(config) == counter.get_total_flops() // 2
    energy = EnergyConfig(latent_dim=latent)
    own = sum(p.numel() for p in autoencoder.parameters()) + sum(p.numel() for p in EnergyNet(energy).parameters())
    assert parameter_count(config, energy) == own + 2 * latent


def test_a_conv_autoencoder_costs_its_own_multiply_adds_in_training():
    """The app's training cap counts a conv autoencoder's epochs by the conv's cost, not the MLP's."""
    mlp, conv = mlp_config(), TrainConfig(ae_architecture="conv", ae_hidden_dim=256, ae_conv_channels=32, ae_epochs=12)
    ratio = stage_macs(conv)["autoencoder"] / stage_macs(mlp)["autoencoder"]
    per_image = autoencoder_forward_macs(conv.autoencoder_config()) / autoencoder_forward_macs(mlp.autoencoder_config())
    assert 3.5 < ratio <= per_image < 4  # 5.0 M vs 1.3 M multiply-adds an image; the update overhead is shared
