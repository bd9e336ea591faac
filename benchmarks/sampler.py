"""Sampler throughput: this package's Langevin chains against the original's naive loop.

Both run unadjusted Langevin on the same energy net, in one process, one after the other,
with the same number of cores (`--threads`, default: PyTorch's, i.e. all of them unless
OMP_NUM_THREADS says otherwise):
- naive: per step, wrap the state in a fresh leaf tensor, forward through the module,
  `backward()`, copy the gradient (what the original train.py/infer.py did). It is timed with
  PyTorch at 1 thread and at `--threads` threads, and the faster is kept;
- ours: `ebm.samplers.ula` + `run_chains` on `net.sampling_energy()`, the compiled kernel
  (`ebm.kernels`) that runs each block of steps in one call, chains split over the threads.

The FLOP bound is `--threads` times one core's rate in a matmul probe at the net's own shape
(chains x width @ width x width, all the chains on that one core): perfect scaling over cores
and the most efficient matmul shape, so it is an upper bound on what the net can run at.
Run: python -m benchmarks.sampler [--weights weights/mnist_d4.safetensors] [--repeats 3] [--threads N]
The last line is `speedup_64x1000=<ratio>`.
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import torch

from benchmarks.machine import cpu_model
from ebm.checkpoint import SHIPPED_WEIGHTS, load_model
from ebm.models import EnergyNet
from ebm.samplers import run_chains
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


def ours_chain_steps_per_s(net: EnergyNet, chains: int, steps: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    sampler = ula(net.sampling_energy(), STEP_SIZE, gen)
    state = sampler.init(torch.randn(chains, net.config.latent_dim, generator=gen))
    start = time.perf_counter()
    run_chains(sampler, state, steps)
    return chains * steps / (time.perf_counter() - start)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(SHIPPED_WEIGHTS))
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs for each measurement")
    parser.add_argument("--threads", type=int, default=usable_cores(), help="cores for both samplers")
    args = parser.parse_args()
    model, _ = load_model(args.weights)
    net = model.energy
    c = net.config
    print(f"CPU: {cpu_model()}")
    print(f"energy net: {c.latent_dim} -> {c.hidden_dim} x {c.num_layers} -> 1 (SiLU), torch {torch.__version__}, "
          f"{args.threads} threads for both samplers")
    flops = flops_per_chain_step(net)
    speedups = {}
    print(f"{'chains x steps':>16} {'naive (steps/s)':>16} {'ours (steps/s)':>16} {'speedup':>8} {'FLOP-bound':>12} {'of bound':>9}")
    for chains, steps in ((64, 1000), (8192, 50)):
        naive = 0.0
        for threads in sorted({1, args.threads}):
            with using_threads(threads):
                naive = max(naive, *(naive_chain_steps_per_s(net, chains, steps, seed=r) for r in range(args.repeats)))
        with using_threads(args.threads):
            ours = max(ours_chain_steps_per_s(net, chains, steps, seed=r) for r in range(args.repeats))
        bound = args.threads * matmul_flops_per_s(chains, c.hidden_dim) / flops
        speedups[(chains, steps)] = ours / naive
        print(f"{chains:>7} x {steps:<6} {naive:>16,.0f} {ours:>16,.0f} {ours / naive:>7.1f}x {bound:>12,.0f} {ours / bound:>8.0%}")
    print(f"FLOPs per chain-step: {flops:,} (forward + input gradient)")
    print(f"speedup_64x1000={speedups[(64, 1000)]:.2f}")


if __name__ == "__main__":
    main()
