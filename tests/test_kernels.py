"""The compiled Langevin kernels (ebm.kernels): same maths as the torch path, right distribution."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ebm.kernels import MIN_CHAIN_STEPS_PER_THREAD, TILE, FastEnergy, chain_slices
from ebm.models import EnergyConfig, EnergyNet
from ebm.samplers import run_chains
from ebm.samplers.hmc import hmc
from ebm.samplers.mala import mala
from ebm.samplers.ula import ula
from ebm.threads import set_chain_threads


def random_net(dim: int, width: int, layers: int, seed: int = 0, scale: float = 1.0) -> EnergyNet:
    torch.manual_seed(seed)
    net = EnergyNet(EnergyConfig(dim, width, layers, tilt_sigma=2.0))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net.eval()


@pytest.mark.parametrize("dim,width,layers", [(4, 64, 3), (4, 100, 2), (2, 8, 1), (1, 32, 4)])
@pytest.mark.parametrize("chains", [1, 127, 300])  # within one tile, and across tile boundaries
def test_energy_and_gradient_match_the_torch_net(dim, width, layers, chains):
    net = random_net(dim, width, layers, scale=2.0)
    z = 3 * torch.randn(chains, dim, generator=torch.Generator().manual_seed(1))
    energy, grad = FastEnergy(net)(z)
    ref_energy, ref_grad = net.energy_and_grad(z)
    torch.testing.assert_close(energy, ref_energy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_the_sigmoid_holds_over_the_whole_float_range():
    """Pre-activations from -1e4 to 1e4 (the exp is clamped, not overflowed): SiLU and its derivative stay exact."""
    net = random_net(1, 4, 1)
    with torch.no_grad():
        net.hidden[0].weight.copy_(torch.tensor([[1.0], [10.0], [100.0], [-1000.0]]))
        net.hidden[0].bias.zero_()
    z = torch.linspace(-10, 10, 2001).unsqueeze(-1)
    energy, grad = FastEnergy(net)(z)
    ref_energy, ref_grad = net.energy_and_grad(z)
    assert torch.isfinite(energy).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(energy, ref_energy, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("algorithm", [ula, mala, hmc])
def test_compiled_blocks_follow_the_generic_steps(algorithm):
    """Same seed, same noise: the compiled block and the torch step loop give the same chains."""
    net = random_net(4, 64, 3)
    start = torch.randn(150, 4, generator=torch.Generator().manual_seed(2))
    results = []
    for energy in (FastEnergy(net), net.energy_and_grad):
        sampler = algorithm(energy, 0.4, torch.Generator().manual_seed(3))
        results.append(sampler.steps(sampler.init(start), 30))
    (state_a, traces_a), (state_b, traces_b) = results
    torch.testing.assert_close(traces_a.positions, traces_b.positions, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(traces_a.acceptance, traces_b.acceptance, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state_a.energy, state_b.energy, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state_a.grad, state_b.grad, rtol=1e-4, atol=1e-4)
    if algorithm is not ula:
        assert 0.3 < traces_a.acceptance.mean() < 1.0  # the test saw both accepts and rejects


def test_chains_do_not_depend_on_the_record_interval():
    net = random_net(4, 32, 2)
    finals = []
    for every in (1, 7, 200):
        sampler = mala(FastEnergy(net), 0.5, torch.Generator().manual_seed(5))
        result = run_chains(sampler, sampler.init(torch.zeros(20, 4)), 200, record_every=every)
        assert result.record_steps[-1] == 200 and len(result.record_steps) == 200 // every + 1 + (200 % every > 0)
        finals.append(result.state.position)
    assert torch.equal(finals[0], finals[1]) and torch.equal(finals[0], finals[2])


@pytest.mark.parametrize("chains,steps,threads",
                         [(1, 64, 4), (64, 64, 2), (101, 64, 3), (8192, 1, 2), (5, 1, 8), (3000, 1, 7)])
def test_chain_slices_give_each_thread_its_own_chains(chains, steps, threads):
    slices = chain_slices(chains, steps, threads)
    assert 1 <= len(slices) <= threads
    assert slices[0].start == 0 and slices[-1].stop == chains
    assert all(a.stop == b.start for a, b in itertools.pairwise(slices))  # contiguous, no chain twice
    assert all(s.start % TILE == 0 for s in slices)  # whole tiles: the tiling never depends on the split
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= TILE  # balanced to a tile
    if len(slices) > 1:  # a thread only gets work worth a thread
        assert min(sizes) * steps >= MIN_CHAIN_STEPS_PER_THREAD // 2


@pytest.fixture
def chain_threads():
    """Set the kernels' chain threads for one test."""
    yield set_chain_threads
    set_chain_threads(None)


