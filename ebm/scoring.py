"""How likely is an image under the model? Energy, exact latent log-likelihood and image log-likelihood.

For a binary image x with code c = model.encode(x) (standardized coordinates):
- the energy E(c), and the exact latent log-likelihood log p(c) = -E(c) - log Z (log Z by grid
  quadrature, `ebm.quadrature`); both only say how typical the code is, and the encoder maps
  many non-digits (Fashion-MNIST's clothes) into typical codes;
- the image log-likelihood log p(x) = log ∫ p(x | c) p(c) dc, with p(x | c) the decoder's
  Bernoulli pixels: a likelihood of the picture itself under the whole generative model, which
  also charges for what the decoder cannot draw, so it is the score that flags strange images.
  In 4-D it is computed by importance sampling: Newton steps from the encoder's code to the
  posterior mode, then a Student-t proposal with the Laplace covariance (the inverse Hessian of
  -log p(x, c) there), with a standard error and the weights' effective sample size.
`build_reference` scores MNIST test digits once per model; `score_image` places one image
among them (percentiles, and a verdict below `OUTLIER_PERCENTILE`). Torch and numpy only:
this sits on the app's page path (scikit-learn and scipy.stats would add seconds to a cold start).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.nn.functional import binary_cross_entropy_with_logits

from .quadrature import GRID_RESOLUTION, code_box, grid_quadrature

IS_DRAWS = 128
"""Proposal draws per image: the posterior of a 784-pixel image is sharp and close to Gaussian, so
the Laplace-fitted proposal keeps most of them (median weight ESS 83% on MNIST test digits, 80% on
Fashion-MNIST), and the standard error of log p(x) is ~0.04 nats, at ~8 ms per image on one core."""
T_DOF = 5
"""Degrees of freedom of the proposal: heavier tails than the Gaussian posterior keep the weights bounded."""
NEWTON_STEPS = 10
"""Damped Newton steps from the encoder's code towards the posterior mode (digits take 3, clothes up to 10)."""
NEWTON_TOLERANCE = 1e-3
"""Nats: a Newton step that gains less ends an image's search (the proposal only needs to be near the mode)."""
LINE_SEARCH = 8
"""Step lengths each Newton step tries: 1, 1/2, ..., 1/128 of it (and none), keeping the best."""
MIN_CURVATURE = 0.1
"""Smallest Hessian eigenvalue used (standardized units): the proposal is never wider than ~3 per axis."""
LOG_Z_MARGIN = 1.5
"""Box of the prior's log Z: the codes' range +- this, as `ebm.evaluation.GRID_MARGIN` (not imported:
that module pulls scikit-learn onto the page path)."""
REFERENCE_IMAGES = 2000
"""MNIST test digits `build_reference` scores: percentiles to ~0.1 points, in ~15 s on one core."""
OUTLIER_PERCENTILE = 1.0
"""An image whose log p(x) is below this percentile of the MNIST test digits' is "unlike anything in training".

The image likelihood, not the latent one: the encoder maps clothes to typical codes, while the
decoder cannot draw them. At the 1st percentile, 1% of real test digits are flagged by
construction (the false-alarm rate), a price low enough for a playground, while 92% of Fashion-MNIST
test images and all noise images fall below it (`python -m ebm evaluate`'s OOD table)."""
OUTLIER = "unlike anything in training"
INLIER = "like the training digits"
_CHUNK_ROWS = 16_384  # decoder rows (images x draws) per forward pass: ~50 MB of activations


class Scores(NamedTuple):
    """Scores of a batch of images, (N,) float64 arrays each, in nats."""

    energy: np.ndarray
    log_p_z: np.ndarray  # exact latent log-likelihood -E(c) - log Z
    log_p_x: np.ndarray  # image log-likelihood, by importance sampling
    log_p_x_standard_error: np.ndarray  # delta method: std(w) / (mean(w) sqrt(draws))
    effective_sample_size: np.ndarray  # of the importance weights, (sum w)^2 / sum w^2


@dataclass(frozen=True)
class ScoreReference:
    """Scores of MNIST test digits under one model, sorted, to place a new image among them."""

    log_z: float
    log_p_z: np.ndarray  # sorted ascending
    log_p_x: np.ndarray  # sorted ascending
    seconds: float

    @property
    def outlier_log_p_x(self) -> float:
        """log p(x) below which an image is an outlier: the `OUTLIER_PERCENTILE` of the digits'."""
        return float(np.percentile(self.log_p_x, OUTLIER_PERCENTILE))


