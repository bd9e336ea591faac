"""Training throughput alone and next to a busy process, for one torch thread and for all cores.

`python -m ebm train` runs torch on one thread (`ebm.threads`; $EBM_TORCH_THREADS overrides). This
measures why, in one run: stage 1 (autoencoder batches/s) and stage 2 (contrastive-divergence
iterations/s) of the default config, each in a fresh child process as the CLI sets it up, with
EBM_TORCH_THREADS=1 and =<all cores>, first alone, then next to busy processes
(`python -c "while True: pass"`, bounded). A fair share next to one busy process is >= 0.5x alone.

Data: MNIST from $EBM_DATA_DIR / data/ when present, else random binary images (the speed is the same).
Run: python -m benchmarks.training [--hogs 1] [--batches 150] [--iterations 150]
The last line is `busy_ratio_stage1=<r> busy_ratio_stage2=<r>` for the one-thread setting.
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
from ebm.threads import limit_native_threads
from ebm.training import TrainConfig, build_model, train_autoencoder, train_energy
from ebm.data import DatasetError, load_binarized
limit_native_threads()  # what `python -m ebm train` does first
batches, iterations = int(sys.argv[1]), int(sys.argv[2])
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


def measure(torch_threads: int, batches: int, iterations: int) -> dict:
    env = dict(os.environ, EBM_TORCH_THREADS=str(torch_threads), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", CHILD, str(batches), str(iterations)], env=env, cwd=REPO,
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
    rows = {}
    for threads in sorted({1, cores}):
        alone = measure(threads, args.batches, args.iterations)
        with busy_processes(args.hogs):
            busy = measure(threads, args.batches, args.iterations)
        rows[threads] = (alone, busy)
    print(
        f"{'torch threads':>13} {'stage 1 alone':>14} {'busy':>8} {'ratio':>6} {'stage 2 alone':>14} "
        f"{'busy':>8} {'ratio':>6}"
    )
    for threads, (alone, busy) in rows.items():
        r1, r2 = busy["stage1"] / alone["stage1"], busy["stage2"] / alone["stage2"]
        print(f"{threads:>13} {alone['stage1']:>11.1f}/s {busy['stage1']:>6.1f}/s {r1:>6.2f} "
              f"{alone['stage2']:>11.1f}/s {busy['stage2']:>6.1f}/s {r2:>6.2f}")
    alone, busy = rows[1]
    print(
        f"busy_ratio_stage1={busy['stage1'] / alone['stage1']:.2f} "
        f"busy_ratio_stage2={busy['stage2'] / alone['stage2']:.2f}"
    )


if __name__ == "__main__":
    main()
