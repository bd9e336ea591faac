"""The samplers must draw from the density they are given: checked on densities we know exactly."""

import functools
import math

import pytest
import torch

from ebm.models import EnergyConfig, EnergyNet
from ebm.samplers import (
    BLOCK_STEPS,
    MAX_CHAINS,
    SAMPLERS,
    ReplayBuffer,
    adapted_step_size,
    build_sampler,
    contrasting_sampler,
    run_chains,
)
from ebm.samplers.base import chain_algorithm
from ebm.samplers.hmc import hmc
from ebm.samplers.integrators import leapfrog
from ebm.samplers.mala import mala
from ebm.samplers.metropolis import accept_all
from ebm.samplers.ula import ula


def gaussian_energy(z):
    """Standard normal: E = |z|^2 / 2."""
    return 0.5 * z.square().sum(-1), z.clone()


MIX_MEANS = torch.tensor([[-1.5, 0.0], [1.5, 0.5]])
MIX_WEIGHTS = torch.tensor([0.3, 0.7])
MIX_STD = 0.7


def mixture_energy(z):
    """Two-component isotropic Gaussian mixture in 2-D, E = -log density (unnormalised).

    dE/dz = sum_k r_k (z - mu_k) / s^2, with r_k the components' responsibilities.
    """
    diff = z.unsqueeze(1) - MIX_MEANS  # (N, 2 components, 2)
    logits = MIX_WEIGHTS.log() - diff.square().sum(-1) / (2 * MIX_STD**2)
    energy = -torch.logsumexp(logits, dim=1)
    grad = (logits.softmax(1).unsqueeze(-1) * diff).sum(1) / MIX_STD**2
    return energy, grad


def draw(kernel_name, energy_fn, eps, chains, steps, dim, seed=0, start_scale=1.0, **params):
    gen = torch.Generator().manual_seed(seed)
    make = functools.partial(build_sampler, kernel_name) if isinstance(kernel_name, str) else kernel_name
    kernel = make(energy_fn, eps, gen, **params)
    start = start_scale * torch.randn(chains, dim, generator=gen)
    return run_chains(kernel, kernel.init(start), steps)


def mixture_samples(n, seed):
    gen = torch.Generator().manual_seed(seed)
    comp = torch.multinomial(MIX_WEIGHTS, n, replacement=True, generator=gen)
    return MIX_MEANS[comp] + MIX_STD * torch.randn(n, 2, generator=gen)


def sliced_wasserstein(a, b, projections=64, seed=0):
    """Mean 1-D Wasserstein-1 distance over random directions (equal sample sizes)."""
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=gen)
    dirs /= dirs.norm(dim=0)
    pa, _ = (a @ dirs).sort(0)
    pb, _ = (b @ dirs).sort(0)
    return (pa - pb).abs().mean().item()


@pytest.mark.parametrize("name", ["ula", "mala", "hmc"])
def test_standard_gaussian_4d_moments(name):
    # small ε: ULA's bias (variance 1/(1 - ε²/4) - 1 ≈ 0.01) is below the tolerance
    result = draw(name, gaussian_energy, 0.2 if name == "ula" else 0.9, chains=4000, steps=600, dim=4, start_scale=3.0)
    z = result.state.position
    assert z.mean(0).abs().max() < 0.06
    cov = torch.cov(z.T)
    assert (cov - torch.eye(4)).abs().max() < 0.08
    # fourth moment of N(0,1) is 3: catches samplers with the right variance but wrong shape
    assert (z.pow(4).mean(0) - 3.0).abs().max() < 0.35
    reference = torch.randn(4000, 4, generator=torch.Generator().manual_seed(99))
    assert sliced_wasserstein(z, reference) < 0.05


def test_ula_bias_at_large_step_matches_closed_form():
    # On N(0, I), ULA's stationary variance is 1 / (1 - ε²/4): exactly what an unadjusted
    # discretisation should give, and clearly not 1.
    eps = 1.0
    z = draw("ula", gaussian_energy, eps, chains=8000, steps=200, dim=4).state.position
    expected = 1.0 / (1.0 - eps**2 / 4)
    var = z.var(0)
    assert (var - expected).abs().max() < 0.06
    assert var.min() > 1.2  # a biased sampler, visibly


def test_mala_exact_at_large_step_where_ula_is_biased():
    eps = 1.2
    result = draw("mala", gaussian_energy, eps, chains=8000, steps=400, dim=4)
    var = result.state.position.var(0)
    assert (var - 1.0).abs().max() < 0.05  # ULA would give 1/(1 - 0.36) = 1.56
    acc = result.acceptance.mean().item()
    assert 0.3 < acc < 0.95


def test_mala_accepts_almost_everything_at_small_step():
    result = draw("mala", gaussian_energy, 0.05, chains=500, steps=50, dim=4)
    assert result.acceptance.mean().item() > 0.995


