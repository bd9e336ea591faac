"""Resource limits for serving requests: what one interactive request and one served model may cost.

Work is counted in multiply-adds (MACs) of the networks, from their architecture alone:
- a request runs chains × steps energy evaluations of `energy_step_macs` each, capped at what
  the cap in chain-steps costs on the shipped model (`check_request_size`);
- a model the app serves (an upload, a run, a training) has at most `MAX_APP_PARAMETERS`
  parameters and `MAX_APP_STEP_MACS` per energy evaluation (`check_app_architecture`), which
  bounds its memory, each decoded digit and the Explorer's grid quadrature.
The app checks both before any work starts; the CLI is not capped, since there the user pays
for what they ask.
"""

from __future__ import annotations

import math

import torch

from .models import Autoencoder, AutoencoderConfig, EnergyConfig, EnergyNet
from .sampling import check_int

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
