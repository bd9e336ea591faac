"""log Z by importance sampling: an estimate with error bars that checks the grid quadrature.

log Z = log E_q[exp(-E(x)) / q(x)] for a proposal q fitted to the data codes. Unlike the grid
it needs no box and its cost does not grow with the dimension, and it says how sure it is (a
standard error and the weights' effective sample size). Its own module because the proposal
needs scikit-learn and scipy.stats, which the app's pages must not import (`ebm.quadrature`
is the light one); `ebm.ais` is the third estimator next to these two.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import multivariate_t
from sklearn.mixture import GaussianMixture

from .quadrature import Energy

IS_SAMPLES = 1_000_000  # default proposal draws


@dataclass
class ImportanceEstimate:
    """One importance-sampling estimate of log Z, with its error bar and how many draws the weights are worth."""

    log_z: float
    standard_error: float  # of log_z, by the delta method
    effective_sample_size: float  # (sum w)^2 / sum w^2
    num_samples: int
    seconds: float

    def summary(self) -> dict:
        """The estimate and its settings as plain JSON values, for the evaluation report."""
        return {"log_z": self.log_z, "standard_error": self.standard_error,
                "effective_sample_size": self.effective_sample_size, "num_samples": self.num_samples,
                "seconds": self.seconds}


def proposal_draws(codes: torch.Tensor | np.ndarray, num_samples: int, components: int = 10,
                   tail_weight: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`num_samples` draws x (float64, (N, d)) from a heavy-tailed proposal q fitted to the codes, and log q(x).

    q = (1 - tail_weight) GMM(codes) + tail_weight Student-t(3 dof, codes' mean, 4 x their
    covariance): the GMM puts the samples where the mass is, the t tail keeps the weights
    bounded where the GMM falls off faster than exp(-E). The mixture is sampled with fixed
    component counts (stratified), which keeps importance estimates unbiased.
    """
    x_fit = np.asarray(codes, dtype=np.float64)
    rng = np.random.default_rng(seed)
    gmm = GaussianMixture(components, covariance_type="full", random_state=seed).fit(x_fit)
    tail = multivariate_t(loc=x_fit.mean(0), shape=4.0 * np.cov(x_fit.T), df=3)
    n_tail = max(1, round(num_samples * tail_weight))
    x = np.concatenate([gmm.sample(num_samples - n_tail)[0],
                        tail.rvs(size=n_tail, random_state=rng).reshape(n_tail, -1)])
    alpha = n_tail / num_samples
    return x, np.logaddexp(np.log1p(-alpha) + gmm.score_samples(x), np.log(alpha) + tail.logpdf(x))


@torch.no_grad()
def importance_log_z(
    energy: Energy,
    codes: torch.Tensor | np.ndarray,
    num_samples: int = IS_SAMPLES,
    components: int = 10,
    tail_weight: float = 0.1,
    seed: int = 0,
) -> ImportanceEstimate:
    """log Z = log E_q[exp(-E(x)) / q(x)] with the `proposal_draws` proposal fitted to the codes."""
    start = time.perf_counter()
    x, log_q = proposal_draws(codes, num_samples, components, tail_weight, seed)
    energies = torch.cat([energy(p) for p in torch.from_numpy(x).float().split(65_536)]).double().numpy()
    log_z, standard_error, ess = log_mean_exp(-energies - log_q)
    return ImportanceEstimate(log_z=log_z, standard_error=standard_error, effective_sample_size=ess,
                              num_samples=num_samples, seconds=time.perf_counter() - start)


def log_mean_exp(log_w: np.ndarray) -> tuple[float, float, float]:
    """log mean exp(log_w), its delta-method standard error std(w) / (mean(w) sqrt(N)), and the weights' ESS."""
    top = log_w.max()
    w = np.exp(log_w - top)
    return (float(np.log(w.mean()) + top), float(w.std(ddof=1) / (w.mean() * math.sqrt(len(w)))),
            float(w.sum() ** 2 / np.square(w).sum()))
