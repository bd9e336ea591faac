"""Two choices inside one training step, each against the alternative it replaced, alternated in one run.

- Adam: torch's default (one tensor at a time on the CPU), `foreach` and `fused` (`ebm.training.fused_adam`),
  one `step()` on the default autoencoder's and energy net's parameters.
- Stage 2's energies with autograd: data and negatives through the net in two passes, or concatenated in one
  (`train_energy`), forward and `energy_gradients`' backward, for a contrastive-divergence iteration
  (512 negatives) and a likelihood iteration (4,096 proposals); both on the shards as in training
  (`ebm.training.data_and_negative_energies`).

One torch thread, as `python -m ebm train` runs it. Run: python -m benchmarks.steps [--repeats 4]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_model  # noqa: E402
from ebm.models import Autoencoder, EnergyNet  # noqa: E402
from ebm.threads import chain_threads, limit_native_threads  # noqa: E402
from ebm.training import TrainConfig, data_and_negative_energies, energy_gradients, in_shards  # noqa: E402

ADAMS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def ms_per_call(call, calls: int) -> float:
    """Milliseconds per call of `call()`, after a few warm-up calls."""
    for _ in range(5):
        call()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e3


def adam_step(net: torch.nn.Module, options: dict):
    for param in net.parameters():
        param.grad = torch.randn_like(param)
    return torch.optim.Adam(net.parameters(), lr=1e-3, **options).step


def energy_pass(energy: EnergyNet, data: torch.Tensor, negatives: torch.Tensor, concatenated: bool):
    weights = torch.full((len(negatives),), 1 / len(negatives))
    if concatenated:
        forward = functools.partial(data_and_negative_energies, energy)
    else:
        def forward(d, n):  # what train_energy did before
            return energy(d), energy(n)
    return lambda: energy_gradients(energy, in_shards(forward, data, negatives), weights, 0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="alternations of the variants")
    args = parser.parse_args()
    limit_native_threads()
    torch.set_num_threads(1)
    print(f"CPU: {cpu_model()}; one torch thread, shards on {chain_threads()} cores; ms per call, "
          f"{args.repeats} alternated runs each", flush=True)
    cfg = TrainConfig()
    torch.manual_seed(0)
    nets = {"autoencoder": Autoencoder(cfg.autoencoder_config()), "energy net": EnergyNet(cfg.energy_config())}
    for name, net in nets.items():
        times = {kind: [] for kind in ADAMS}
        for _ in range(args.repeats):
            for kind, options in ADAMS.items():
                times[kind].append(ms_per_call(adam_step(net, options), 200))
        print(f"Adam step, {name}: " + "; ".join(f"{kind} " + " ".join(f"{t:.2f}" for t in ts)
                                                 for kind, ts in times.items()), flush=True)
    energy = nets["energy net"].train()
    data = torch.randn(cfg.ebm_batch_size, cfg.latent_dim)
    for label, count in (("CD iteration", cfg.ebm_batch_size * cfg.negatives_per_datapoint),
                         ("likelihood iteration", cfg.likelihood_proposals)):
        negatives = torch.randn(count, cfg.latent_dim)
        times = {"two passes": [], "one pass": []}
        for _ in range(args.repeats):
            for kind in times:
                times[kind].append(ms_per_call(energy_pass(energy, data, negatives, kind == "one pass"), 200))
        print(f"energies + gradients, {label} ({count:,} negatives): "
              + "; ".join(f"{kind} " + " ".join(f"{t:.2f}" for t in ts) for kind, ts in times.items()), flush=True)


if __name__ == "__main__":
    main()