@pytest.mark.parametrize("name,eps,steps", [("mala", 0.8, 800), ("ula", 0.2, 2000), ("hmc", 0.7, 400)])
def test_two_component_mixture_2d(name, eps, steps):
    result = draw(name, mixture_energy, eps, chains=4000, steps=steps, dim=2, start_scale=2.0)
    z = result.state.position
    truth = mixture_samples(4000, seed=5)
    true_mean = (MIX_WEIGHTS.unsqueeze(1) * MIX_MEANS).sum(0)
    assert (z.mean(0) - true_mean).abs().max() < 0.08
    # weight of the right-hand mode: P(x > 0) under the mixture, from the normal CDF
    def phi(x):
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    p_right = 0.3 * (1 - phi(1.5 / MIX_STD)) + 0.7 * (1 - phi(-1.5 / MIX_STD))
    assert abs((z[:, 0] > 0).float().mean().item() - p_right) < 0.03
    assert sliced_wasserstein(z, truth) < 0.07


def test_biased_sampler_fails_the_mixture_check():
    """The tolerance above is tight enough to catch a sampler with a wrong drift."""
    def half_gradient(z):
        e, g = mixture_energy(z)
        return e, 0.5 * g  # samples exp(-E/2): twice the variance
    z = draw("ula", half_gradient, 0.2, chains=4000, steps=2000, dim=2, start_scale=2.0).state.position
    assert sliced_wasserstein(z, mixture_samples(4000, seed=5)) > 0.07


def unadjusted_hmc(energy_and_grad, step_size, generator, leapfrog_steps=5):
    """HMC without its Metropolis test, composed from the same pieces: biased, since leapfrog does not keep H."""
    def move(state, momentum, uniform):
        return accept_all(leapfrog(energy_and_grad, state, momentum, step_size, leapfrog_steps)[0])
    return chain_algorithm(energy_and_grad, move, adjusted=False, generator=generator)


def test_hmc_without_its_metropolis_test_fails_the_checks_hmc_passes():
    """The same ε and L as the exact runs above: the Gaussian and mixture tolerances catch the bias."""
    z = draw(unadjusted_hmc, gaussian_energy, 0.9, chains=4000, steps=600, dim=4, start_scale=3.0).state.position
    assert (torch.cov(z.T) - torch.eye(4)).abs().max() > 0.15  # variance about 1.25
    reference = torch.randn(4000, 4, generator=torch.Generator().manual_seed(99))
    assert sliced_wasserstein(z, reference) > 0.05
    z = draw(unadjusted_hmc, mixture_energy, 0.7, chains=4000, steps=400, dim=2, start_scale=2.0).state.position
    assert sliced_wasserstein(z, mixture_samples(4000, seed=5)) > 0.07


