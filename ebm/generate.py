"""Drawing digits from a trained model: run chains in latent space, decode, binarize.

The one entry point that the CLI, the app and the evaluation share, so that "default
settings" mean the same everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .images import image_grid
from .models import LatentEBM
from .samplers import (
    MAX_CHAINS,
    MAX_STEPS,
    SAMPLERS,
    ChainResult,
    ChainState,
    EnergyAndGrad,
    SamplingAlgorithm,
    Traces,
    build_sampler,
    gradients_per_step,
    run_chains,
    sampler_params,
)
from .validation import Settings, setting

STARTS = ("noise", "data")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SampleSettings(Settings):
    """What defines a sample: change any of these and you get different digits. Checked when made."""

    sampler: str = setting("mala", choices=tuple(SAMPLERS), label="sampler", help="how the chains move (ebm.samplers)")
    step_size: float = setting(0.5, low=0.0, low_open=True, label="step size ε",
                               help="noise scale of a Langevin step; the drift is ε²/2 times the energy gradient")
    num_steps: int = setting(500, low=1, high=MAX_STEPS, label="number of steps K", help="steps per chain")
    num_chains: int = setting(64, low=1, high=MAX_CHAINS, label="number of chains", help="one digit per chain")
    record_every: int = setting(10, low=1, high=MAX_STEPS, help="one animation frame per this many steps")
    start: str = setting("noise", choices=STARTS, label="start",
                         help="noise: codes drawn from N(0, I); data: codes of random training digits")
    seed: int = setting(0, low=0, high=MAX_SEED, label="seed", help="same settings and seed, same digits")
    # The sampler's own parameters (`ebm.samplers.param_specs`, e.g. HMC's leapfrog_steps), given as a
    # mapping or pairs and kept as (name, value) pairs with the defaults filled in: one sampler's are
    # dropped when another is chosen. New samplers' parameters need no new field here.
    sampler_params: tuple = ()

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "sampler_params", sampler_params(self.sampler, self.sampler_params))

    def gradients_per_step(self) -> int:
        """Energy gradients each step costs with this sampler: the request caps count them."""
        return gradients_per_step(self.sampler, self.sampler_params)

    def as_dict(self) -> dict:
        """The settings as a plain dict (sampler_params as pairs), for JSON output and reports."""
        return asdict(self)


def initial_codes(settings: SampleSettings, dim: int, generator: torch.Generator,
                  data_codes: torch.Tensor | None = None) -> torch.Tensor:
    """Starting points: N(0, I) noise, or randomly chosen data codes."""
    if settings.start == "noise":
        return torch.randn(settings.num_chains, dim, generator=generator)
    if data_codes is None or len(data_codes) == 0:
        raise ValueError("start='data' needs data codes to start from")
    if data_codes.ndim != 2 or data_codes.shape[1] != dim:
        raise ValueError(f"data codes have shape {tuple(data_codes.shape)}; the model's latent dimension is {dim}")
    idx = torch.randint(len(data_codes), (settings.num_chains,), generator=generator)
    return data_codes[idx].clone()


def sample_chains(
    model: LatentEBM,
    settings: SampleSettings,
    data_codes: torch.Tensor | None = None,
    callback: Callable[[int], bool | None] | None = None,
    watch: Callable[[ChainState, Traces], None] | None = None,
    energy: EnergyAndGrad | None = None,
) -> ChainResult:
    """Run the configured chains on the model's energy (or `energy`, e.g. a conditional one from
    `ebm.conditioning`; default the prior's `model.sampling_energy()`); deterministic for a given seed.

    `callback` is `run_chains`'s; `watch(state, traces)` sees each block's last state and traces as it ends
    (a live view), before `callback`, and draws no random numbers, so the chains are the same with or without it.
    """
    generator = torch.Generator().manual_seed(int(settings.seed))
    start = initial_codes(settings, model.latent_dim, generator, data_codes)
    energy = model.sampling_energy() if energy is None else energy
    sampler = build_sampler(settings.sampler, energy, settings.step_size, generator,
                            **dict(settings.sampler_params))
    if watch is not None:
        sampler = watched(sampler, watch)
    return run_chains(sampler, sampler.init(start), settings.num_steps, settings.record_every, callback)


def watched(sampler: SamplingAlgorithm, watch: Callable[[ChainState, Traces], None]) -> SamplingAlgorithm:
    """The same sampler, with `watch(state, traces)` called after each block of `steps`."""

    def steps(state: ChainState, n: int) -> tuple[ChainState, Traces]:
        state, traces = sampler.steps(state, n)
        watch(state, traces)
        return state, traces

    return sampler._replace(steps=steps)


@torch.no_grad()
def decode_binary(model: LatentEBM, codes: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Standardized codes -> (N, 784) images in {0, 1}, thresholded at 0.5 like the data."""
    return torch.cat([(model.decode(c) > 0.5).float() for c in codes.split(chunk)])


def chain_frames(model: LatentEBM, trajectory: torch.Tensor, ncols: int | None = None,
                 scale: int = 2) -> list[np.ndarray]:
    """One grid image per recorded step of the chains, for an animation of digits forming."""
    n = trajectory.shape[1]
    ncols = ncols or math.ceil(math.sqrt(n))
    images = decode_binary(model, trajectory.reshape(-1, trajectory.shape[-1])).reshape(len(trajectory), n, -1)
    return [image_grid(frame, ncols, scale=scale) for frame in images]


CHECKUP = SampleSettings(num_steps=100, num_chains=32, record_every=100)
"""A quick sample at the default step size (32 chains × 100 MALA steps), to catch weights that
load but sample nothing sensible."""

MIN_CHECKUP_ACCEPTANCE = 0.05
"""A well-trained model accepts about half its MALA steps at the default ε; below this the chains are stuck."""


def sampling_problem(model: LatentEBM) -> str | None:
    """What is wrong with the model's samples at default settings, as one sentence; None when nothing is.

    Weights can be valid tensors of the right shapes and still be nonsense (finite garbage, a
    diverged or barely trained run): their chains do not move, or decode to blank or solid images.
    """
    result = sample_chains(model, CHECKUP)
    if not (torch.isfinite(result.energies).all() and torch.isfinite(result.state.position).all()):
        return "its energy is not finite where the chains go"
    acceptance = float(result.acceptance.mean())
    if acceptance < MIN_CHECKUP_ACCEPTANCE:
        return (f"its chains barely move at the default settings (MALA acceptance {acceptance:.1%}), "
                "so its samples stay where they started")
    ink = float(decode_binary(model, result.state.position).mean())
    if not 0.005 <= ink <= 0.9:
        return f"its samples decode to {'blank' if ink < 0.005 else 'solid'} images ({ink:.1%} of pixels on)"
    return None
