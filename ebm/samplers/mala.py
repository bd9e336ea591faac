"""MALA, the Metropolis-adjusted Langevin algorithm: ULA's proposal, then a Metropolis-Hastings test.

The test makes exp(-E) exactly invariant for every ε. The Langevin proposal is not symmetric,
so the test includes its density ratio: with ξ the forward noise,
log q(x|x') - log q(x'|x) = |ξ|²/2 - |x - x' + (ε²/2)∇E(x')|² / (2ε²).
"""

from __future__ import annotations

import torch

from .base import EnergyAndGrad, SamplerInfo, SamplingAlgorithm, chain_algorithm, check_step_size, compiled_block
from .integrators import langevin_proposal
from .metropolis import metropolis_hastings


def mala(energy_and_grad: EnergyAndGrad, step_size: float,
         generator: torch.Generator | None = None) -> SamplingAlgorithm:
    """Metropolis-adjusted Langevin algorithm: the ULA proposal plus an accept/reject test."""
    eps = check_step_size(step_size)

    def move(state, noise, uniform):
        proposal = langevin_proposal(energy_and_grad, state, noise, eps)
        backward = state.position - proposal.position + 0.5 * eps * eps * proposal.grad
        log_q_ratio = 0.5 * noise.square().sum(-1) - backward.square().sum(-1) / (2 * eps * eps)
        return metropolis_hastings(state, proposal, state.energy - proposal.energy + log_q_ratio, uniform)

    compiled = compiled_block(energy_and_grad, "langevin", eps, True)
    return chain_algorithm(energy_and_grad, move, adjusted=True, generator=generator, compiled=compiled)


INFO = SamplerInfo(mala, "MALA", adjusted=True, help="adds a Metropolis-Hastings test that makes the chain exact")
