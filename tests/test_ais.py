"""Tests for ebm.ais: log Z by annealed importance sampling, on densities whose log Z is known.

A 4-D Gaussian off the base's centre and scale (estimate within 3 standard errors, and the
errors honest over ten seeds), a 2-D mixture of two unequal modes (the weights, not the chains,
get the modes' shares right), two broken variants that the same tolerance catches (moves that
do not leave p_β invariant; a schedule that stops short of β = 1), and the real-model check:
AIS, importance sampling and grid quadrature agree on the shipped weights.
"""

import math

import numpy as np
import pytest
import torch

from ebm import ais
from ebm.checkpoint import load_model
from ebm.evaluation import code_box, grid_quadrature, importance_log_z
from ebm.samplers.ula import ula

MU, SIGMA = torch.tensor([1.0, -0.5, 0.5, 0.0]), 0.6
GAUSSIAN_LOG_Z = 2 * math.log(2 * math.pi * SIGMA**2)  # (d/2) log 2πσ² with d = 4


def gaussian(z):
    """E(z) = |z - μ|² / (2σ²): exp(-E) has log Z = (d/2) log 2πσ²."""
    return (z - MU).square().sum(-1) / (2 * SIGMA**2), (z - MU) / SIGMA**2


MEANS, SDS, SHARES = torch.tensor([[-2.0, 0.0], [1.5, 1.0]]), torch.tensor([0.5, 0.4]), torch.tensor([0.3, 0.7])
MIXTURE_LOG_Z = 1.3


def mixture(z):
    """-log(0.3 N((-2, 0), 0.5²) + 0.7 N((1.5, 1), 0.4²)) - 1.3, so log Z = 1.3; gradient by autograd."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        log_parts = torch.distributions.Normal(MEANS[:, None], SDS[:, None, None]).log_prob(z).sum(-1)
        energy = -torch.logsumexp(log_parts + SHARES.log()[:, None], 0) - MIXTURE_LOG_Z
        (grad,) = torch.autograd.grad(energy.sum(), z)
    return energy.detach(), grad


def z_score(result, truth):
    return (result.log_z - truth) / result.standard_error


def gaussian_run(seed, **kwargs):
    return ais.annealed_log_z(gaussian, 4, 512, 200, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_gaussian_log_z_is_found_within_three_standard_errors():
    result = gaussian_run(0)
    assert abs(z_score(result, GAUSSIAN_LOG_Z)) < 3
    assert result.standard_error < 0.03  # a tolerance that means something
    assert 0.45 < result.acceptance.mean() < 0.7  # the pilot's step sizes hit the target acceptance


def test_the_standard_error_is_honest_over_seeds():
    """RMS z-score over 10 seeds: ~1 for an honest error bar; [0.5, 1.6] holds 99.9% of chi2(10)/10
    square roots, so an error bar off by 2x either way fails."""
    scores = np.array([z_score(gaussian_run(seed), GAUSSIAN_LOG_Z) for seed in range(1, 11)])
    assert 0.5 < np.sqrt(np.mean(scores**2)) < 1.6


def test_two_unequal_modes_get_their_log_z_and_their_shares_from_the_weights():
    result = ais.annealed_log_z(mixture, 2, 1024, 300, generator=torch.Generator().manual_seed(0))
    assert abs(z_score(result, MIXTURE_LOG_Z)) < 3
    assert result.standard_error < 0.03
    weights = np.exp(result.log_weights - result.log_weights.max())
    left = (result.positions[:, 0] < -0.25).numpy()
    assert abs(weights @ left / weights.sum() - 0.3) < 0.05
    assert abs(left.mean() - 0.3) > 0.05  # the chains alone are off: the share check is not vacuous


def test_moves_that_do_not_leave_p_beta_invariant_fail_the_same_tolerance(monkeypatch):
    """ULA (no Metropolis test) at the same fixed ε as a MALA run that passes."""
    assert abs(z_score(gaussian_run(0, step_size=0.5, pilot_chains=0), GAUSSIAN_LOG_Z)) < 3
    monkeypatch.setattr(ais, "mala", ula)
    assert abs(z_score(gaussian_run(0, step_size=0.5, pilot_chains=0), GAUSSIAN_LOG_Z)) > 3


def test_a_schedule_that_stops_short_of_beta_one_fails_the_same_tolerance(monkeypatch):
    schedule = ais.temperature_schedule
    monkeypatch.setattr(ais, "temperature_schedule", lambda k: 0.9 * schedule(k))
    assert abs(z_score(gaussian_run(0), GAUSSIAN_LOG_Z)) > 3


def test_same_seed_same_bits_other_seed_other_weights():
    a, b, c = gaussian_run(7), gaussian_run(7), gaussian_run(8)
    assert np.array_equal(a.log_weights, b.log_weights) and torch.equal(a.positions, b.positions)
    assert np.array_equal(a.step_sizes, b.step_sizes)
    assert not np.array_equal(a.log_weights, c.log_weights)


def test_the_schedule_runs_from_zero_to_one():
    betas = ais.temperature_schedule(5)
    assert betas[0] == 0 and betas[-1] == 1 and np.all(np.diff(betas) > 0) and len(betas) == 6


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_chains=1), "number of AIS chains"),
    (dict(num_temperatures=0), "number of temperatures"),
    (dict(step_size=0.0), "step size"),
    (dict(step_size=float("nan")), "step size"),
    (dict(steps_per_temperature=0), "MALA steps per temperature"),
    (dict(pilot_chains=-1), "number of pilot chains"),
    (dict(target_acceptance=1.0), "target acceptance"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ais.annealed_log_z(gaussian, **{"dim": 4, **kwargs})


def test_an_energy_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"map \(N, 4\) codes to \(N,\) energies"):
        ais.annealed_log_z(lambda z: (z.sum(-1, keepdim=True), z), 4)


def test_an_energy_that_is_nan_along_the_path_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        ais.annealed_log_z(lambda z: (torch.full((len(z),), math.nan), torch.zeros_like(z)), 2, 16, 3, pilot_chains=0)


def test_real_model_ais_importance_sampling_and_quadrature_agree():
    """The real-model check, on weights/mnist_d4.safetensors: three independent log Z within 2
    standard errors of each other (the 32^4 grid agrees with a 64^4 one to 1e-4, README)."""
    model, _ = load_model()
    model.eval()
    result = ais.annealed_log_z(model.sampling_energy(), model.latent_dim, 1024, 300,
                                generator=torch.Generator().manual_seed(0))
    importance = importance_log_z(model.energy, result.positions, 200_000, seed=0)
    grid = grid_quadrature(model.energy, *code_box(result.positions, 3.0), 32)
    assert grid.edge_mass < 1e-6
    assert abs(result.log_z - grid.log_z) < 2 * result.standard_error
    assert abs(importance.log_z - grid.log_z) < 2 * importance.standard_error
    assert abs(result.log_z - importance.log_z) < 2 * math.hypot(result.standard_error, importance.standard_error)
