"""Resource limits for serving requests: what one interactive request, one served model and one training may cost.

Work is counted in multiply-adds (MACs) of the networks, from their architecture alone:
- a request runs chains × steps energy evaluations of `energy_step_macs` each, capped at what
  the cap in chain-steps costs on the shipped model (`check_request_size`);
- a model the app serves (an upload, a run, a training) has at most `MAX_APP_PARAMETERS`
  parameters and `MAX_APP_STEP_MACS` per energy evaluation (`check_app_architecture`), which
  bounds its memory, each decoded digit and the Explorer's grid quadrature;
- a training the app runs costs at most `MAX_ITERATION_MACS` per batch or iteration and
  `MAX_TRAINING_MACS` in all (`check_training_cost`).
The app checks these before any work starts; the CLI is not capped, since there the user pays
for what they ask.
"""

from __future__ import annotations

import math

import torch

from .models import CONV_GRID, IMAGE_PIXELS, Autoencoder, AutoencoderConfig, EnergyConfig, EnergyNet
from .training import TrainConfig
from .validation import check_int

MAX_APP_CHAINS = 1024
"""Most chains one interactive request may run."""

MAX_CHAIN_STEPS = 2_000_000
"""Most chains × steps one interactive request may run (≈ 5-10 s on one CPU core)."""

MAX_APP_STEPS = 20_000
"""Most Langevin steps K per chain in the app."""

MAX_GIF_CHAINS = 64
"""Chains shown in an animation (the final grid shows them all)."""

MAX_GIF_FRAMES = 51
"""Frames in an animation; more recorded steps are thinned evenly (first and last always kept)."""




def energy_step_macs(config: EnergyConfig) -> int:
    """Multiply-adds of one energy-and-gradient evaluation for one chain: the forward pass through
    the MLP and the hand-written backward pass, which multiplies by every weight matrix once more."""
    widths = [config.latent_dim] + [config.hidden_dim] * config.num_layers + [1]
    return 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:]))


REFERENCE_STEP_MACS = energy_step_macs(EnergyConfig())
"""One step of the default (and shipped) energy net, 96 wide with 3 hidden layers: 37,824 MACs."""

MAX_REQUEST_MACS = MAX_CHAIN_STEPS * REFERENCE_STEP_MACS
"""Most work one interactive request may do: the chain-step cap on the shipped model."""

MAX_APP_STEP_MACS = 16 * REFERENCE_STEP_MACS
"""Most MACs per energy evaluation in a model the app serves (16x the shipped net, e.g. 256 wide
with 4 hidden layers): the Explorer's quadrature evaluates the energy at a million grid points."""

MAX_APP_PARAMETERS = 12_000_000
"""Most parameters in a model the app serves (48 MB of float32; the shipped one has 1.3 M):
the largest the Train form makes, 2,048-wide autoencoder included."""


class RequestTooLarge(ValueError):
    """An interactive request above the caps; the message says which cap and what would fit."""


class ModelTooLarge(ValueError):
    """A model above what the app serves; the message says which budget and by how much."""


def parameter_count(autoencoder: AutoencoderConfig, energy: EnergyConfig) -> int:
    """Parameters of a model with these configs, counted on the meta device: nothing is allocated."""
    with torch.device("meta"):
        modules = (Autoencoder(autoencoder), EnergyNet(energy))
    return sum(p.numel() for m in modules for p in m.parameters()) + 2 * autoencoder.latent_dim  # + code mean, std


def check_app_architecture(autoencoder: AutoencoderConfig, energy: EnergyConfig) -> None:
    """Raise ModelTooLarge unless a model of these shapes fits the app's budgets (see the module docstring)."""
    macs = energy_step_macs(energy)
    if macs > MAX_APP_STEP_MACS:
        raise ModelTooLarge(
            f"its energy net ({energy.num_layers} hidden layers of {energy.hidden_dim}) costs {macs:,} multiply-adds "
            f"per step, {macs / REFERENCE_STEP_MACS:.0f}x the shipped net; the app serves at most "
            f"{MAX_APP_STEP_MACS // REFERENCE_STEP_MACS}x (`python -m ebm sample` has no cap)")
    params = parameter_count(autoencoder, energy)
    if params > MAX_APP_PARAMETERS:
        raise ModelTooLarge(
            f"it has {params:,} parameters; the app serves at most {MAX_APP_PARAMETERS:,} "
            "(`python -m ebm sample` has no cap)")


