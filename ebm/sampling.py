"""Langevin samplers over a batch of chains, in BlackJAX's shape.

A sampler is a pair `init(position) -> state` and `step(state) -> (state, info)`, plus
`steps(state, n)` for a block of n steps. The target density is p(z) ∝ exp(-E(z)), given by
a function returning E and ∇E; when that function also has a `langevin` method (as
`ebm.kernels.FastEnergy` does), whole blocks run in its compiled kernel.

ULA:  z' = z - (ε²/2) ∇E(z) + ε ξ,   ξ ~ N(0, I)          (biased for finite ε)
MALA: the same proposal, accepted with the Metropolis-Hastings probability,
      which makes exp(-E) exactly invariant for every ε.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from .validation import check_float, check_int

EnergyAndGrad = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

MAX_CHAINS = 65_536
MAX_STEPS = 1_000_000
MAX_TRACE_ENTRIES = 200_000_000  # chains x steps of the per-step traces (float32: 0.8 GB each)
BLOCK_STEPS = 64  # run_chains advances this many steps per call of `steps` (and per callback)
MAX_BLOCK_NUMBERS = 1 << 22  # cap on a block's noise (chains x steps x d), 16 MB in float32
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


class LangevinTraces(NamedTuple):
    """What a block of steps did: every step's positions, energies and acceptance probabilities."""

    positions: torch.Tensor  # (steps, chains, d)
    energies: torch.Tensor  # (steps, chains)
    acceptance: torch.Tensor  # (steps, chains)


class SamplingAlgorithm(NamedTuple):
    """`step` advances one step; `steps(state, n)` advances n, compiled when the energy allows.

    Both draw their randomness the same way (normals (n, chains, d), then for MALA uniforms
    (n, chains)), so `steps(state, 1)` and `step(state)` are the same move.
    """

    init: Callable[[torch.Tensor], LangevinState]
    step: Callable[[LangevinState], tuple[LangevinState, LangevinInfo]]
    steps: Callable[[LangevinState, int], tuple[LangevinState, LangevinTraces]]


class ChainResult(NamedTuple):
    """Output of `run_chains`: final state, recorded positions and per-step traces."""

    state: LangevinState
    trajectory: torch.Tensor  # (records, chains, d): the start, then every `record_every` steps
    record_steps: list[int]  # the step number of each record (0 = start)
    energies: torch.Tensor  # (steps, chains) energy after each step
    acceptance: torch.Tensor  # (steps, chains) acceptance probability of each step


def check_step_size(step_size: float) -> float:
    """Return ε as a float, or raise ValueError when it is not a finite positive number."""
    return check_float("step size ε", step_size, 0.0, low_open=True)


def check_positions(position: torch.Tensor) -> torch.Tensor:
    """Validate a (chains, d) batch of finite starting points."""
    if position.ndim != 2 or position.shape[0] < 1 or position.shape[1] < 1:
        raise ValueError(f"positions must have shape (chains, d) with chains, d >= 1, got {tuple(position.shape)}")
    check_int("number of chains", position.shape[0], 1, MAX_CHAINS)
    if not torch.isfinite(position).all():
        raise ValueError("starting positions contain NaN or infinity")
    return position


def langevin_move(energy_and_grad: EnergyAndGrad, state: LangevinState, noise: torch.Tensor, uniform: torch.Tensor | None,
                  step_size: float) -> tuple[LangevinState, LangevinInfo]:
    """One Langevin move with the given noise; `uniform` None means ULA, else MALA's accept test."""
    drift = 0.5 * step_size * step_size
    proposal = state.position - drift * state.grad + step_size * noise
    energy, grad = energy_and_grad(proposal)
    if uniform is None:
        ones = torch.ones_like(energy)
        return LangevinState(proposal, energy, grad), LangevinInfo(ones, ones.bool())
    # log q(x'|x) = -|ξ|²/2;  log q(x|x') = -|x - x' + (ε²/2)∇E(x')|² / (2ε²)
    backward = state.position - proposal + drift * grad
    log_q_ratio = 0.5 * noise.square().sum(-1) - backward.square().sum(-1) / (2 * step_size * step_size)
    log_alpha = torch.nan_to_num(state.energy - energy + log_q_ratio, nan=-math.inf)
    accept_prob = log_alpha.clamp(max=0.0).exp()
    accepted = uniform < accept_prob
    keep = accepted.unsqueeze(-1)
    new_state = LangevinState(
        torch.where(keep, proposal, state.position),
        torch.where(accepted, energy, state.energy),
        torch.where(keep, grad, state.grad),
    )
    return new_state, LangevinInfo(accept_prob, accepted)


