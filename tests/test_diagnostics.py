"""Tests for ebm.diagnostics on chains whose answers are known in closed form."""

import math

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from ebm.diagnostics import (
    effective_sample_size,
    marginal_w1,
    marginal_w1_noise,
    split_rhat,
)


def ar1(rho: float, steps: int, chains: int, rng) -> np.ndarray:
    """Stationary AR(1) chains x_t = rho x_{t-1} + noise, with unit marginal variance."""
    x = np.empty((steps, chains))
    x[0] = rng.standard_normal(chains)
    noise = rng.standard_normal((steps, chains)) * math.sqrt(1 - rho**2)
    for t in range(1, steps):
        x[t] = rho * x[t - 1] + noise[t]
    return x


def test_iid_draws_have_ess_n_and_rhat_one():
    x = np.random.default_rng(0).standard_normal((2000, 8))
    assert effective_sample_size(x) == pytest.approx(16_000, rel=0.1)
    assert abs(split_rhat(x) - 1) < 0.01


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_ess_of_ar1_matches_theory(rho):
    steps, chains = 4000, 16
    x = ar1(rho, steps, chains, np.random.default_rng(1))
    expected = steps * chains * (1 - rho) / (1 + rho)
    assert effective_sample_size(x) == pytest.approx(expected, rel=0.15)


def test_rhat_flags_chains_stuck_at_different_means():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 4)) + np.array([0.0, 0.0, 1.0, 1.0])
    assert split_rhat(x) > 1.1


def test_rhat_flags_a_drifting_chain_through_the_split():
    """A single chain whose two halves differ: only the split makes R-hat see it."""
    noise = 0.1 * np.random.default_rng(3).standard_normal((1000, 1))
    x = np.concatenate([np.zeros(500), np.ones(500)])[:, None] + noise
    assert split_rhat(x) > 1.5


def test_3d_traces_give_one_value_per_dimension():
    rng = np.random.default_rng(4)
    x = np.stack([rng.standard_normal((1000, 6)), ar1(0.9, 1000, 6, rng)], axis=-1)
    ess, rhat = effective_sample_size(x), split_rhat(x)
    assert ess.shape == rhat.shape == (2,)
    assert ess[0] > 3 * ess[1]  # the autocorrelated dimension has far fewer effective draws


def test_degenerate_traces():
    assert math.isnan(effective_sample_size(np.ones((100, 3))))
    with pytest.raises(ValueError):
        effective_sample_size(np.zeros((3, 2)))
    with pytest.raises(ValueError):
        split_rhat(np.zeros(10))


def test_marginal_w1_closed_forms():
    # all samples at 0 vs uniform on [-1, 1]: E|U| = 1/2
    assert marginal_w1(np.zeros(10), np.array([-1.0, 1.0]), np.array([1.0])) == pytest.approx(0.5)
    # all samples at 1 vs uniform on [0, 1] in 4 cells: E|1 - U| = 1/2
    assert marginal_w1(np.ones(3), np.linspace(0, 1, 5), np.ones(4)) == pytest.approx(0.5)
    # point masses at 0.5 and 2.5 vs uniform cells [0, 1] and [2, 3]: each half moves 1/4 on average
    w1 = marginal_w1(np.array([0.5, 2.5]), np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 0.0, 1.0]))
    assert w1 == pytest.approx(0.25)
    # samples far outside the grid: the distance is the shift
    assert marginal_w1(np.full(5, 10.5), np.array([0.0, 1.0]), np.array([1.0])) == pytest.approx(10.0)


def test_marginal_w1_matches_scipy_and_sees_a_shift():
    rng = np.random.default_rng(5)
    edges = np.linspace(-4, 4, 41)
    centres = 0.5 * (edges[1:] + edges[:-1])
    mass = np.exp(-0.5 * centres**2)
    cells = rng.choice(40, size=400_000, p=mass / mass.sum())
    exact = edges[cells] + rng.random(len(cells)) * np.diff(edges)[cells]  # draws from the grid density
    samples = rng.standard_normal(3000) * 1.2 + 0.3
    assert marginal_w1(samples, edges, mass) == pytest.approx(wasserstein_distance(samples, exact), abs=3e-3)
    assert marginal_w1(exact[:5000] + 0.5, edges, mass) == pytest.approx(0.5, abs=0.03)


def test_w1_noise_level_is_the_distance_of_exact_draws():
    rng = np.random.default_rng(6)
    edges = np.linspace(-3, 3, 31)
    mass = np.exp(-np.abs(0.5 * (edges[1:] + edges[:-1])))
    n = 1000
    distances = []
    for _ in range(200):
        cells = rng.choice(30, size=n, p=mass / mass.sum())
        distances.append(marginal_w1(edges[cells] + rng.random(n) * 0.2, edges, mass))
    assert np.mean(distances) == pytest.approx(marginal_w1_noise(edges, mass, n), rel=0.1)
