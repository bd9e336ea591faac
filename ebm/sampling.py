"""Langevin samplers over a batch of chains, in BlackJAX's shape.

A sampler is a pair `init(position) -> state` and `step(state) -> (state, info)`.
The target density is p(z) ∝ exp(-E(z)), given by a function returning E and ∇E.

ULA:  z' = z - (ε²/2) ∇E(z) + ε ξ,   ξ ~ N(0, I)          (biased for finite ε)
MALA: the same proposal, accepted with the Metropolis-Hastings probability,
      which makes exp(-E) exactly invariant for every ε.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import torch

EnergyAndGrad = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

MAX_CHAINS = 65_536
MAX_STEPS = 1_000_000
MAX_TRACE_ENTRIES = 200_000_000  # chains x steps of the per-step traces (float32: 0.8 GB each)
DEFAULT_TARGET_ACCEPTANCE = 0.574  # optimal MALA acceptance (Roberts & Rosenthal 1998)


class LangevinState(NamedTuple):
    """Positions of all chains with their energies and energy gradients (reused by the next step)."""

    position: torch.Tensor  # (chains, d)
    energy: torch.Tensor  # (chains,)
    grad: torch.Tensor  # (chains, d)


class LangevinInfo(NamedTuple):
    """What one step did, per chain."""

    acceptance_prob: torch.Tensor  # (chains,) Metropolis acceptance probability; 1 for ULA
    is_accepted: torch.Tensor  # (chains,) bool


class SamplingAlgorithm(NamedTuple):
    init: Callable[[torch.Tensor], LangevinState]
    step: Callable[[LangevinState], tuple[LangevinState, LangevinInfo]]


class ChainResult(NamedTuple):
    """Output of `run_chains`: final state, recorded positions and per-step traces."""

    state: LangevinState
    trajectory: torch.Tensor  # (records, chains, d): the start, then every `record_every` steps
    record_steps: list[int]  # the step number of each record (0 = start)
    energies: torch.Tensor  # (steps, chains) energy after each step
    acceptance: torch.Tensor  # (steps, chains) acceptance probability of each step


def check_int(name: str, value, low: int, high: int) -> int:
    """Return `value` as an int, or raise ValueError naming the setting (bools, fractions, inf, NaN too)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value != int(value) or not low <= value <= high):
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def check_step_size(step_size: float) -> float:
    """Return ε as a float, or raise ValueError when it is not a finite positive number."""
    step_size = float(step_size)
    if not math.isfinite(step_size) or step_size <= 0:
        raise ValueError(f"step size ε must be a finite number > 0, got {step_size}")
    return step_size


def check_positions(position: torch.Tensor) -> torch.Tensor:
    """Validate a (chains, d) batch of finite starting points."""
    if position.ndim != 2 or position.shape[0] < 1 or position.shape[1] < 1:
        raise ValueError(f"positions must have shape (chains, d) with chains, d >= 1, got {tuple(position.shape)}")
    check_int("number of chains", position.shape[0], 1, MAX_CHAINS)
    if not torch.isfinite(position).all():
        raise ValueError("starting positions contain NaN or infinity")
    return position


def _init(energy_and_grad: EnergyAndGrad) -> Callable[[torch.Tensor], LangevinState]:
    def init(position: torch.Tensor) -> LangevinState:
        position = check_positions(position)
        energy, grad = energy_and_grad(position)
        return LangevinState(position, energy, grad)

    return init


def ula(energy_and_grad: EnergyAndGrad, step_size: float, generator: torch.Generator | None = None) -> SamplingAlgorithm:
    """Unadjusted Langevin algorithm: every proposal is taken."""
    eps = check_step_size(step_size)
    drift = 0.5 * eps * eps

    def step(state: LangevinState) -> tuple[LangevinState, LangevinInfo]:
        noise = torch.randn(state.position.shape, generator=generator, dtype=state.position.dtype)
        position = state.position - drift * state.grad + eps * noise
        energy, grad = energy_and_grad(position)
        ones = torch.ones_like(energy)
        return LangevinState(position, energy, grad), LangevinInfo(ones, ones.bool())

    return SamplingAlgorithm(_init(energy_and_grad), step)


def mala(energy_and_grad: EnergyAndGrad, step_size: float, generator: torch.Generator | None = None) -> SamplingAlgorithm:
    """Metropolis-adjusted Langevin algorithm: the ULA proposal plus an accept/reject test."""
    eps = check_step_size(step_size)
    drift = 0.5 * eps * eps

    def step(state: LangevinState) -> tuple[LangevinState, LangevinInfo]:
        noise = torch.randn(state.position.shape, generator=generator, dtype=state.position.dtype)
        proposal = state.position - drift * state.grad + eps * noise
        energy, grad = energy_and_grad(proposal)
        # log q(x'|x) = -|ξ|²/2;  log q(x|x') = -|x - x' + (ε²/2)∇E(x')|² / (2ε²)
        backward = state.position - proposal + drift * grad
        log_q_ratio = 0.5 * noise.square().sum(-1) - backward.square().sum(-1) / (2 * eps * eps)
        log_alpha = torch.nan_to_num(state.energy - energy + log_q_ratio, nan=-math.inf)
        accept_prob = log_alpha.clamp(max=0.0).exp()
        uniform = torch.rand(accept_prob.shape, generator=generator, dtype=accept_prob.dtype)
        accepted = uniform < accept_prob
        keep = accepted.unsqueeze(-1)
        new_state = LangevinState(
            torch.where(keep, proposal, state.position),
            torch.where(accepted, energy, state.energy),
            torch.where(keep, grad, state.grad),
        )
        return new_state, LangevinInfo(accept_prob, accepted)

    return SamplingAlgorithm(_init(energy_and_grad), step)


