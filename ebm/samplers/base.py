"""What every sampler shares: the chain state, one step's info, the block loop and `run_chains`.

A sampler is BlackJAX-shaped: `init(position) -> state`, `step(state) -> (state, info)` and
`steps(state, n) -> (state, traces)` for a block of n steps, over a batch of chains. The
target density is p(z) ∝ exp(-E(z)), given by a function returning E and ∇E.

Randomness layout (the same for every sampler, so a seed means the same thing everywhere):
a block of n steps draws normals (n, chains, d) first, then, for Metropolis-adjusted
samplers only, uniforms (n, chains). `step` is a block of one, so `steps(state, 1)` and
`step(state)` are the same move. ULA and MALA use the normals as the Langevin noise ξ, HMC
as the momentum it draws afresh each iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..validation import check_float, check_int

EnergyAndGrad = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

MAX_CHAINS = 65_536
MAX_STEPS = 1_000_000
MAX_TRACE_ENTRIES = 200_000_000  # chains x steps of the per-step traces (float32: 0.8 GB each)
BLOCK_STEPS = 64  # run_chains advances this many steps per call of `steps` (and per callback)
MAX_BLOCK_NUMBERS = 1 << 22  # cap on a block's noise (chains x steps x d), 16 MB in float32
DEFAULT_TARGET_ACCEPTANCE = 0.574  # optimal MALA acceptance (Roberts & Rosenthal 1998)


class ChainState(NamedTuple):
    """Positions of all chains with their energies and energy gradients (reused by the next step)."""

    position: torch.Tensor  # (chains, d)
    energy: torch.Tensor  # (chains,)
    grad: torch.Tensor  # (chains, d)


class StepInfo(NamedTuple):
    """What one step did, per chain."""

    acceptance_prob: torch.Tensor  # (chains,) Metropolis acceptance probability; 1 for unadjusted samplers
    is_accepted: torch.Tensor  # (chains,) bool


class Traces(NamedTuple):
    """What a block of steps did: every step's positions, energies and acceptance probabilities."""

    positions: torch.Tensor  # (steps, chains, d)
    energies: torch.Tensor  # (steps, chains)
    acceptance: torch.Tensor  # (steps, chains)


Move = Callable[[ChainState, torch.Tensor, "torch.Tensor | None"], tuple[ChainState, StepInfo]]
"""One step given its randomness: (state, normals (chains, d), uniforms (chains,) or None)."""
CompiledBlock = Callable[[ChainState, torch.Tensor, "torch.Tensor | None"], tuple[ChainState, Traces]]
"""A whole block given its randomness: (state, normals (n, chains, d), uniforms (n, chains) or None)."""


class SamplingAlgorithm(NamedTuple):
    """`step` advances one step; `steps(state, n)` advances n, compiled when the energy allows."""

    init: Callable[[torch.Tensor], ChainState]
    step: Callable[[ChainState], tuple[ChainState, StepInfo]]
    steps: Callable[[ChainState, int], tuple[ChainState, Traces]]


@dataclass(frozen=True)
class NoParams:
    """The parameters of a sampler that has none besides ε."""

    gradients_per_step = 1  # energy gradients one step costs: what the app's request caps count


@dataclass(frozen=True)
class SamplerInfo:
    """A registry entry (`ebm.samplers.SAMPLERS`): how to build a sampler and how to present it.

    `params` is a frozen dataclass of `ebm.validation.setting` fields, the sampler's own
    parameters besides ε, with defaults, bounds and labels; `build(energy_and_grad, step_size,
    generator, **params)` takes them by keyword. `adjusted`: it has a Metropolis-Hastings test,
    so its acceptance means something. `step_size`: the ε that a command line run of it uses
    unless told otherwise (tuned on the shipped model).
    """

    build: Callable[..., SamplingAlgorithm]
    label: str
    adjusted: bool
    help: str
    step_size: float = 0.5
    params: type = NoParams


class ChainResult(NamedTuple):
    """Output of `run_chains`: final state, recorded positions and per-step traces."""

    state: ChainState
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


def check_num_steps(num_steps: int) -> int:
    """`num_steps` as an int in 1..MAX_STEPS, or a ValueError naming the number of steps K."""
    return check_int("number of steps K", num_steps, 1, MAX_STEPS)


def chain_algorithm(energy_and_grad: EnergyAndGrad, move: Move, adjusted: bool,
                    generator: torch.Generator | None = None,
                    compiled: CompiledBlock | None = None) -> SamplingAlgorithm:
    """A sampler from its one-step `move`: init, the randomness layout, and the block loop
    (or `compiled`, which runs a whole block with the same randomness)."""

    def init(position: torch.Tensor) -> ChainState:
        position = check_positions(position)
        return ChainState(position, *energy_and_grad(position))

    def draw(state: ChainState, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        dtype = state.position.dtype
        normals = torch.randn((n, *state.position.shape), generator=generator, dtype=dtype)
        uniforms = torch.rand((n, state.position.shape[0]), generator=generator, dtype=dtype) if adjusted else None
        return normals, uniforms

    def steps(state: ChainState, n: int) -> tuple[ChainState, Traces]:
        normals, uniforms = draw(state, n)
        if compiled is not None:
            return compiled(state, normals, uniforms)
        positions, energies, acceptance = [], [], []
        for t in range(n):
            state, info = move(state, normals[t], None if uniforms is None else uniforms[t])
            positions.append(state.position)
            energies.append(state.energy)
            acceptance.append(info.acceptance_prob)
        return state, Traces(torch.stack(positions), torch.stack(energies), torch.stack(acceptance))

    def step(state: ChainState) -> tuple[ChainState, StepInfo]:
        normals, uniforms = draw(state, 1)
        return move(state, normals[0], None if uniforms is None else uniforms[0])

    return SamplingAlgorithm(init, step, steps)


def compiled_block(energy_and_grad: EnergyAndGrad, kernel_name: str, *settings) -> CompiledBlock | None:
    """The energy's compiled whole-block kernel `kernel_name` (e.g. `ebm.kernels.FastEnergy.langevin`)
    as a `CompiledBlock`, or None when the energy has none. The kernel takes (position, energy,
    grad, normals, uniforms, *settings) and returns the new state and the block's traces."""
    kernel = getattr(energy_and_grad, kernel_name, None)
    if kernel is None:
        return None

    def run(state: ChainState, normals: torch.Tensor, uniforms: torch.Tensor | None) -> tuple[ChainState, Traces]:
        uniforms = torch.empty(normals.shape[:2]) if uniforms is None else uniforms
        position, energy, grad, positions, energies, acceptance = kernel(*state, normals, uniforms, *settings)
        return ChainState(position, energy, grad), Traces(positions, energies, acceptance)

    return run


def adapted_step_size(step_size: float, acceptance: float, target: float = DEFAULT_TARGET_ACCEPTANCE,
                      rate: float = 0.5) -> float:
    """One Robbins-Monro update of ε on the log scale toward a target acceptance rate."""
    return step_size * math.exp(rate * (acceptance - target))


def block_length(chains: int, dim: int) -> int:
    """Steps per block in `run_chains`: 64, fewer when a block's noise would pass 4M numbers."""
    return max(1, min(BLOCK_STEPS, MAX_BLOCK_NUMBERS // (chains * dim)))


def run_chains(
    sampler: SamplingAlgorithm,
    state: ChainState,
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
        raise ValueError(f"{chains} chains x {num_steps} steps is more than {MAX_TRACE_ENTRIES:,} chain-steps; "
                         "use fewer")
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