def test_hmc_with_one_leapfrog_step_is_mala():
    """One leapfrog step is MALA's proposal, and its change in H is MALA's Hastings ratio: the same chains."""
    start = torch.randn(256, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    one = hmc(gaussian_energy, 1.1, torch.Generator().manual_seed(2), leapfrog_steps=1)
    langevin = mala(gaussian_energy, 1.1, torch.Generator().manual_seed(2))
    (_, traces_a), (_, traces_b) = one.steps(one.init(start), 20), langevin.steps(langevin.init(start), 20)
    torch.testing.assert_close(traces_a.positions, traces_b.positions)
    torch.testing.assert_close(traces_a.acceptance, traces_b.acceptance)
    assert 0.3 < traces_a.acceptance.mean() < 0.95


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_block_of_one_step_is_one_step(name):
    start = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    a, b = (build_sampler(name, gaussian_energy, 0.9, torch.Generator().manual_seed(1))
            for _ in range(2))
    state_a, traces = a.steps(a.init(start), 1)
    state_b, info = b.step(b.init(start))
    for x, y in zip(state_a, state_b):
        assert torch.equal(x, y)
    assert torch.equal(traces.acceptance[0], info.acceptance_prob)


def test_sampler_parameters_are_checked_by_name_and_range():
    assert len(draw("hmc", gaussian_energy, 0.5, chains=4, steps=3, dim=4, leapfrog_steps=2).record_steps) == 2
    with pytest.raises(ValueError, match="leapfrog steps"):
        build_sampler("hmc", gaussian_energy, 0.5, leapfrog_steps=0)
    with pytest.raises(ValueError, match="no parameter 'leapfrog_steps'"):
        build_sampler("mala", gaussian_energy, 0.5, leapfrog_steps=3)


def test_every_sampler_has_a_contrasting_one():
    assert contrasting_sampler("mala") == "ula" and contrasting_sampler("ula") == "mala"
    for name in SAMPLERS:
        other = contrasting_sampler(name)
        assert other in SAMPLERS and other != name


def test_same_seed_same_chains_other_seed_other_chains():
    a = draw("mala", gaussian_energy, 0.5, chains=16, steps=20, dim=4, seed=3).state.position
    b = draw("mala", gaussian_energy, 0.5, chains=16, steps=20, dim=4, seed=3).state.position
    c = draw("mala", gaussian_energy, 0.5, chains=16, steps=20, dim=4, seed=4).state.position
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_run_chains_records_and_traces():
    result = draw("mala", gaussian_energy, 0.5, chains=8, steps=25, dim=4)
    assert result.record_steps == [0, 25]
    gen = torch.Generator().manual_seed(0)
    kernel = mala(gaussian_energy, 0.5, gen)
    result = run_chains(kernel, kernel.init(torch.zeros(8, 4)), 25, record_every=10)
    assert result.record_steps == [0, 10, 20, 25]
    assert result.trajectory.shape == (4, 8, 4)
    assert result.energies.shape == (25, 8) and result.acceptance.shape == (25, 8)
    assert torch.equal(result.trajectory[-1], result.state.position)
    assert torch.allclose(result.energies[-1], 0.5 * result.state.position.square().sum(-1))


def test_callback_runs_after_each_block_and_stops_early_keeping_the_steps_done():
    gen = torch.Generator().manual_seed(0)
    kernel = ula(gaussian_energy, 0.5, gen)
    calls = []
    result = run_chains(kernel, kernel.init(torch.zeros(4, 4)), 200, record_every=30,
                        callback=lambda t: calls.append(t) or t >= 100)
    assert calls == [BLOCK_STEPS, 2 * BLOCK_STEPS]
    assert result.record_steps == [0, 30, 60, 90, 120, 128]
    assert result.energies.shape == (128, 4)
    assert torch.equal(result.trajectory[-1], result.state.position)


def test_step_size_adaptation_reaches_target_acceptance():
    """`adapted_step_size`, the rule training tunes ε with, applied after every MALA step with a decaying rate."""
    gen = torch.Generator().manual_seed(0)
    eps = 0.05
    state = mala(gaussian_energy, eps, gen).init(torch.randn(1000, 4, generator=gen))
    for t in range(300):
        state, info = mala(gaussian_energy, eps, gen).step(state)
        eps = adapted_step_size(eps, info.acceptance_prob.mean().item(), 0.574, rate=1.0 / math.sqrt(t + 1))
    result = run_chains(mala(gaussian_energy, eps, gen), state, 100)
    assert abs(result.acceptance.mean().item() - 0.574) < 0.05
    assert eps > 0.5  # it grew from the far-too-small start


@pytest.mark.parametrize("eps", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_step_size_is_refused(eps):
    with pytest.raises(ValueError, match="step size"):
        ula(gaussian_energy, eps)
    with pytest.raises(ValueError, match="step size"):
        mala(gaussian_energy, eps)


def test_bad_steps_and_positions_are_refused():
    kernel = mala(gaussian_energy, 0.5)
    state = kernel.init(torch.zeros(2, 4))
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps"):
            run_chains(kernel, state, steps)
    with pytest.raises(ValueError, match="shape"):
        kernel.init(torch.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        kernel.init(torch.full((2, 4), float("nan")))
    with pytest.raises(ValueError, match="chains"):
        kernel.init(torch.zeros(MAX_CHAINS + 1, 1))
    with pytest.raises(ValueError, match="unknown sampler"):
        build_sampler("nuts", gaussian_energy, 0.1)


def test_mala_rejects_proposals_with_nan_energy():
    def nan_outside_unit_ball(z):
        e, g = gaussian_energy(z)
        return torch.where(z.norm(dim=-1) > 1.0, torch.nan, e), g
    gen = torch.Generator().manual_seed(0)
    kernel = mala(nan_outside_unit_ball, 1.0, gen)
    result = run_chains(kernel, kernel.init(torch.zeros(256, 4)), 50)
    assert torch.isfinite(result.state.energy).all()
    assert result.state.position.norm(dim=-1).max() <= 1.0


def test_replay_buffer_reinit_and_store():
    gen = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(100, 4, generator=gen)
    buf.positions.fill_(7.0)
    idx, pos = buf.draw(50, reinit_prob=0.0)
    assert torch.all(pos == 7.0)
    _, pos = buf.draw(500, reinit_prob=1.0)
    assert pos.abs().max() < 7.0  # all fresh noise
    new = torch.zeros(len(idx), 4)
    new[0] = float("nan")
    buf.store(idx, new)
    assert torch.isfinite(buf.positions).all()


def test_mixture_gradient_matches_autograd():
    z = torch.randn(32, 2, requires_grad=True)
    energy, grad = mixture_energy(z)
    (auto,) = torch.autograd.grad(energy.sum(), z)
    assert torch.allclose(grad, auto, atol=1e-5)


def test_hand_written_gradient_matches_autograd():
    torch.manual_seed(0)
    net = EnergyNet(EnergyConfig(latent_dim=4, hidden_dim=32, num_layers=3))
    z = torch.randn(64, 4, requires_grad=True)
    energy = net(z)
    (grad,) = torch.autograd.grad(energy.sum(), z)
    e2, g2 = net.energy_and_grad(z.detach())
    assert torch.allclose(energy, e2, atol=1e-5)
    assert torch.allclose(grad, g2, atol=1e-5)