SAMPLERS: dict[str, Callable[..., SamplingAlgorithm]] = {"ula": ula, "mala": mala}


def build_sampler(name: str, energy_and_grad: EnergyAndGrad, step_size: float, generator=None) -> SamplingAlgorithm:
    """Look a sampler up by name ("ula" or "mala")."""
    key = name.lower()
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[key](energy_and_grad, step_size, generator)


def adapted_step_size(step_size: float, acceptance: float, target: float = DEFAULT_TARGET_ACCEPTANCE, rate: float = 0.5) -> float:
    """One Robbins-Monro update of ε on the log scale toward a target acceptance rate."""
    return step_size * math.exp(rate * (acceptance - target))


def adapt_mala_step_size(
    energy_and_grad: EnergyAndGrad,
    position: torch.Tensor,
    step_size: float,
    num_steps: int = 100,
    target: float = DEFAULT_TARGET_ACCEPTANCE,
    generator: torch.Generator | None = None,
) -> tuple[LangevinState, float]:
    """Warm-up: run MALA while tuning ε toward `target` mean acceptance; returns (state, tuned ε).

    The tuned ε is then fixed for the sampling phase, so the chain that follows is a proper
    MALA chain with exp(-E) invariant.
    """
    eps = check_step_size(step_size)
    if not 0.0 < target < 1.0:
        raise ValueError(f"target acceptance must be in (0, 1), got {target}")
    state = mala(energy_and_grad, eps, generator).init(position)
    for t in range(check_num_steps(num_steps)):
        state, info = mala(energy_and_grad, eps, generator).step(state)
        eps = adapted_step_size(eps, info.acceptance_prob.mean().item(), target, rate=1.0 / math.sqrt(t + 1))
    return state, eps


def check_num_steps(num_steps: int) -> int:
    return check_int("number of steps K", num_steps, 1, MAX_STEPS)


def run_chains(
    sampler: SamplingAlgorithm,
    state: LangevinState,
    num_steps: int,
    record_every: int | None = None,
    callback: Callable[[int], bool | None] | None = None,
) -> ChainResult:
    """Run `num_steps` steps, recording positions every `record_every` steps and every step's traces.

    `callback(step)` is called after each step; returning True stops early (the result then
    holds the steps done so far).
    """
    num_steps = check_num_steps(num_steps)
    record_every = num_steps if record_every is None else check_int("record_every", record_every, 1, MAX_STEPS)
    chains = state.position.shape[0]
    if chains * num_steps > MAX_TRACE_ENTRIES:
        raise ValueError(f"{chains} chains x {num_steps} steps is more than {MAX_TRACE_ENTRIES:,} chain-steps; use fewer")
    energies = torch.empty(num_steps, chains, dtype=state.energy.dtype)
    acceptance = torch.empty(num_steps, chains, dtype=state.energy.dtype)
    records, record_steps = [state.position], [0]
    done = 0
    for t in range(1, num_steps + 1):
        state, info = sampler.step(state)
        energies[t - 1] = state.energy
        acceptance[t - 1] = info.acceptance_prob
        done = t
        if t % record_every == 0 or t == num_steps:
            records.append(state.position)
            record_steps.append(t)
        if callback is not None and callback(t):
            break
    if record_steps[-1] != done:
        records.append(state.position)
        record_steps.append(done)
    return ChainResult(state, torch.stack(records), record_steps, energies[:done], acceptance[:done])


class ReplayBuffer:
    """Persistent chain positions for contrastive divergence, with random reinitialisation.

    Each draw takes `n` stored positions; with probability `reinit_prob` a position is
    replaced by fresh N(0, I) noise, which keeps the negatives from collapsing onto a few modes.
    """

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None):
        if size < 1 or dim < 1:
            raise ValueError(f"replay buffer needs size >= 1 and dim >= 1, got {size}, {dim}")
        self.generator = generator
        self.positions = torch.randn(size, dim, generator=generator)

    def draw(self, n: int, reinit_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (indices, starting positions) for `n` chains."""
        indices = torch.randint(len(self.positions), (n,), generator=self.generator)
        positions = self.positions[indices].clone()
        fresh = torch.rand(n, generator=self.generator) < reinit_prob
        positions[fresh] = torch.randn(int(fresh.sum()), positions.shape[1], generator=self.generator)
        return indices, positions

    def store(self, indices: torch.Tensor, positions: torch.Tensor) -> None:
        """Write the chains' end points back; non-finite ones are replaced by noise."""
        positions = positions.detach().clone()
        bad = ~torch.isfinite(positions).all(-1)
        positions[bad] = torch.randn(int(bad.sum()), positions.shape[1], generator=self.generator)
        self.positions[indices] = positions
