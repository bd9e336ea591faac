"""Sampler diagnostics on plain arrays: effective sample size, split R-hat, marginal bias.

Traces are arrays (steps, chains) or (steps, chains, d). ESS and R-hat follow Vehtari et al.
(2021, "Rank-normalization, folding, and localization: an improved R-hat"), without the rank
normalization: chains are split in halves, autocorrelations are pooled over chains, and the
autocorrelation sum is truncated by Geyer's initial monotone sequence, as in Stan.

`marginal_w1` compares the samples' 1-D marginals with marginals known on a grid (from the
log Z quadrature): a finite-ε ULA shows its bias there, while an exact sampler stays at the
level of `marginal_w1_noise`, the distance that n exact draws would have.
"""

from __future__ import annotations

import math

import numpy as np


def _split_chains(trace: np.ndarray) -> np.ndarray:
    """(steps, chains[, d]) -> (steps // 2, 2 * chains, d): each chain's first and second half."""
    x = np.asarray(trace, dtype=np.float64)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[0] < 4 or x.shape[1] < 1:
        raise ValueError(f"trace must have shape (steps >= 4, chains[, d]), got {np.shape(trace)}")
    half = x.shape[0] // 2
    return np.concatenate([x[:half], x[x.shape[0] - half :]], axis=1)


def _squeeze(values: np.ndarray, trace: np.ndarray) -> float | np.ndarray:
    return float(values[0]) if np.ndim(trace) == 2 else values


def split_rhat(trace: np.ndarray) -> float | np.ndarray:
    """Split R-hat: sqrt of (pooled variance estimate / mean within-chain variance); ~1 when mixed.

    Returns a float for a (steps, chains) trace, a (d,) array for (steps, chains, d).
    """
    x = _split_chains(trace)
    n = x.shape[0]
    within = x.var(axis=0, ddof=1).mean(axis=0)
    between = x.mean(axis=0).var(axis=0, ddof=1)  # B / n in Gelman's notation
    with np.errstate(divide="ignore", invalid="ignore"):
        rhat = np.sqrt(((n - 1) / n * within + between) / within)
    return _squeeze(rhat, trace)


def autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased (divide by n) autocovariance along axis 0, for every lag 0..n-1, via FFT."""
    n = x.shape[0]
    size = 2 ** math.ceil(math.log2(2 * n))  # zero padding: circular correlation becomes linear
    f = np.fft.rfft(x - x.mean(axis=0), n=size, axis=0)
    return np.fft.irfft(f * np.conj(f), n=size, axis=0)[:n] / n


def effective_sample_size(trace: np.ndarray) -> float | np.ndarray:
    """Total ESS over all chains: chains x steps / (integrated autocorrelation time).

    Returns a float for a (steps, chains) trace, a (d,) array for (steps, chains, d).
    A constant trace has no defined ESS and gives NaN.
    """
    x = _split_chains(trace)
    n, m, d = x.shape
    acov = autocovariance(x)  # (n, m, d)
    within = acov[0].mean(axis=0) * n / (n - 1)
    between = x.mean(axis=0).var(axis=0, ddof=1) if m > 1 else 0.0
    var_plus = (n - 1) / n * within + between
    ess = np.full(d, np.nan)
    for j in range(d):
        if not var_plus[j] > 0:
            continue
        rho = 1.0 - (within[j] - acov[:, :, j].mean(axis=1)) / var_plus[j]
        rho[0] = 1.0
        pairs = rho[: n - n % 2].reshape(-1, 2).sum(axis=1)  # Geyer: rho_2k + rho_2k+1 > 0 ...
        negative = np.flatnonzero(pairs < 0)
        pairs = np.minimum.accumulate(pairs[: negative[0] if len(negative) else len(pairs)])  # ... and decreasing
        tau = max(-1.0 + 2.0 * pairs.sum(), 1.0 / math.log10(n * m))  # Stan's cap for antithetic chains
        ess[j] = n * m / tau
    return _squeeze(ess, trace)


def _grid_cdf(edges: np.ndarray, mass: np.ndarray):
    """The CDF of a density that is uniform within each grid cell, as a function of x."""
    edges = np.asarray(edges, dtype=np.float64)
    mass = np.asarray(mass, dtype=np.float64)
    if edges.ndim != 1 or mass.shape != (len(edges) - 1,) or np.any(np.diff(edges) <= 0) or np.any(mass < 0):
        raise ValueError("need increasing edges (n + 1,) and non-negative masses (n,)")
    cumulative = np.concatenate([[0.0], np.cumsum(mass) / mass.sum()])
    return lambda x: np.interp(x, edges, cumulative)


def marginal_w1(samples: np.ndarray, edges: np.ndarray, mass: np.ndarray) -> float:
    """Wasserstein-1 distance between 1-D samples and a piecewise-uniform density on a grid.

    W1 = integral of |F_samples - F_grid|, computed exactly: between consecutive breakpoints
    (samples and edges) the empirical CDF is constant and the grid CDF is linear.
    """
    s = np.sort(np.asarray(samples, dtype=np.float64).ravel())
    if len(s) == 0 or not np.isfinite(s).all():
        raise ValueError("need at least one sample, all finite")
    cdf = _grid_cdf(edges, mass)
    t = np.unique(np.concatenate([s, edges]))
    g0 = cdf(t[:-1]) - np.searchsorted(s, t[:-1], side="right") / len(s)  # F_grid - F_samples on [t_i, t_i+1)
    g1 = cdf(t[1:]) - np.searchsorted(s, t[:-1], side="right") / len(s)
    width = np.diff(t)
    same_sign = g0 * g1 >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing = (g0**2 + g1**2) / (2 * (np.abs(g0) + np.abs(g1)))
    area = np.where(same_sign, 0.5 * (np.abs(g0) + np.abs(g1)), crossing) * width
    return float(area.sum())


def marginal_w1_noise(edges: np.ndarray, mass: np.ndarray, n: int) -> float:
    """Expected W1 of n exact draws from the grid density (large-n limit).

    E|F_n(x) - F(x)| ~ sqrt(2 F (1 - F) / (pi n)), integrated over x: the floor below which
    a marginal distance cannot be told from sampling noise.
    """
    x = np.linspace(edges[0], edges[-1], 20 * len(mass) + 1)
    f = _grid_cdf(edges, mass)(x)
    return float(np.trapezoid(np.sqrt(np.clip(2 * f * (1 - f), 0, None) / (math.pi * n)), x))
