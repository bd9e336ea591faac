"""Sample-quality metrics of image sets, computed on a classifier's outputs.

A small MNIST CNN (`ebm.classifier`) stands in for Inception: the Fréchet distance of its
penultimate features to the test set's (FID), an Inception-score analogue, the histogram of
predicted classes (does a model drop digits?) and k-NN precision/recall in feature space.
All but `image_metrics` are pure functions of arrays, so they are tested on known cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import xlogy
from scipy.stats import entropy

from .classifier import MnistClassifier


def features_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (k,) and covariance (k, k) of (N, k) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2).

    |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)), using tr (cov1 cov2)^(1/2) =
    tr (s cov2 s)^(1/2) with s = cov1^(1/2): a symmetric eigenproblem, stable for singular covs.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    cov1, cov2 = np.asarray(cov1, dtype=np.float64), np.asarray(cov2, dtype=np.float64)
    vals, vecs = np.linalg.eigh(cov1)
    s = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    m = s @ cov2 @ s
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (m + m.T)), 0, None)).sum()
    distance = np.square(mu1 - mu2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt
    return max(float(distance), 0.0)  # >= 0 in exact arithmetic; clip rounding below zero


def inception_score(probs: np.ndarray) -> float:
    """exp(mean KL(p(y|x) || p(y))): between 1 (all alike or all unsure) and the number of classes."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(1, keepdims=True)
    kl = (xlogy(p, p) - xlogy(p, p.mean(0))).sum(1)
    return float(np.exp(kl.mean()))


def class_histogram(labels: np.ndarray, num_classes: int = 10) -> dict:
    """Counts and shares of predicted classes, their entropy in bits and the smallest share."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=num_classes)
    if len(counts) > num_classes or counts.sum() == 0:
        raise ValueError(f"need at least one label, all in 0..{num_classes - 1}")
    shares = counts / counts.sum()
    return {"counts": counts.tolist(), "shares": shares.tolist(),
            "entropy_bits": float(entropy(shares, base=2)), "min_share": float(shares.min())}


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(np.square(a).sum(1)[:, None] + np.square(b).sum(1)[None] - 2 * a @ b.T, 0)


def knn_radii(features: np.ndarray, k: int = 3, chunk: int = 2048) -> np.ndarray:
    """Squared distance of each point to its k-th nearest other point."""
    f = np.asarray(features, dtype=np.float32)
    return np.concatenate([np.partition(_sq_distances(f[i : i + chunk], f), k, axis=1)[:, k]
                           for i in range(0, len(f), chunk)])


def _covered(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Which points lie inside at least one ball (centre, radius)."""
    return np.concatenate([(_sq_distances(points[i : i + chunk], centres) <= radii[None]).any(1)
                           for i in range(0, len(points), chunk)])


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3,
                         real_radii: np.ndarray | None = None) -> tuple[float, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019) with k-NN balls in feature space.

    Precision: share of generated points inside some real point's k-NN ball (quality).
    Recall: share of real points inside some generated point's k-NN ball (coverage).
    """
    real, fake = np.asarray(real, dtype=np.float32), np.asarray(fake, dtype=np.float32)
    real_radii = knn_radii(real, k) if real_radii is None else real_radii
    precision = _covered(fake, real, real_radii).mean()
    recall = _covered(real, fake, knn_radii(fake, k)).mean()
    return float(precision), float(recall)


@dataclass
class Reference:
    """Classifier outputs on the test set, computed once and compared with every image set."""

    features: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    radii: np.ndarray

    @classmethod
    def from_features(cls, features: np.ndarray, k: int = 3) -> Reference:
        """The reference for test-set `features`: their mean and covariance (FID) and k-NN radii (precision)."""
        mean, cov = features_stats(features)
        return cls(np.asarray(features, dtype=np.float32), mean, cov, knn_radii(features, k))


def image_metrics(classifier: MnistClassifier, images: torch.Tensor, reference: Reference) -> dict:
    """All sample-quality numbers of one set of binary images against the test set."""
    features, probs = (t.numpy() for t in classifier.predict(images))
    hist = class_histogram(probs.argmax(1), probs.shape[1])
    precision, recall = knn_precision_recall(reference.features, features, real_radii=reference.radii)
    return {
        "fid": frechet_distance(*features_stats(features), reference.mean, reference.cov),
        "inception_score": inception_score(probs),
        "class_entropy_bits": hist["entropy_bits"],
        "class_min_share": hist["min_share"],
        "class_shares": hist["shares"],
        "precision": precision,
        "recall": recall,
        "num_images": len(images),
    }
