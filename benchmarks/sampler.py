"""Sampler throughput: this package's Langevin chains against the original's naive loop and BlackJAX.

All run on the same energy net, in one process, one after the other, with the same number of
cores (`--threads`, default: every core this process may use; fewer pins the whole process to
that many cores, which is also what sizes XLA's thread pool). First unadjusted Langevin:
- naive: per step, wrap the state in a fresh leaf tensor, forward through the module,
  `backward()`, copy the gradient (what the original train.py/infer.py did). It is timed with
  PyTorch at 1 thread and at `--threads` threads, and the faster is kept;
- ours: `ebm.samplers.ula` + `run_chains` on `net.sampling_energy()`, the compiled kernel
  (`ebm.kernels`) that runs each block of steps in one call, chains split over the threads.

Then MALA, with the same step size, against BlackJAX's (`blackjax.mala`; benchmarks/requirements.txt):
- ours: `ebm.samplers.mala` + `run_chains` as above;
- blackjax: the net's E(z) in jax.numpy (benchmarks/jax_energy.py, float32), `blackjax.mala` with
  its step size ε²/2 (its proposal is x + τ∇log p + sqrt(2τ)ξ, ours x - (ε²/2)∇E + εξ), `jax.vmap`
  over chains, `jax.lax.scan` over steps, jitted; like ours it keeps every step's positions,
  energies and acceptance probabilities. Compilation is timed apart and left out of the rate.
  XLA's CPU client runs its ops on a thread pool sized by the cores the process may use.
Repeats alternate ours and theirs, so load from other processes hits both alike; the ratio is
best against best, and min/median/max of each are printed too.

The FLOP bound is `--threads` times one core's rate in a matmul probe at the net's own shape
(chains x width @ width x width, all the chains on that one core): perfect scaling over cores
and the most efficient matmul shape, so it is an upper bound on what the net can run at.
Run: python -m benchmarks.sampler [--weights weights/mnist_d4.safetensors] [--repeats 5] [--threads N]
The last lines are `speedup_64x1000=<ratio>` (ULA, ours / naive) and `vs_blackjax_64x1000=<ratio>`,
`vs_blackjax_8192x50=<ratio>` (MALA, ours / BlackJAX, chain-steps per second).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import contextmanager

import torch

try:
    import blackjax
    import jax

    from benchmarks.jax_energy import energy, energy_params
except ImportError as e:
    raise SystemExit(f"{e}: the BlackJAX comparison needs `pip install -r benchmarks/requirements.txt`") from e

from benchmarks.machine import cpu_model
from ebm.checkpoint import SHIPPED_WEIGHTS, load_model
from ebm.models import EnergyNet
from ebm.samplers import run_chains
from ebm.samplers.mala import mala
from ebm.samplers.ula import ula
from ebm.threads import set_chain_threads, usable_cores

STEP_SIZE = 0.1


@contextmanager
def using_threads(threads: int):
    """PyTorch's thread count and the kernels' chain threads, set for the duration of a block."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    set_chain_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        set_chain_threads(None)


