"""Does a stochastic decoder lift the d = 4 autoencoder's FID ceiling, and what does it cost? Side by side in one run.

The shipped autoencoder decodes each 4-D code to one image, so every sample is a point on a 4-D image manifold
and the FID of its test reconstructions (about 19-20) bounds what any latent density can reach. The candidate
here adds k "style" dimensions to the code: the encoder also gives a Gaussian q(s | x), kept near N(0, I) by a
KL term of weight beta (a VAE on s only), and the decoder reads (z, s). The energy model would still model z
alone; a sample would be decode(z, s) with s ~ N(0, I).

For each candidate the test set's 10,000 codes are decoded three ways, thresholded at 0.5 like sampling:
with the encoder's style (a reconstruction), with style drawn from the prior (what a sample would be), and with
s = 0. Columns: FID, rarest class, precision, recall with `ebm.classifier`, and "label kept", the share whose
classified digit is the test image's label: how much of the digit's identity z still decides once s is drawn.
"none" (k = 0) is the shipped conv autoencoder's recipe (c = 16, hidden 256, 10 epochs, batch 128, one-cycle
Adam peaking at 2e-3, code noise 0.1, code penalty 1), in the same run.

Run: python -m benchmarks.style_latents [--epochs 10] [--candidates none k8-beta5 k8-beta8] [--grid out.png]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_model  # noqa: E402
from ebm.classifier import load_classifier  # noqa: E402
from ebm.data import load_binarized  # noqa: E402
from ebm.images import image_grid, png_bytes  # noqa: E402
from ebm.metrics import Reference, image_metrics  # noqa: E402
from ebm.models import _conv_decoder, _conv_encoder  # noqa: E402
from ebm.training import AE_WARMUP, TrainConfig, fused_adam, one_cycle  # noqa: E402

CANDIDATES = {"none": (0, 0.0), "k8-beta1": (8, 1.0), "k8-beta3": (8, 3.0), "k8-beta5": (8, 5.0),
              "k8-beta8": (8, 8.0)}  # name: (style dims k, KL weight beta)


class StyleAutoencoder(nn.Module):
    """The default conv autoencoder whose encoder also outputs a style mean and log-variance (k each)."""

    def __init__(self, cfg: TrainConfig, k: int):
        super().__init__()
        self.d, self.k = cfg.latent_dim, k
        self.encoder = _conv_encoder(cfg.ae_conv_channels, cfg.ae_hidden_dim, self.d + 2 * k)
        self.decoder = _conv_decoder(cfg.ae_conv_channels, cfg.ae_hidden_dim, self.d + k)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.encoder(images)
        return out[:, :self.d], out[:, self.d:self.d + self.k], out[:, self.d + self.k:]


def train(model: StyleAutoencoder, images: torch.Tensor, cfg: TrainConfig, beta: float, epochs: int) -> float:
    """`train_autoencoder`'s recipe plus beta · KL(q(s | x) || N(0, I)); returns the last epoch's mean BCE."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = fused_adam(model.parameters(), lr=cfg.ae_lr)
    batches = math.ceil(len(images) / cfg.ae_batch_size)
    sched = one_cycle(opt, cfg.ae_lr, epochs * batches, AE_WARMUP)
    for _ in range(epochs):
        order, total_bce = torch.randperm(len(images), generator=gen), 0.0
        for b in range(batches):
            x = images[order[b * cfg.ae_batch_size:(b + 1) * cfg.ae_batch_size]]
            z, mean, log_var = model.encode(x)
            noisy = z + cfg.ae_latent_noise * torch.randn(z.shape, generator=gen)
            style = mean + (0.5 * log_var).exp() * torch.randn(mean.shape, generator=gen)
            bce = nn.functional.binary_cross_entropy_with_logits(model.decoder(torch.cat([noisy, style], 1)), x,
                                                                 reduction="sum") / len(x)
            kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum() / len(x)
            loss = bce + cfg.ae_code_penalty * 0.5 * z.square().sum() / len(x) + beta * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total_bce += bce.item()
    return total_bce / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--candidates", nargs="+", choices=tuple(CANDIDATES), default=["none", "k8-beta5", "k8-beta8"])
    parser.add_argument("--grid", type=Path, help="write 32 test digits over each candidate's decodings to this PNG")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; {torch.get_num_threads()} torch threads; {args.epochs} epochs", flush=True)
    cfg = TrainConfig()
    train_images, _ = load_binarized("mnist", "train", None)
    test, labels = load_binarized("mnist", "test", None)
    classifier, _ = load_classifier()
    reference = Reference.from_features(classifier.predict(test)[0].numpy())
    rows = [test[:32]]
    print("| candidate | s/epoch | train BCE | style | rec. FID | rarest class | precision | recall | label kept |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.candidates:
        k, beta = CANDIDATES[name]
        torch.manual_seed(cfg.seed)
        model = StyleAutoencoder(cfg, k)
        start = time.perf_counter()
        bce = train(model, train_images, cfg, beta, args.epochs)
        seconds = (time.perf_counter() - start) / args.epochs
        with torch.no_grad():
            z, mean, _ = (torch.cat(parts) for parts in zip(*(model.encode(chunk) for chunk in test.split(2048))))
            styles = {"encoder": mean, "prior": torch.randn(mean.shape, generator=torch.Generator().manual_seed(1)),
                      "zero": torch.zeros_like(mean)}
            for style_name, style in (styles.items() if k else [("-", mean)]):
                codes = torch.cat([z, style], 1)
                images = torch.cat([(model.decoder(chunk) > 0).float() for chunk in codes.split(2048)])
                m = image_metrics(classifier, images, reference)
                kept = (classifier.predict(images)[1].argmax(1) == labels).float().mean().item()
                rows.append(images[:32])
                print(f"| {name} | {seconds:.1f} | {bce:.1f} | {style_name} | {m['fid']:.2f} | "
                      f"{m['class_min_share']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {kept:.3f} |",
                      flush=True)
    if args.grid:
        args.grid.write_bytes(png_bytes(image_grid(torch.cat(rows), ncols=16, scale=2)))


if __name__ == "__main__":
    main()
