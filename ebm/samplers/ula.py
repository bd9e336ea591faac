"""ULA, the unadjusted Langevin algorithm: x' = x - (ε²/2) ∇E(x) + ε ξ, every proposal taken.

Cheap (one gradient a step) but biased for finite ε: on N(0, σ²) its stationary variance is
σ² / (1 - ε²/(4σ²)).
"""

from __future__ import annotations

import torch

from .base import EnergyAndGrad, SamplerInfo, SamplingAlgorithm, chain_algorithm, check_step_size, compiled_block
from .integrators import langevin_proposal
from .metropolis import accept_all


def ula(energy_and_grad: EnergyAndGrad, step_size: float,
        generator: torch.Generator | None = None) -> SamplingAlgorithm:
    """Unadjusted Langevin algorithm: every proposal is taken."""
    eps = check_step_size(step_size)

    def move(state, noise, uniform):
        return accept_all(langevin_proposal(energy_and_grad, state, noise, eps))

    compiled = compiled_block(energy_and_grad, "langevin", eps, False)
    return chain_algorithm(energy_and_grad, move, adjusted=False, generator=generator, compiled=compiled)


INFO = SamplerInfo(ula, "ULA", adjusted=False, help="takes every Langevin step: fast, biased for finite ε")
