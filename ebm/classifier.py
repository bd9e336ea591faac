"""A small CNN that classifies binarized MNIST digits (or Fashion-MNIST clothes): the feature extractor behind
the image metrics, one file per dataset (`classifier_path`).

Its 128-d penultimate layer plays the role Inception-v3's pool features play in FID, and its
softmax the role of Inception's label distribution in the Inception score. It is trained on
images binarized exactly like the data and the decoded samples (threshold 0.5), so real and
generated digits look alike to it. Weights are plain safetensors, like the model's.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import REPO_ROOT, Kind, artifact_bytes, read_artifact, write_atomically
from .data import DATASETS, DEFAULT_THRESHOLD, DatasetError, check_dataset, default_data_dir, load_binarized
from .models import MAX_WIDTH
from .training import one_cycle
from .validation import Settings, setting

CLASSIFIER = Kind("mnist-ebm-classifier/1", "a classifier weights file",
                  "classifier weights {name} do not exist; create them with `python -m ebm train-classifier`")


def classifier_path(dataset: str) -> Path:
    """The shipped classifier for a dataset's images: `weights/classifier_<dataset>.safetensors`."""
    return REPO_ROOT / "weights" / f"classifier_{check_dataset(dataset)}.safetensors"


DEFAULT_CLASSIFIER = classifier_path("mnist")


@dataclass
class ClassifierConfig(Settings):
    """conv(1->c1) -> pool -> conv(c1->c2) -> pool -> fc(c2*7*7 -> feature_dim) -> fc(-> 10)."""

    channels1: int = setting(16, low=1, high=MAX_WIDTH, label="first conv channels")
    channels2: int = setting(32, low=1, high=MAX_WIDTH, label="second conv channels")
    feature_dim: int = setting(128, low=1, high=MAX_WIDTH, label="feature width", help="what FID compares")
    num_classes: int = setting(10, low=1, high=MAX_WIDTH, label="classes")


class MnistClassifier(nn.Module):
    """Two 3x3 conv layers with max pooling, then two fully connected layers."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        c1, c2 = config.channels1, config.channels2
        self.conv = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14 -> 7
        )
        self.fc = nn.Linear(c2 * 7 * 7, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 784) images in [0, 1] -> (N, feature_dim) penultimate activations (after ReLU)."""
        h = self.conv(images.reshape(-1, 1, 28, 28))
        return torch.relu(self.fc(h.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 784) images -> (N, num_classes) logits."""
        return self.head(self.features(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 784) images -> ((N, feature_dim) features, (N, num_classes) class probabilities)."""
        self.eval()
        feats, probs = [], []
        for chunk in images.split(batch_size):
            f = self.features(chunk)
            feats.append(f)
            probs.append(torch.softmax(self.head(f), -1))
        return torch.cat(feats), torch.cat(probs)


@torch.no_grad()
def accuracy(model: MnistClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images whose most probable class is the label."""
    _, probs = model.predict(images)
    return (probs.argmax(-1) == labels).float().mean().item()


def train_classifier(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    epochs: int = 6,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    config: ClassifierConfig | None = None,
    log=print,
) -> MnistClassifier:
    """Adam with a one-cycle learning rate on cross-entropy (`fit_classes`); deterministic for a given seed."""
    torch.manual_seed(seed)
    model = MnistClassifier(config or ClassifierConfig())
    start = time.perf_counter()

    def report(epoch: int, loss: float) -> None:
        log(f"epoch {epoch}/{epochs}: train loss {loss:.4f} ({time.perf_counter() - start:.0f} s)")

    return fit_classes(model, train_images, train_labels, epochs, batch_size, lr, seed, pct_start=0.2, log=report)


def fit_classes(net: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int, lr: float,
                seed: int, pct_start: float = 0.3, log=None) -> nn.Module:
    """Train a classifier of `inputs` in place: Adam with a one-cycle learning rate (peak `lr`, rising for
    `pct_start` of the steps) on cross-entropy, batches in an order drawn from `seed`; `log(epoch, mean loss)`
    after each epoch. Returns `net` in eval mode. The image classifier and the latent one both train this way."""
    if epochs < 1 or batch_size < 1 or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    gen = torch.Generator().manual_seed(seed)
    batches = math.ceil(len(inputs) / batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = one_cycle(opt, lr, epochs * batches, pct_start)
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(len(inputs), generator=gen)
        total = 0.0
        for b in range(batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            loss = nn.functional.cross_entropy(net(inputs[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if log is not None:
            log(epoch, total / len(inputs))
    return net.eval()


def save_classifier(model: MnistClassifier, path: str | Path = DEFAULT_CLASSIFIER, extra: dict | None = None) -> Path:
    """Write safetensors atomically (temp file in the same folder, then rename), readable by all."""
    metadata = {"config": json.dumps(asdict(model.config)), "extra": json.dumps(extra or {})}
    return write_atomically(Path(path).resolve(), artifact_bytes(model, CLASSIFIER, metadata))


def load_classifier(path: str | Path = DEFAULT_CLASSIFIER) -> tuple[MnistClassifier, dict]:
    """Read a classifier written by `save_classifier`; returns (model in eval mode, extra metadata).

    Raises WeightsError naming the file and the problem (missing, not safetensors, wrong
    format, tensors that do not fit the architecture in the metadata); see `read_artifact`.
    """
    model, header = read_artifact(path, CLASSIFIER, lambda h: MnistClassifier(h.config("config", ClassifierConfig)))
    return model, header.extra


def add_train_classifier_arguments(p: argparse.ArgumentParser) -> None:
    """Add `train-classifier`'s options to its CLI subparser."""
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None, help="dataset root (default $EBM_DATA_DIR or data/)")
    p.add_argument("--out", type=Path, default=None,
                   help="classifier weights file to write (default: weights/classifier_<dataset>.safetensors)")


def run_train_classifier(args: argparse.Namespace) -> Path:
    """Train on a binarized dataset's train split, report test accuracy, save with the accuracy in the metadata."""
    data_dir = args.data_dir or default_data_dir()
    try:
        train_x, train_y = load_binarized(args.dataset, "train", data_dir, DEFAULT_THRESHOLD)
        test_x, test_y = load_binarized(args.dataset, "test", data_dir, DEFAULT_THRESHOLD)
        model = train_classifier(train_x, train_y, args.epochs, args.batch_size, args.lr, args.seed)
    except (DatasetError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    acc = accuracy(model, test_x, test_y)
    extra = {"dataset": args.dataset, "threshold": DEFAULT_THRESHOLD, "test_accuracy": round(acc, 4),
             "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    path = save_classifier(model, args.out or classifier_path(args.dataset), extra)
    print(f"test accuracy {acc:.4f}; saved {path}")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ebm.classifier", description=run_train_classifier.__doc__)
    add_train_classifier_arguments(parser)
    run_train_classifier(parser.parse_args())