def _langevin(energy_and_grad: EnergyAndGrad, step_size: float, generator: torch.Generator | None, adjusted: bool) -> SamplingAlgorithm:
    eps = check_step_size(step_size)
    compiled = getattr(energy_and_grad, "langevin", None)  # e.g. ebm.kernels.FastEnergy

    def init(position: torch.Tensor) -> LangevinState:
        position = check_positions(position)
        energy, grad = energy_and_grad(position)
        return LangevinState(position, energy, grad)

    def draw(state: LangevinState, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        dtype = state.position.dtype
        noise = torch.randn((n, *state.position.shape), generator=generator, dtype=dtype)
        uniform = torch.rand((n, state.position.shape[0]), generator=generator, dtype=dtype) if adjusted else None
        return noise, uniform

    def steps(state: LangevinState, n: int) -> tuple[LangevinState, LangevinTraces]:
        noise, uniform = draw(state, n)
        if compiled is not None:
            uniform = uniform if adjusted else torch.empty(n, state.position.shape[0])
            position, energy, grad, positions, energies, acceptance = compiled(*state, noise, uniform, eps, adjusted)
            return LangevinState(position, energy, grad), LangevinTraces(positions, energies, acceptance)
        positions, energies, acceptance = [], [], []
        for t in range(n):
            state, info = langevin_move(energy_and_grad, state, noise[t], None if uniform is None else uniform[t], eps)
            positions.append(state.position)
            energies.append(state.energy)
            acceptance.append(info.acceptance_prob)
        return state, LangevinTraces(torch.stack(positions), torch.stack(energies), torch.stack(acceptance))

    def step(state: LangevinState) -> tuple[LangevinState, LangevinInfo]:
        noise, uniform = draw(state, 1)
        return langevin_move(energy_and_grad, state, noise[0], None if uniform is None else uniform[0], eps)

    return SamplingAlgorithm(init, step, steps)


def ula(energy_and_grad: EnergyAndGrad, step_size: float, generator: torch.Generator | None = None) -> SamplingAlgorithm:
    """Unadjusted Langevin algorithm: every proposal is taken."""
    return _langevin(energy_and_grad, step_size, generator, adjusted=False)


def mala(energy_and_grad: EnergyAndGrad, step_size: float, generator: torch.Generator | None = None) -> SamplingAlgorithm:
    """Metropolis-adjusted Langevin algorithm: the ULA proposal plus an accept/reject test."""
    return _langevin(energy_and_grad, step_size, generator, adjusted=True)


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


def block_length(chains: int, dim: int) -> int:
    """Steps per block in `run_chains`: 64, fewer when a block's noise would pass 4M numbers."""
    return max(1, min(BLOCK_STEPS, MAX_BLOCK_NUMBERS // (chains * dim)))


def run_chains(
    sampler: SamplingAlgorithm,
    state: LangevinState,
    num_steps: int,
    record_every: int | None = None,
    callback: Callable[[int], bool | None] | None = None,
) -> ChainResult:
    """Run `num_steps` steps, recording positions every `record_every` steps and every step's traces.

    The steps run in blocks (`block_length`), fixed by the step count alone, so the chains do
    not depend on `record_every`. `callback(step)` is called after each block; returning True
    stops early (the result then holds the steps done so far).
    """
    num_steps = check_num_steps(num_steps)
    record_every = num_steps if record_every is None else check_int("record_every", record_every, 1, MAX_STEPS)
    chains, dim = state.position.shape
    if chains * num_steps > MAX_TRACE_ENTRIES:
        raise ValueError(f"{chains} chains x {num_steps} steps is more than {MAX_TRACE_ENTRIES:,} chain-steps; use fewer")
    energies = torch.empty(num_steps, chains, dtype=state.energy.dtype)
    acceptance = torch.empty(num_steps, chains, dtype=state.energy.dtype)
    records, record_steps = [state.position], [0]
    done, block = 0, block_length(chains, dim)
    while done < num_steps:
        n = min(block, num_steps - done)
        state, traces = sampler.steps(state, n)
        energies[done:done + n] = traces.energies
        acceptance[done:done + n] = traces.acceptance
        for t in range(done + 1, done + n + 1):
            if t % record_every == 0 or t == num_steps:
                records.append(traces.positions[t - done - 1])
                record_steps.append(t)
        done += n
        if callback is not None and callback(done):
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
