"""The comparison of the samplers (`ebm.compare`): the marginal distance it reports, and its scores on a
target whose answer is known.

The known target is a model whose energy net outputs a constant: E(z) = |z|² / 2, so p = N(0, I) and
every exact marginal is N(0, 1). There MALA must come within a few noise floors of it, and ULA, whose
chain is then z' = (1 - ε²/2) z + ε ξ, must show its bias: a stationary N(0, 1 / (1 - ε²/4)), which at
ε = 1 is 0.1234 away in W1. Run with `python -m pytest -q tests/test_compare.py`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_landscape import gaussian_model

from ebm.compare import CompareSettings, cell_edges, compare_samplers, marginal_distance, table
from ebm.diagnostics import effective_sample_size
from ebm.landscape import Marginals, marginal_densities
from ebm.models import LatentEBM
from ebm.samplers import SAMPLERS
from ebm.scheduler import Cancelled


def gridded_normal(mean: float = 0.0, dims: int = 1, extent: float = 5.0, resolution: int = 32) -> Marginals:
    """Marginals of N(mean, 1) in every dim on the quadrature's grid of cell centres."""
    width = 2 * extent / resolution
    grid = -extent + (np.arange(resolution) + 0.5) * width
    log_p = -0.5 * (grid - mean) ** 2 - 0.5 * math.log(2 * math.pi)
    return Marginals(grid, np.tile(log_p, (dims, 1)), 0.0, extent, resolution)


def test_the_cells_edges_frame_the_grid():
    m = gridded_normal()
    edges = cell_edges(m)
    assert len(edges) == 33 and edges[0] == -5 and edges[-1] == pytest.approx(5)
    np.testing.assert_allclose((edges[:-1] + edges[1:]) / 2, m.grid)


def test_normal_draws_are_close_to_the_gridded_normal_and_a_shift_is_its_size():
    draws = np.random.default_rng(0).standard_normal(200_000)
    assert marginal_distance(draws, gridded_normal(), 0) < 0.01  # noise ~0.002, the cells' flat density ~0.002
    for shift in (0.25, 0.5, 1.0):
        assert marginal_distance(draws, gridded_normal(shift), 0) == pytest.approx(shift, abs=0.01)


def test_the_distance_is_exact_for_a_point_mass_against_a_flat_density():
    flat = Marginals(np.array([-0.5, 0.5]), np.log(np.full((1, 2), 0.5)), 0.0, 1.0, 2)  # uniform on [-1, 1]
    assert marginal_distance(np.zeros(7), flat, 0) == pytest.approx(0.5)  # E|U| for U ~ uniform(-1, 1)
    assert marginal_distance(np.full(3, 3.0), flat, 0) == pytest.approx(3.0)  # beyond the grid too


def test_arviz_ess_agrees_with_the_in_house_one_on_ar1_chains():
    from arviz_stats.base import array_stats

    rng = np.random.default_rng(1)
    rho, steps, chains = 0.8, 2000, 8
    x = np.zeros((steps, chains))
    x[0] = rng.standard_normal(chains)
    for t in range(1, steps):
        x[t] = rho * x[t - 1] + math.sqrt(1 - rho**2) * rng.standard_normal(chains)
    theory = steps * chains * (1 - rho) / (1 + rho)
    ess = float(array_stats.ess(x.T, chain_axis=-2, draw_axis=-1, method="bulk"))
    assert ess == pytest.approx(theory, rel=0.15)
    assert ess == pytest.approx(effective_sample_size(x), rel=0.1)


@pytest.fixture(scope="module")
def normal_model() -> LatentEBM:
    """E(z) = |z|² / 2 on two latent dims: the net's output layer is zero, the tilt is N(0, 1)."""
    return gaussian_model(d=2)


@pytest.fixture(scope="module")
def normal_marginals(normal_model) -> Marginals:
    return marginal_densities(normal_model, extent=5.0)


SETTINGS = CompareSettings(step_size=1.0, num_chains=64, num_steps=400, burn_in=50, seed=3)


@pytest.fixture(scope="module")
def comparison(normal_model, normal_marginals):
    return compare_samplers(normal_model, normal_marginals, SETTINGS)


def test_every_sampler_is_scored_in_order(comparison):
    assert [s.sampler for s in comparison.scores] == list(SAMPLERS)
    np.testing.assert_allclose(comparison.exact.sum(1) * (comparison.grid[1] - comparison.grid[0]), 1.0)
    for s in comparison.scores:
        assert s.ess.shape == s.rhat.shape == s.w1.shape == s.w1_floor.shape == (2,)
        assert s.histogram.shape == comparison.exact.shape and s.seconds > 0
        assert 0 < s.min_ess <= SETTINGS.num_chains * SETTINGS.num_draws * 1.5 and s.ess_per_second > 0
        assert s.max_rhat == pytest.approx(1.0, abs=0.05)  # 64 chains on one Gaussian agree
    rows = table(comparison)
    assert [r["sampler"] for r in rows] == [n.upper() for n in SAMPLERS]
    assert {"min ESS", "ESS / s", "max R-hat", "W1 z0", "W1 z1", "W1 noise floor"} <= set(rows[0])


def test_mala_reaches_the_exact_marginals_and_ula_shows_its_bias(comparison):
    scores = {s.sampler: s for s in comparison.scores}
    mala, ula = scores["mala"], scores["ula"]
    assert np.all(mala.w1 < 3 * mala.w1_floor + 0.005), (mala.w1, mala.w1_floor)
    ula_bias = (1 / math.sqrt(1 - SETTINGS.step_size**2 / 4) - 1) * math.sqrt(2 / math.pi)  # 0.1234 at ε = 1
    np.testing.assert_allclose(ula.w1, ula_bias, atol=0.03)
    assert np.all(ula.w1 > 3 * ula.w1_floor)  # well above its noise: bias, not noise
    assert ula.acceptance == 1.0 and 0 < mala.acceptance < 1


def test_the_same_settings_give_the_same_scores(normal_model, normal_marginals, comparison):
    again = compare_samplers(normal_model, normal_marginals, SETTINGS)
    for a, b in zip(comparison.scores, again.scores):
        for field in ("ess", "rhat", "w1", "w1_floor", "histogram"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_a_comparison_stops_when_asked_and_counts_steps_over_every_sampler(normal_model, normal_marginals):
    asked = []

    def should_stop(step: int) -> bool:
        asked.append(step)
        return step > SETTINGS.num_steps  # during the second sampler

    with pytest.raises(Cancelled):
        compare_samplers(normal_model, normal_marginals, SETTINGS, should_stop)
    assert asked[0] <= SETTINGS.num_steps < asked[-1] <= 2 * SETTINGS.num_steps and asked == sorted(asked)


def test_bad_settings_and_mismatched_marginals_are_clear_errors(normal_model):
    with pytest.raises(ValueError, match="burn-in"):
        CompareSettings(num_steps=100, burn_in=97)
    with pytest.raises(ValueError, match="number of chains"):
        CompareSettings(num_chains=1)
    with pytest.raises(ValueError, match="step size"):
        CompareSettings(step_size=0.0)
    with pytest.raises(ValueError, match="latent dimension is 2"):
        compare_samplers(normal_model, gridded_normal(dims=4), SETTINGS)