@pytest.mark.parametrize("algorithm", [mala, hmc])
def test_chains_do_not_depend_on_the_thread_count(chain_threads, algorithm):
    """Chains split over threads go through the same tiles: the result of one thread, bit for bit."""
    net = random_net(4, 64, 3)
    start = torch.randn(101, 4, generator=torch.Generator().manual_seed(6))
    many = 3 * torch.randn(5000, 4, generator=torch.Generator().manual_seed(7))
    results = []
    for threads in (1, 3):
        chain_threads(threads)
        energy = FastEnergy(net)
        sampler = algorithm(energy, 0.5, torch.Generator().manual_seed(8))
        results.append((sampler.steps(sampler.init(start), 64), energy(many)))
    ((state_a, traces_a), values_a), ((state_b, traces_b), values_b) = results
    for a, b in [*zip(state_a, state_b), *zip(traces_a, traces_b), *zip(values_a, values_b)]:
        assert torch.equal(a, b)
    assert 0.3 < traces_a.acceptance.mean() < 1.0


def one_dimensional_truth(net: EnergyNet, lo: float = -12.0, hi: float = 12.0, n: int = 20001):
    """Density exp(-E) of a 1-D net on a fine grid, normalised: the exact target to compare with."""
    x = torch.linspace(lo, hi, n).unsqueeze(-1)
    with torch.no_grad():
        log_p = -net(x).double()
    p = torch.exp(log_p - log_p.max())
    p /= p.sum()
    return x.squeeze(-1).double(), p


def wasserstein_1d(samples: torch.Tensor, grid: torch.Tensor, probs: torch.Tensor) -> float:
    """W1 between an empirical sample and a gridded density: the integral of |F_sample - F_true|."""
    sample_cdf = torch.searchsorted(samples.double().sort().values, grid, right=True).double() / len(samples)
    return float(((sample_cdf - probs.cumsum(0)).abs() * (grid[1] - grid[0])).sum())


def double_well_net() -> EnergyNet:
    """E(z) = -(0.75 silu(5z) + 0.6 silu(-5z)) / 5 + z²/8: modes near +3 and -2.4 of unequal mass."""
    net = random_net(1, 4, 1)
    with torch.no_grad():
        net.hidden[0].weight.copy_(torch.tensor([[5.0], [-5.0], [0.0], [0.0]]))
        net.hidden[0].bias.zero_()
        net.out.weight.copy_(torch.tensor([[-0.75 / 5, -0.6 / 5, 0.0, 0.0]]))
        net.out.bias.zero_()
    return net


