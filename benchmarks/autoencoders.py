"""Autoencoder candidates at d = 4, side by side: seconds per epoch, test BCE and the quality of the test set's
reconstructions (FID, IS, rarest class's share, precision, recall with `ebm.classifier`), the bound a latent
EBM's samples cannot beat.

Each candidate is a stage-1 TrainConfig trained by the real `ebm.training.train_autoencoder` on MNIST, one
torch thread per batch shard and the shards on every core as in `python -m ebm train`; the candidates advance
one epoch each in turn, so that load from other processes falls on all of them alike. Each draws its code
noise from its own seeded generator, so its figures do not depend on which candidates run beside it.
Reconstructions are thresholded at 0.5 like `ebm.generate.decode_binary`.

Run: python -m benchmarks.autoencoders [--epochs 12] [--candidates mlp conv conv-noise0.05] [--grid out.png]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_model  # noqa: E402
from ebm.classifier import load_classifier  # noqa: E402
from ebm.data import load_binarized  # noqa: E402
from ebm.images import image_grid, png_bytes  # noqa: E402
from ebm.metrics import Reference, image_metrics  # noqa: E402
from ebm.models import Autoencoder  # noqa: E402
from ebm.threads import chain_threads, limit_native_threads  # noqa: E402
from ebm.training import TrainConfig, train_autoencoder  # noqa: E402

MLP = dict(ae_architecture="mlp", ae_hidden_dim=512, ae_lr=1e-3)  # the default until issue 11
CONV = dict(ae_architecture="conv", ae_hidden_dim=256, ae_conv_channels=32, ae_lr=2e-3)
CANDIDATES = {
    "mlp": MLP,
    "mlp-noise0.05": dict(MLP, ae_latent_noise=0.05),
    "conv": CONV,
    "conv-noise0.05": dict(CONV, ae_latent_noise=0.05),
    "conv-noise0.2": dict(CONV, ae_latent_noise=0.2),
    "conv-narrow": dict(CONV, ae_conv_channels=16),  # the default; 1.7 M multiply-adds an image, the MLP's 1.3 M
    "conv-wide": dict(CONV, ae_conv_channels=64, ae_hidden_dim=512),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--candidates", nargs="+", choices=tuple(CANDIDATES), default=["mlp", "conv", "conv-noise0.05"])
    parser.add_argument("--grid", type=Path, help="write the test set's first 64 images over each candidate's "
                                                  "reconstructions to this PNG")
    args = parser.parse_args()
    limit_native_threads()
    torch.set_num_threads(1)
    print(f"CPU: {cpu_model()}; one torch thread per shard, shards on {chain_threads()} cores; {args.epochs} epochs",
          flush=True)
    train, _ = load_binarized("mnist", "train", None)
    test, _ = load_binarized("mnist", "test", None)
    classifier, _ = load_classifier()
    reference = Reference.from_features(classifier.predict(test)[0].numpy())
    runs = {}
    for name in args.candidates:
        cfg = TrainConfig(ae_epochs=args.epochs, **CANDIDATES[name])
        torch.manual_seed(cfg.seed)
        model = Autoencoder(cfg.autoencoder_config())
        runs[name] = dict(cfg=cfg, model=model, events=train_autoencoder(model, train, test, cfg), seconds=0.0)
    for epoch in range(1, args.epochs + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            event = next(e for e in run["events"] if "test_bce" in e.losses)  # the epoch's last event
            run["seconds"] += time.perf_counter() - start
            run["test_bce"] = event.losses["test_bce"]
            print(f"epoch {epoch} {name}: test BCE {run['test_bce']:.1f}, {run['seconds']:.0f} s so far", flush=True)
    rows = [test[:64]]
    print("| candidate | s/epoch | test BCE | rec. FID | IS | rarest class | precision | recall |")
    print("|---|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        with torch.no_grad():
            images = torch.cat([(run["model"].decode_logits(run["model"].encode(c)) > 0).float()
                                for c in test.split(2048)])
        m = image_metrics(classifier, images, reference)
        rows.append(images[:64])
        print(f"| {name} | {run['seconds'] / args.epochs:.1f} | {run['test_bce']:.1f} | {m['fid']:.2f} | "
              f"{m['inception_score']:.2f} | {m['class_min_share']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} |",
              flush=True)
    if args.grid:
        args.grid.write_bytes(png_bytes(image_grid(torch.cat(rows), ncols=16, scale=2)))


if __name__ == "__main__":
    main()
