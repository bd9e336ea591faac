"""The Metropolis-Hastings test every adjusted sampler ends with.

Given log α = log[p(x') q(x|x')] - log[p(x) q(x'|x)] per chain (the sampler's own proposal
ratio folded in), accept where u < min(1, exp(log α)). A NaN ratio (a proposal whose energy
is not a number) rejects, so a chain never steps onto it.
"""

from __future__ import annotations

import math

import torch

from .base import ChainState, StepInfo


def metropolis_hastings(current: ChainState, proposal: ChainState, log_ratio: torch.Tensor,
                        uniform: torch.Tensor) -> tuple[ChainState, StepInfo]:
    """Each chain moves to its proposal where `uniform` < the acceptance probability, else stays."""
    accept_prob = torch.nan_to_num(log_ratio, nan=-math.inf).clamp(max=0.0).exp()
    accepted = uniform < accept_prob
    keep = accepted.unsqueeze(-1)
    new_state = ChainState(
        torch.where(keep, proposal.position, current.position),
        torch.where(accepted, proposal.energy, current.energy),
        torch.where(keep, proposal.grad, current.grad),
    )
    return new_state, StepInfo(accept_prob, accepted)


def accept_all(proposal: ChainState) -> tuple[ChainState, StepInfo]:
    """What an unadjusted sampler does with its proposal: take it."""
    ones = torch.ones_like(proposal.energy)
    return proposal, StepInfo(ones, ones.bool())
