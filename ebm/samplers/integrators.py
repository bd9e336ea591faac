"""Proposals: how a sampler moves its chains before any accept/reject test.

- `langevin_proposal`: one Euler-Maruyama step of overdamped Langevin dynamics,
  x' = x - (ε²/2) ∇E(x) + ε ξ (ULA takes it as is, MALA tests it).
"""

from __future__ import annotations

import torch

from .base import ChainState, EnergyAndGrad


def langevin_proposal(energy_and_grad: EnergyAndGrad, state: ChainState, noise: torch.Tensor,
                      step_size: float) -> ChainState:
    """x' = x - (ε²/2) ∇E(x) + ε ξ with its energy and gradient."""
    position = state.position - 0.5 * step_size * step_size * state.grad + step_size * noise
    return ChainState(position, *energy_and_grad(position))