class ImageScore(NamedTuple):
    """One image's scores, where they fall among the MNIST test digits', and the verdict."""

    energy: float
    log_p_z: float
    log_p_x: float
    log_p_x_standard_error: float
    effective_sample_size: float
    log_p_z_percentile: float  # % of test digits with a lower log p(z) (the energy's is 100 minus this)
    log_p_x_percentile: float  # % of test digits with a lower log p(x)
    verdict: str  # OUTLIER or INLIER

    def to_dict(self) -> dict:
        """Plain JSON values."""
        return self._asdict()


def prior_log_z(model, codes: torch.Tensor, resolution: int = GRID_RESOLUTION) -> float:
    """log Z of the prior over standardized codes, on a grid over the codes' box +- `LOG_Z_MARGIN`."""
    return grid_quadrature(model.energy, *code_box(codes, LOG_Z_MARGIN), resolution).log_z


def _check_images(images: torch.Tensor) -> torch.Tensor:
    """The images as float32 (N, 784), or a ValueError saying what is wrong with them."""
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.dim() != 2 or images.shape[1] != 784 or images.shape[0] == 0:
        raise ValueError(f"need (N, 784) binary images, got shape {tuple(images.shape)}")
    if not bool(((images == 0) | (images == 1)).all()):
        raise ValueError("images must be binary (0 or 1 in every pixel): preprocess them first")
    return images


