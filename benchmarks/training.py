"""Training throughput alone and next to a busy process, for three ways of using the cores.

`python -m ebm train` runs torch on one thread (`ebm.threads`; $EBM_TORCH_THREADS overrides) and uses
the other cores at a coarser grain: stage 1's batch shards and stage 2's chains, one group per core
(`chain_threads()`). This measures, in one run, stage 1 (autoencoder batches/s) and stage 2
(contrastive-divergence iterations/s) of the default config, each in a fresh child process as the CLI
sets it up, for: everything on one core; the default (one torch thread, shards and chains on every
core); torch's own threads on every core with the work unsplit. Each first alone, then next to busy
processes (`python -c "while True: pass"`, bounded). A fair share next to one busy process is >= 0.5x alone.

Data: MNIST from $EBM_DATA_DIR / data/ when present, else random binary images (the speed is the same).
Run: python -m benchmarks.training [--hogs 1] [--batches 150] [--iterations 150]
The last line is `busy_ratio_stage1=<r> busy_ratio_stage2=<r>` for the default.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import busy_processes, cpu_model  # noqa: E402

CHILD = r"""
import json, sys, time, torch
from ebm.threads import limit_native_threads, set_chain_threads
from ebm.training import TrainConfig, build_model, train_autoencoder, train_energy
from ebm.data import DatasetError, load_binarized
limit_native_threads()  # what `python -m ebm train` does first
batches, iterations = int(sys.argv[1]), int(sys.argv[2])
set_chain_threads(int(sys.argv[3]))
cfg = TrainConfig(ae_epochs=1)
try:
    images, _ = load_binarized("mnist", "train", None, cfg.threshold)
except DatasetError:
    images = (torch.rand(60_000, 784, generator=torch.Generator().manual_seed(0)) < 0.13).float()
model = build_model(cfg)
warm, marks = 20, {}
for ev in train_autoencoder(model.autoencoder, images[: cfg.ae_batch_size * (batches + warm)], images[:512], cfg):
    marks.setdefault("t0" if ev.step >= warm else "warm", (ev.step, time.perf_counter()))
(s0, t0), end = marks["t0"], time.perf_counter()
stage1 = (ev.step - s0) / (end - t0)
codes = torch.randn(60_000, cfg.latent_dim, generator=torch.Generator().manual_seed(1))
t0 = None
for ev in train_energy(model, codes, TrainConfig(ebm_iterations=iterations + 50)):
    if ev.step == 50:
        t0 = time.perf_counter()
stage2 = iterations / (time.perf_counter() - t0)
print(json.dumps({"threads": torch.get_num_threads(), "stage1": stage1, "stage2": stage2}))
"""

DEFAULT = "default: 1 torch thread, work split over the cores"  # the setting `python -m ebm train` uses


def measure(torch_threads: int, chain_threads: int, batches: int, iterations: int) -> dict:
    env = dict(os.environ, EBM_TORCH_THREADS=str(torch_threads), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", CHILD, str(batches), str(iterations), str(chain_threads)],
                         env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=1800, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hogs", type=int, default=1, help="busy processes next to the training")
    parser.add_argument("--batches", type=int, default=150, help="stage-1 batches timed")
    parser.add_argument("--iterations", type=int, default=150, help="stage-2 iterations timed")
    args = parser.parse_args()
    from ebm.threads import usable_cores

    cores = usable_cores()
    print(f"CPU: {cpu_model()}, {cores} usable cores; default TrainConfig; {args.hogs} busy process(es)")
    settings = {"one core": (1, 1), DEFAULT: (1, cores),
                f"torch's own {cores} threads, work unsplit": (cores, 1)}
    rows = {}
    for name, (torch_threads, chain_threads) in settings.items():
        alone = measure(torch_threads, chain_threads, args.batches, args.iterations)
        with busy_processes(args.hogs):
            busy = measure(torch_threads, chain_threads, args.batches, args.iterations)
        rows[name] = (alone, busy)
    width = max(map(len, rows))
    print(f"{'setting':<{width}} {'stage 1 alone':>14} {'busy':>8} {'ratio':>6} {'stage 2 alone':>14} "
          f"{'busy':>8} {'ratio':>6}")
    for name, (alone, busy) in rows.items():
        r1, r2 = busy["stage1"] / alone["stage1"], busy["stage2"] / alone["stage2"]
        print(f"{name:<{width}} {alone['stage1']:>11.1f}/s {busy['stage1']:>6.1f}/s {r1:>6.2f} "
              f"{alone['stage2']:>11.1f}/s {busy['stage2']:>6.1f}/s {r2:>6.2f}")
    alone, busy = rows[DEFAULT]
    print(
        f"busy_ratio_stage1={busy['stage1'] / alone['stage1']:.2f} "
        f"busy_ratio_stage2={busy['stage2'] / alone['stage2']:.2f}"
    )


if __name__ == "__main__":
    main()
