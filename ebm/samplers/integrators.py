"""Proposals: how a sampler moves its chains before any accept/reject test.

- `langevin_proposal`: one Euler-Maruyama step of overdamped Langevin dynamics,
  x' = x - (ε²/2) ∇E(x) + ε ξ (ULA takes it as is, MALA tests it);
- `leapfrog`: L velocity-Verlet steps of Hamiltonian dynamics with H(x, p) = E(x) + |p|²/2,
  volume-preserving and reversible, so HMC's test only needs the change in H.
"""

from __future__ import annotations

import torch

from .base import ChainState, EnergyAndGrad


def langevin_proposal(energy_and_grad: EnergyAndGrad, state: ChainState, noise: torch.Tensor,
                      step_size: float) -> ChainState:
    """x' = x - (ε²/2) ∇E(x) + ε ξ with its energy and gradient."""
    position = state.position - 0.5 * step_size * step_size * state.grad + step_size * noise
    return ChainState(position, *energy_and_grad(position))


def leapfrog(energy_and_grad: EnergyAndGrad, state: ChainState, momentum: torch.Tensor, step_size: float,
             num_steps: int) -> tuple[ChainState, torch.Tensor]:
    """`num_steps` leapfrog steps from (x, p): half kick, then drift and full kick, the last kick a half.

    One gradient per step (the start's is the state's own); returns the end state and momentum.
    """
    momentum = momentum - 0.5 * step_size * state.grad
    for i in range(num_steps):
        position = state.position + step_size * momentum
        state = ChainState(position, *energy_and_grad(position))
        momentum = momentum - (step_size if i < num_steps - 1 else 0.5 * step_size) * state.grad
    return state, momentum