def test_compiled_mala_draws_from_a_bimodal_net_density():
    """A 1-D net shaped into an uneven double well: MALA through the kernel matches the gridded truth.

    Checked on the mean, the variance, the mass of the left mode and W1; ULA at the same
    large ε (no Metropolis test) fails the W1 tolerance.
    """
    net = double_well_net()
    grid, probs = one_dimensional_truth(net)
    mean = float((grid * probs).sum())
    var = float(((grid - mean) ** 2 * probs).sum())
    left_mass = float(probs[grid < 0].sum())
    assert 0.05 < left_mass < 0.95, "the test density should have mass on both sides"

    def draw(algorithm):
        sampler = algorithm(FastEnergy(net), 2.5, torch.Generator().manual_seed(0))
        start = torch.randn(4000, 1, generator=torch.Generator().manual_seed(1))
        result = run_chains(sampler, sampler.init(start), 400)
        return result.trajectory[-1].squeeze(-1), result.acceptance.mean().item()

    samples, acceptance = draw(mala)
    assert 0.2 < acceptance < 0.95
    se_mean = math.sqrt(var / 4000)
    assert abs(samples.mean().item() - mean) < 5 * se_mean
    assert abs(samples.var().item() / var - 1) < 0.1
    assert abs((samples < 0).float().mean().item() - left_mass) < 0.03
    assert wasserstein_1d(samples, grid, probs) < 0.12  # 0.05-0.07 over seeds; sampling noise alone

    biased, _ = draw(ula)
    assert wasserstein_1d(biased, grid, probs) > 0.25  # about 0.4: the tolerance would catch a biased sampler


def test_compiled_hmc_draws_from_a_bimodal_net_density():
    """HMC through the kernel on the double well, held to the same checks as MALA above."""
    net = double_well_net()
    grid, probs = one_dimensional_truth(net)
    mean = float((grid * probs).sum())
    var = float(((grid - mean) ** 2 * probs).sum())
    sampler = hmc(FastEnergy(net), 1.0, torch.Generator().manual_seed(0), leapfrog_steps=5)
    result = run_chains(sampler, sampler.init(torch.randn(4000, 1, generator=torch.Generator().manual_seed(1))), 300)
    samples = result.trajectory[-1].squeeze(-1)
    assert 0.3 < result.acceptance.mean().item() < 0.99
    assert abs(samples.mean().item() - mean) < 5 * math.sqrt(var / 4000)
    assert abs(samples.var().item() / var - 1) < 0.1
    assert abs((samples < 0).float().mean().item() - float(probs[grid < 0].sum())) < 0.03
    assert wasserstein_1d(samples, grid, probs) < 0.12


@pytest.mark.parametrize("eps", [0.5, 1.0])
def test_compiled_ula_has_the_closed_form_bias_on_a_gaussian(eps):
    """With the MLP switched off, E = |z|²/(2σ²): ULA's stationary variance is σ²/(1 - ε²/(4σ²))."""
    net = random_net(4, 8, 2)
    with torch.no_grad():
        net.out.weight.zero_()
    sigma2 = net.config.tilt_sigma**2
    sampler = ula(FastEnergy(net), eps, torch.Generator().manual_seed(0))
    result = run_chains(sampler, sampler.init(torch.zeros(2000, 4)), 300)
    tail = result.trajectory[-1]
    expected = sigma2 / (1 - eps * eps / (4 * sigma2))
    assert abs(tail.var(0).mean().item() / expected - 1) < 0.04
    assert tail.mean(0).abs().max() < 5 * math.sqrt(expected / 2000)


def test_a_nan_energy_is_rejected_by_compiled_mala_and_spreads_under_ula():
    """A diverged net (NaN weights): MALA's Metropolis test rejects every move, so the chains
    keep their finite starting points; ULA has no test and its chains become NaN."""
    net = random_net(4, 8, 2)
    with torch.no_grad():
        net.hidden[1].weight[0, 0] = float("nan")
    start = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    result = run_chains(mala(FastEnergy(net), 0.5), mala(FastEnergy(net), 0.5).init(start), 10)
    assert torch.equal(result.state.position, start)
    assert (result.acceptance == 0).all()
    result = run_chains(ula(FastEnergy(net), 0.5), ula(FastEnergy(net), 0.5).init(start), 10)
    assert torch.isnan(result.state.position).all()


def test_bad_positions_are_refused():
    fast = FastEnergy(random_net(4, 8, 2))
    with pytest.raises(ValueError, match="shape"):
        fast(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="shape"):
        fast(torch.zeros(4))