def naive_chain_steps_per_s(net: EnergyNet, chains: int, steps: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(chains, net.config.latent_dim, generator=gen)
    start = time.perf_counter()
    for _ in range(steps):
        x = z.detach().clone().requires_grad_(True)
        net(x).sum().backward()
        grad = x.grad.clone()
        z = x.detach() - 0.5 * STEP_SIZE**2 * grad + STEP_SIZE * torch.randn(z.shape, generator=gen)
    return chains * steps / (time.perf_counter() - start)


def ours_chain_steps_per_s(net: EnergyNet, chains: int, steps: int, seed: int, algorithm=ula,
                           step_size: float = STEP_SIZE) -> tuple[float, float]:
    """(chain-steps per second, mean acceptance probability) of `algorithm` (ula or mala) on the compiled kernel."""
    gen = torch.Generator().manual_seed(seed)
    sampler = algorithm(net.sampling_energy(), step_size, gen)
    state = sampler.init(torch.randn(chains, net.config.latent_dim, generator=gen))
    start = time.perf_counter()
    result = run_chains(sampler, state, steps)
    return chains * steps / (time.perf_counter() - start), result.acceptance.mean().item()


class BlackjaxMala:
    """BlackJAX's MALA on the net for one (chains, steps): vmap over chains, scan over steps, compiled
    ahead (`compile_s`, left out of the rate). Like `run_chains`, it keeps every step's positions,
    energies and acceptance probabilities."""

    def __init__(self, net: EnergyNet, chains: int, steps: int, step_size: float = STEP_SIZE):
        params = energy_params(net)
        algorithm = blackjax.mala(lambda z: -energy(params, z), 0.5 * step_size**2)  # τ = ε²/2, see the docstring

        def run(key, state):
            def one_step(state, key):
                state, info = jax.vmap(algorithm.step)(jax.random.split(key, chains), state)
                return state, (state.position, state.logdensity, info.acceptance_rate)

            return jax.lax.scan(one_step, state, jax.random.split(key, steps))

        self.chains, self.dim = chains, net.config.latent_dim
        start = time.perf_counter()
        self.init = jax.jit(jax.vmap(algorithm.init)).lower(jax.numpy.zeros((chains, self.dim))).compile()
        self.run = jax.jit(run).lower(jax.random.key(0), self.init(jax.numpy.zeros((chains, self.dim)))).compile()
        self.compile_s = time.perf_counter() - start
        self.chain_steps = chains * steps

    def chain_steps_per_s(self, seed: int) -> tuple[float, float]:
        """(chain-steps per second, mean acceptance probability) of one run from N(0, I) starts."""
        key_start, key_run = jax.random.split(jax.random.key(seed))
        state = jax.block_until_ready(self.init(jax.random.normal(key_start, (self.chains, self.dim))))
        start = time.perf_counter()
        _, (_, _, acceptance) = jax.block_until_ready(self.run(key_run, state))
        return self.chain_steps / (time.perf_counter() - start), float(acceptance.mean())


def matmul_flops_per_s(rows: int, width: int, repeats: int = 50) -> float:
    """Measured float32 matmul rate of one core at the net's own shape (rows x width @ width x width)."""
    a, b = torch.randn(rows, width), torch.randn(width, width)
    with using_threads(1):
        for _ in range(5):
            a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        elapsed = time.perf_counter() - start
    return 2 * rows * width * width * repeats / elapsed


def flops_per_chain_step(net: EnergyNet) -> int:
    """Multiply-adds of the forward pass and of the input-gradient backward pass, x2 for FLOPs."""
    macs = sum(layer.in_features * layer.out_features for layer in net.hidden) + net.out.in_features
    return 2 * 2 * macs


def spread(rates: list[float]) -> str:
    return f"min {min(rates):,.0f} / median {statistics.median(rates):,.0f} / max {max(rates):,.0f}"


def pin_to_cores(threads: int) -> None:
    """Let this process run on `threads` of its cores only: torch, our chain threads and XLA's pool
    (which sizes itself by the cores a process may use) then all get the same."""
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= threads <= len(allowed):
        raise SystemExit(f"--threads must be in [1, {len(allowed)}], got {threads}")
    os.sched_setaffinity(0, allowed[:threads])


def compare_with_blackjax(net: EnergyNet, threads: int, repeats: int) -> dict:
    """MALA, ours against BlackJAX at the same step size, repeats interleaved; prints and returns the ratios."""
    print(f"MALA, ε = {STEP_SIZE} (BlackJAX step size ε²/2 = {0.5 * STEP_SIZE**2:g}), jax {jax.__version__}, "
          f"blackjax {blackjax.__version__}, float32, {threads} threads each, best of {repeats}, interleaved")
    ratios = {}
    for chains, steps in ((64, 1000), (8192, 50)):
        theirs = BlackjaxMala(net, chains, steps)
        ours_runs, their_runs = [], []
        with using_threads(threads):
            for r in range(repeats):
                ours_runs.append(ours_chain_steps_per_s(net, chains, steps, seed=r, algorithm=mala))
                their_runs.append(theirs.chain_steps_per_s(seed=r))
        ours_rates, their_rates = [rate for rate, _ in ours_runs], [rate for rate, _ in their_runs]
        ratios[(chains, steps)] = max(ours_rates) / max(their_rates)
        print(f"{chains:>7} x {steps:<6} ours     {max(ours_rates):>11,.0f} chain-steps/s ({spread(ours_rates)}), "
              f"acceptance {ours_runs[0][1]:.3f}")
        print(f"{'':>16} blackjax {max(their_rates):>11,.0f} chain-steps/s ({spread(their_rates)}), "
              f"acceptance {their_runs[0][1]:.3f}, compile {theirs.compile_s:.2f} s")
        print(f"{'':>16} ours / blackjax {ratios[(chains, steps)]:.2f}x")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(SHIPPED_WEIGHTS))
    parser.add_argument("--repeats", type=int, default=5, help="best of N runs for each measurement")
    parser.add_argument("--threads", type=int, default=usable_cores(), help="cores for every sampler")
    args = parser.parse_args()
    pin_to_cores(args.threads)
    model, _ = load_model(args.weights)
    net = model.energy
    c = net.config
    print(f"CPU: {cpu_model()}")
    print(f"energy net: {c.latent_dim} -> {c.hidden_dim} x {c.num_layers} -> 1 (SiLU), torch {torch.__version__}, "
          f"{args.threads} threads for every sampler")
    flops = flops_per_chain_step(net)
    with using_threads(args.threads):  # compile (or load) both kernels and start the helper threads, untimed
        for algorithm in (ula, mala):
            ours_chain_steps_per_s(net, 64, 64, seed=0, algorithm=algorithm)
    speedups = {}
    print(f"{'chains x steps':>16} {'naive (steps/s)':>16} {'ours (steps/s)':>16} {'speedup':>8} "
          f"{'FLOP-bound':>12} {'of bound':>9}")
    for chains, steps in ((64, 1000), (8192, 50)):
        naive = 0.0
        for threads in sorted({1, args.threads}):
            with using_threads(threads):
                naive = max(naive, *(naive_chain_steps_per_s(net, chains, steps, seed=r) for r in range(args.repeats)))
        with using_threads(args.threads):
            ours = max(ours_chain_steps_per_s(net, chains, steps, seed=r)[0] for r in range(args.repeats))
        bound = args.threads * matmul_flops_per_s(chains, c.hidden_dim) / flops
        speedups[(chains, steps)] = ours / naive
        print(f"{chains:>7} x {steps:<6} {naive:>16,.0f} {ours:>16,.0f} {ours / naive:>7.1f}x "
              f"{bound:>12,.0f} {ours / bound:>8.0%}")
    print(f"FLOPs per chain-step: {flops:,} (forward + input gradient)")
    ratios = compare_with_blackjax(net, args.threads, args.repeats)
    print(f"speedup_64x1000={speedups[(64, 1000)]:.2f}")
    print(f"vs_blackjax_64x1000={ratios[(64, 1000)]:.2f}")
    print(f"vs_blackjax_8192x50={ratios[(8192, 50)]:.2f}")


if __name__ == "__main__":
    main()