def neg_log_joint(model, codes: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """-log p(x | c) + E(c) = -log p(x, c) - log Z: codes (..., d), images broadcast against (..., 784)."""
    logits = model.autoencoder.decode_logits(codes * model.code_std + model.code_mean)
    bce = binary_cross_entropy_with_logits(logits, images.expand_as(logits), reduction="none").sum(-1)
    return bce + model.energy(codes)


def _value_grad_hessian(model, codes: torch.Tensor, images: torch.Tensor):
    """f = -log p(x, c) + const per image, its gradient (N, d) and Hessian (N, d, d), by autograd."""
    with torch.enable_grad():
        codes = codes.detach().requires_grad_(True)
        f = neg_log_joint(model, codes, images)
        (grad,) = torch.autograd.grad(f.sum(), codes, create_graph=True)
        rows = [torch.autograd.grad(grad[:, k].sum(), codes, retain_graph=True)[0] for k in range(codes.shape[1])]
    return f.detach(), grad.detach(), torch.stack(rows, 1).detach()


def _inverse_sqrt(hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A square root L of the (eigenvalue-clipped) inverse Hessian, L L^T = H^-1, and log det H^-1."""
    values, vectors = torch.linalg.eigh(0.5 * (hessian + hessian.transpose(1, 2)))
    values = values.abs().clamp(min=MIN_CURVATURE)
    return vectors * values.rsqrt().unsqueeze(1), -values.log().sum(-1)


def posterior_mode(model, images: torch.Tensor, steps: int = NEWTON_STEPS):
    """Damped Newton from the encoder's codes to the mode of p(c | x): (modes (N, d), L (N, d, d), log det Σ (N,)).

    Each step tries the full Newton step, its halves down to 1/128 and no step, and keeps the best,
    so -log p(x, c) never increases; an image that gains less than NEWTON_TOLERANCE has converged
    and drops out. Σ = L L^T is the Laplace covariance at the last point.
    """
    codes = model.encode(images)
    fractions = torch.tensor([0.5**k for k in range(LINE_SEARCH)] + [0.0]).view(1, -1, 1)
    active = torch.arange(len(codes))
    for _ in range(steps):
        x = images[active]
        _, grad, hessian = _value_grad_hessian(model, codes[active], x)
        root, _ = _inverse_sqrt(hessian)
        step = -(root @ (root.transpose(1, 2) @ grad.unsqueeze(-1))).squeeze(-1)
        trials = codes[active].unsqueeze(1) + fractions * step.unsqueeze(1)  # (A, fractions, d)
        values = neg_log_joint(model, trials, x.unsqueeze(1))
        gain, best = values[:, -1] - values.min(1).values, values.argmin(1)
        codes[active] = trials[torch.arange(len(active)), best]
        active = active[gain > NEWTON_TOLERANCE]
        if len(active) == 0:
            break
    _, _, hessian = _value_grad_hessian(model, codes, images)
    root, log_det = _inverse_sqrt(hessian)
    return codes, root, log_det


def standard_t_draws(num_draws: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`num_draws` standard multivariate Student-t (T_DOF) draws (S, d) and their log densities (S,).

    The chi-square is a sum of T_DOF squared normals, so every number comes from one seeded generator.
    """
    gen = torch.Generator().manual_seed(seed)
    normal = torch.randn(num_draws, dim, generator=gen, dtype=torch.float64)
    chi2 = torch.randn(num_draws, T_DOF, generator=gen, dtype=torch.float64).square().sum(1)
    draws = normal * (T_DOF / chi2).sqrt().unsqueeze(1)
    log_density = (math.lgamma((T_DOF + dim) / 2) - math.lgamma(T_DOF / 2) - dim / 2 * math.log(T_DOF * math.pi)
                   - (T_DOF + dim) / 2 * torch.log1p(draws.square().sum(1) / T_DOF))
    return draws, log_density


@torch.no_grad()
def score_images(model, images: torch.Tensor, log_z: float, num_draws: int = IS_DRAWS, seed: int = 0) -> Scores:
    """Energy, exact log p(c) and importance-sampled log p(x) of (N, 784) binary images (see module doc).

    The same seeded standard-t draws are moved onto every image's Laplace fit, so a score does
    not depend on which other images are in the batch; each image's estimate is unbiased for p(x).
    An ESS of a few draws means the proposal missed the posterior's shape (a second mode, say):
    then log p(x) is likely an underestimate and its standard error not to be trusted.
    """
    images = _check_images(images)
    if not 2 <= num_draws <= 1_000_000:
        raise ValueError(f"num_draws must be in [2, 1000000], got {num_draws}")
    draws, log_t = standard_t_draws(num_draws, model.latent_dim, seed)
    parts = []
    for x in images.split(max(1, _CHUNK_ROWS // num_draws)):
        codes = model.encode(x)
        modes, root, log_det = posterior_mode(model, x)
        offsets = (root.double() @ draws.T).transpose(1, 2)  # (B, S, d)
        log_q = log_t - 0.5 * log_det.double().unsqueeze(1)
        points = (modes.double().unsqueeze(1) + offsets).float()
        log_w = -neg_log_joint(model, points, x.unsqueeze(1)).double() - log_z - log_q
        energy = model.energy(codes).double()
        parts.append((energy, -energy - log_z, *log_mean_exp(log_w)))
    return Scores(*(torch.cat(columns).numpy() for columns in zip(*parts)))


def log_mean_exp(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of (N, S) log weights: log mean w, its delta-method standard error and the weights' ESS.

    `ebm.importance.log_mean_exp` is the same for one 1-D numpy array; this one is batched in torch.
    """
    w = (log_w - log_w.max(1, keepdim=True).values).exp()
    mean = w.mean(1)
    return (mean.log() + log_w.max(1).values, w.std(1) / (mean * math.sqrt(log_w.shape[1])),
            w.sum(1).square() / w.square().sum(1))


def build_reference(model, test_images: torch.Tensor, log_z: float, num_images: int = REFERENCE_IMAGES,
                    seed: int = 0) -> ScoreReference:
    """Score a fixed random subset of `num_images` MNIST test digits: what `score_image` compares with."""
    start = time.perf_counter()
    chosen = torch.randperm(len(test_images), generator=torch.Generator().manual_seed(seed))[:num_images]
    scores = score_images(model, test_images[chosen], log_z, seed=seed)
    return ScoreReference(log_z=log_z, log_p_z=np.sort(scores.log_p_z), log_p_x=np.sort(scores.log_p_x),
                          seconds=time.perf_counter() - start)


def percentile_of(sorted_values: np.ndarray, value: float) -> float:
    """% of `sorted_values` below `value` (ties count half)."""
    below = np.searchsorted(sorted_values, value, "left")
    at_or_below = np.searchsorted(sorted_values, value, "right")
    return float(50.0 * (below + at_or_below) / len(sorted_values))


def score_image(model, image: torch.Tensor, reference: ScoreReference, num_draws: int = IS_DRAWS,
                seed: int = 0) -> ImageScore:
    """One preprocessed (784,) binary image's scores, percentiles among the reference digits and verdict."""
    s = score_images(model, image.reshape(1, -1), reference.log_z, num_draws, seed)
    log_p_x = float(s.log_p_x[0])
    return ImageScore(
        energy=float(s.energy[0]), log_p_z=float(s.log_p_z[0]), log_p_x=log_p_x,
        log_p_x_standard_error=float(s.log_p_x_standard_error[0]),
        effective_sample_size=float(s.effective_sample_size[0]),
        log_p_z_percentile=percentile_of(reference.log_p_z, float(s.log_p_z[0])),
        log_p_x_percentile=percentile_of(reference.log_p_x, log_p_x),
        verdict=OUTLIER if log_p_x < reference.outlier_log_p_x else INLIER,
    )