def check_request_size(num_chains: int, num_steps: int, step_macs: int = REFERENCE_STEP_MACS) -> int:
    """Raise RequestTooLarge unless chains ≤ MAX_APP_CHAINS, K ≤ MAX_APP_STEPS, chains × K ≤ MAX_CHAIN_STEPS
    and chains × K × `step_macs` (the model's `energy_step_macs`) ≤ MAX_REQUEST_MACS.

    Returns the request's chain-steps (chains × K).
    """
    chains = check_int("number of chains", num_chains, 1, math.inf)
    steps = check_int("number of steps K", num_steps, 1, math.inf)
    if chains > MAX_APP_CHAINS:
        raise RequestTooLarge(f"{chains} chains requested; the app runs at most {MAX_APP_CHAINS} at once")
    if steps > MAX_APP_STEPS:
        raise RequestTooLarge(f"K = {steps} steps requested; the app runs at most {MAX_APP_STEPS:,} steps per chain")
    total = chains * steps
    if total > MAX_CHAIN_STEPS:
        raise RequestTooLarge(
            f"{chains} chains × {steps} steps = {total:,} chain-steps is above the cap of {MAX_CHAIN_STEPS:,}; "
            f"with {chains} chains use K ≤ {MAX_CHAIN_STEPS // chains:,}, or fewer chains "
            f"(the command line `python -m ebm sample` has no cap)"
        )
    step_macs = check_int("multiply-adds per step", step_macs, 1, math.inf)
    if total * step_macs > MAX_REQUEST_MACS:
        fits = max(1, MAX_REQUEST_MACS // step_macs)
        raise RequestTooLarge(
            f"{chains} chains × {steps} steps on this model's energy net, {step_macs / REFERENCE_STEP_MACS:.1f}x the "
            f"shipped one per step, is above the cap of {MAX_REQUEST_MACS:,} multiply-adds; it fits "
            f"{fits:,} chain-steps, e.g. {min(chains, fits):,} chains × {max(1, fits // min(chains, fits)):,} steps "
            f"(the command line `python -m ebm sample` has no cap)"
        )
    return total


def frame_indices(num_records: int, max_frames: int = MAX_GIF_FRAMES) -> list[int]:
    """Indices of at most `max_frames` records, evenly spread, always including the first and last."""
    num_records = check_int("number of records", num_records, 1, math.inf)
    max_frames = check_int("max_frames", max_frames, 1, math.inf)
    if num_records <= max_frames:
        return list(range(num_records))
    if max_frames == 1:
        return [num_records - 1]
    step = (num_records - 1) / (max_frames - 1)
    return sorted({round(i * step) for i in range(max_frames)})


# ---- training ------------------------------------------------------------------------------------
# One training the app runs (`ebm.jobs.start_training`) is capped in multiply-adds from its settings,
# like a request: per autoencoder batch or stage-2 iteration, so that a stop is honoured within
# seconds, and per run. Fixed per-call costs (op launches, the optimiser) count as the MACs they
# are worth, so that many tiny steps are not free. Times are for one core of the 2-core server
# these were measured on (35-55 GMAC/s on the training's matrices); the command line is not capped.

TRAIN_SET_IMAGES = 60_000
"""Training images in MNIST and in Fashion-MNIST: what one autoencoder epoch passes over."""

STEP_OVERHEAD_MACS = 4_000_000
"""A Langevin step's fixed cost (about 0.1 ms), in multiply-adds."""

UPDATE_OVERHEAD_MACS = 50_000_000
"""An optimiser update's fixed cost (about 1.2 ms: an autoencoder batch or a contrastive-divergence update)."""

MAX_ITERATION_MACS = 100_000_000_000
"""Most work in one autoencoder batch or one stage-2 iteration: about 2-3 s."""

MAX_TRAINING_MACS = 60_000_000_000_000
"""Most work in one training the app runs: about 30 min (the default settings cost a fifth of it)."""


class TrainingTooCostly(ValueError):
    """A training above what the app runs; the message names the setting to lower."""


def autoencoder_forward_macs(config: AutoencoderConfig) -> int:
    """Multiply-adds of one image through the encoder and the decoder. MLP: 784 -> h -> h -> d and back.
    Conv (c channels): a 4x4 kernel makes 16 x in x out multiply-adds per position of its smaller side, the
    14 x 14 or 7 x 7 maps, for a convolution and a transposed one alike; then 7·7·2c -> h -> d and back."""
    h, d, c = config.hidden_dim, config.latent_dim, config.conv_channels
    if config.architecture == "conv":
        flat = 2 * c * CONV_GRID**2
        convs = 16 * ((2 * CONV_GRID) ** 2 * c + CONV_GRID**2 * c * 2 * c)
        return 2 * (convs + flat * h + h * d)
    return 2 * (IMAGE_PIXELS * h + h * h + h * d)


def autoencoder_example_macs(config: TrainConfig) -> int:
    """Multiply-adds of one training image: the forward pass and a backward pass that costs twice as much."""
    return 3 * autoencoder_forward_macs(config.autoencoder_config())


def autoencoder_batch_macs(config: TrainConfig) -> int:
    """One stage-1 batch: its images forward and backward, and the update."""
    return config.ae_batch_size * autoencoder_example_macs(config) + UPDATE_OVERHEAD_MACS


def energy_iteration_parts(config: TrainConfig) -> tuple[int, int]:
    """(one Langevin step of every negative's chain, the update) of a stage-2 iteration, in multiply-adds;
    the update's forward and backward pass over data and negatives costs 1.5 energy-and-gradient steps each."""
    step = energy_step_macs(config.energy_config())
    chains = config.ebm_batch_size * config.negatives_per_datapoint
    return chains * step + STEP_OVERHEAD_MACS, (config.ebm_batch_size + chains) * step * 3 // 2 + UPDATE_OVERHEAD_MACS


def energy_iteration_macs(config: TrainConfig) -> int:
    """One stage-2 iteration: K Langevin steps, then the update."""
    per_step, update = energy_iteration_parts(config)
    return config.mcmc_steps * per_step + update


def stage_macs(config: TrainConfig, train_images: int = TRAIN_SET_IMAGES) -> dict[str, int]:
    """{"autoencoder": ..., "energy": ...}: the multiply-adds of each stage on `train_images` images."""
    batches = math.ceil(train_images / config.ae_batch_size)
    epoch = train_images * autoencoder_example_macs(config) + batches * UPDATE_OVERHEAD_MACS
    return {"autoencoder": config.ae_epochs * epoch, "energy": config.ebm_iterations * energy_iteration_macs(config)}


def training_macs(config: TrainConfig) -> int:
    """Multiply-adds of a whole training on MNIST or Fashion-MNIST, both stages."""
    return sum(stage_macs(config).values())


def _amount(macs: int) -> str:
    """'143 billion', '81 trillion': a count of multiply-adds a visitor can read."""
    return f"{macs / 1e12:,.0f} trillion" if macs >= 1e13 else f"{macs / 1e9:,.0f} billion"


def check_training_cost(config: TrainConfig) -> None:
    """Raise TrainingTooCostly unless one batch, one iteration and the whole run fit the caps above."""
    batch = autoencoder_batch_macs(config)
    if batch > MAX_ITERATION_MACS:
        fits = max(1, (MAX_ITERATION_MACS - UPDATE_OVERHEAD_MACS) // autoencoder_example_macs(config))
        raise TrainingTooCostly(
            f"one autoencoder batch of {config.ae_batch_size:,} images {config.ae_hidden_dim:,} wide costs "
            f"{_amount(batch)} multiply-adds, above the cap of {_amount(MAX_ITERATION_MACS)} per batch (a few "
            f"seconds): lower stage 1's batch size to at most {fits:,}, or its hidden width")
    iteration = energy_iteration_macs(config)
    if iteration > MAX_ITERATION_MACS:
        per_step, update = energy_iteration_parts(config)
        fits = (MAX_ITERATION_MACS - update) // per_step
        lower = (f"lower the Langevin steps per update to at most {fits:,}, or stage 2's batch size" if fits >= 1
                 else "lower stage 2's batch size")
        raise TrainingTooCostly(
            f"one energy-net iteration of {config.ebm_batch_size:,} × {config.mcmc_steps:,} Langevin steps costs "
            f"{_amount(iteration)} multiply-adds, above the cap of {_amount(MAX_ITERATION_MACS)} per iteration "
            f"(a few seconds): {lower}")
    stages = stage_macs(config)
    total = sum(stages.values())
    if total > MAX_TRAINING_MACS:
        if stages["energy"] >= stages["autoencoder"]:
            fits = (MAX_TRAINING_MACS - stages["autoencoder"]) // iteration
            lower = f"lower the iterations to at most {fits:,}" if fits >= 1 else "lower the iterations and the epochs"
        else:
            fits = (MAX_TRAINING_MACS - stages["energy"]) // (stages["autoencoder"] // config.ae_epochs)
            lower = f"lower the epochs to at most {fits:,}" if fits >= 1 else "lower the epochs and the iterations"
        raise TrainingTooCostly(
            f"the whole training costs {_amount(total)} multiply-adds, above the app's cap of "
            f"{_amount(MAX_TRAINING_MACS)} (about 30 minutes): {lower} (`python -m ebm train` has no cap)")
