"""Tests for ebm.landscape (slices, interpolation, marginals), ebm.limits and ebm.render.

The marginals are checked against an energy whose answer is known in closed form: with the
MLP's output layer zeroed, E(z) = |z|²/2σ² and p is N(0, σ² I).
"""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ebm import landscape, limits
from ebm.checkpoint import SHIPPED_WEIGHTS, load_model
from ebm.generate import SampleSettings, decode_binary, sample_chains
from ebm.images import image_grid
from ebm.models import (
    Autoencoder,
    AutoencoderConfig,
    EnergyConfig,
    EnergyNet,
    LatentEBM,
)
from ebm.render import LIVE_TRACE_POINTS, render_samples, sample_view


def gaussian_model(d: int = 4, sigma: float = 1.0) -> LatentEBM:
    torch.manual_seed(0)
    energy = EnergyNet(EnergyConfig(latent_dim=d, hidden_dim=8, num_layers=2, tilt_sigma=sigma))
    with torch.no_grad():
        energy.out.weight.zero_()
        energy.out.bias.zero_()
    ae = Autoencoder(AutoencoderConfig(hidden_dim=16, latent_dim=d))
    return LatentEBM(ae, energy, torch.zeros(d), torch.ones(d))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small matrices: one thread is fastest, and immune to spin-waiting on a busy machine (as in the app)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shipped():
    return load_model(SHIPPED_WEIGHTS)[0]


# ---- slices ---------------------------------------------------------------------------------------
def test_slice_matches_pointwise_energies(shipped):
    fixed = [0.3, -0.2, 0.5, -1.0]
    sl = landscape.energy_slice(shipped, dims=(1, 3), fixed=fixed, extent=3.0, resolution=21)
    assert sl.energy.shape == (21, 21) and sl.dims == (1, 3)
    r, c = 4, 17  # energy[r, c] is at x[c] (dim 1), y[r] (dim 3), other dims fixed
    code = torch.tensor(fixed)
    code[1], code[3] = float(sl.x[c]), float(sl.y[r])
    expected = shipped.energy(code[None]).item()
    assert sl.energy[r, c] == pytest.approx(expected, abs=1e-5)
    np.testing.assert_allclose(landscape.slice_code(sl.dims, sl.fixed, sl.x[c], sl.y[r]), code.numpy(), atol=1e-6)


def test_a_decoded_point_is_its_decoding_and_its_energy(shipped):
    code = [0.3, -0.2, 0.5, -1.0]
    pixels, energy = landscape.decode_point(shipped, code)
    z = torch.tensor([code])
    assert pixels.shape == (784,) and np.array_equal(pixels, shipped.decode(z)[0].numpy())
    assert energy == pytest.approx(shipped.energy(z).item(), abs=1e-6)
    with pytest.raises(ValueError, match="latent dimension is 4"):
        landscape.decode_point(shipped, [0.0, 1.0])


def test_slice_density_is_normalized_on_the_plane(shipped):
    sl = landscape.energy_slice(shipped, (0, 1), resolution=41)
    cell = (sl.x[1] - sl.x[0]) * (sl.y[1] - sl.y[0])
    assert sl.density.sum() * cell == pytest.approx(1.0, rel=1e-9)
    assert np.all(np.isfinite(sl.log_density))


def test_different_pairs_give_different_slices(shipped):
    a = landscape.energy_slice(shipped, (0, 1), resolution=11).energy
    b = landscape.energy_slice(shipped, (2, 3), resolution=11).energy
    assert not np.allclose(a, b)


@pytest.mark.parametrize("dims", [(0, 0), (0, 4), (-1, 2), (0, 1, 2)])
def test_slice_rejects_bad_dims(shipped, dims):
    with pytest.raises(ValueError):
        landscape.energy_slice(shipped, dims)


def test_slice_rejects_bad_fixed_and_grid(shipped):
    with pytest.raises(ValueError):
        landscape.energy_slice(shipped, (0, 1), fixed=[0.0, 0.0, float("nan"), 0.0])
    with pytest.raises(ValueError):
        landscape.energy_slice(shipped, (0, 1), fixed=[0.0, 0.0])
    with pytest.raises(ValueError):
        landscape.energy_slice(shipped, (0, 1), resolution=1)
    with pytest.raises(ValueError):
        landscape.energy_slice(shipped, (0, 1), extent=0.0)


# ---- interpolation --------------------------------------------------------------------------------
def test_interpolation_endpoints_energies_and_images(shipped):
    a, b = torch.tensor([1.0, 0.0, -1.0, 0.5]), torch.tensor([-1.0, 2.0, 0.0, 0.0])
    path = landscape.interpolate(shipped, a, b, steps=7)
    assert path.codes.shape == (7, 4) and path.images.shape == (7, 784) and path.energies.shape == (7,)
    np.testing.assert_allclose(path.codes[0], a.numpy(), atol=1e-6)
    np.testing.assert_allclose(path.codes[-1], b.numpy(), atol=1e-6)
    np.testing.assert_allclose(path.codes[3], (a + b).numpy() / 2, atol=1e-6)
    assert path.energies[0] == pytest.approx(shipped.energy(a[None]).item(), abs=1e-5)
    assert path.images.min() >= 0 and path.images.max() <= 1


def test_interpolation_rejects_bad_input(shipped):
    with pytest.raises(ValueError):
        landscape.interpolate(shipped, torch.zeros(4), torch.zeros(4), steps=1)
    with pytest.raises(ValueError):
        landscape.interpolate(shipped, torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError):
        landscape.interpolate(shipped, torch.full((4,), float("inf")), torch.zeros(4))


# ---- marginals and log Z --------------------------------------------------------------------------
@pytest.mark.parametrize("d,sigma", [(2, 1.0), (4, 1.0), (3, 0.7)])
def test_marginals_of_a_gaussian_energy(d, sigma):
    model = gaussian_model(d, sigma)
    marg = landscape.marginal_densities(model, extent=6 * sigma, resolution=25 if d == 4 else 41)
    # log Z of exp(-|z|²/2σ²) is d/2 log(2πσ²)
    assert marg.log_z == pytest.approx(0.5 * d * math.log(2 * math.pi * sigma**2), abs=1e-3)
    exact = np.exp(-marg.grid**2 / (2 * sigma**2)) / math.sqrt(2 * math.pi * sigma**2)
    h = marg.grid[1] - marg.grid[0]
    for k in range(d):
        assert marg.density[k].sum() * h == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose(marg.density[k], exact, atol=2e-3)


def test_marginals_of_the_shipped_model_converge(shipped):
    coarse = landscape.marginal_densities(shipped, resolution=16)
    fine = landscape.marginal_densities(shipped, resolution=24)
    assert coarse.log_density.shape == (4, 16)
    assert abs(coarse.log_z - fine.log_z) < 1e-2
    h = fine.grid[1] - fine.grid[0]
    np.testing.assert_allclose(fine.density.sum(1) * h, 1.0, atol=1e-9)


def test_marginal_grid_is_capped():
    assert landscape.grid_resolution(4) == 32
    assert landscape.grid_resolution(6) ** 6 <= landscape.MAX_GRID_POINTS
    with pytest.raises(ValueError, match="cap"):
        landscape.marginal_densities(gaussian_model(4), resolution=60)


def test_histogram_density_integrates_to_one():
    values = np.random.default_rng(0).normal(size=5000)
    centres, dens = landscape.histogram_density(values, extent=6.0, bins=30)
    assert len(centres) == 30
    assert dens.sum() * (centres[1] - centres[0]) == pytest.approx(1.0, abs=1e-9)


# ---- request caps ---------------------------------------------------------------------------------
def test_check_request_size():
    assert limits.check_request_size(64, 1000) == 64_000
    assert limits.check_request_size(limits.MAX_APP_CHAINS, limits.MAX_CHAIN_STEPS // limits.MAX_APP_CHAINS)
    with pytest.raises(limits.RequestTooLarge, match="K ≤ 1,953"):
        limits.check_request_size(1024, 5000)
    with pytest.raises(limits.RequestTooLarge, match="at most 1024"):
        limits.check_request_size(2000, 10)
    with pytest.raises(limits.RequestTooLarge):
        limits.check_request_size(1, limits.MAX_APP_STEPS + 1)
    for bad in [(0, 10), (10, 0), (1.5, 10), (True, 10)]:
        with pytest.raises(ValueError):
            limits.check_request_size(*bad)


@pytest.mark.parametrize("n,cap", [(1, 5), (5, 5), (6, 5), (101, 51), (1001, 51), (3, 1)])
def test_frame_indices(n, cap):
    idx = limits.frame_indices(n, cap)
    assert len(idx) <= cap and idx == sorted(set(idx))
    assert idx[-1] == n - 1
    if cap > 1:
        assert idx[0] == 0
    if n <= cap:
        assert idx == list(range(n))


# ---- sample views ---------------------------------------------------------------------------------
def test_sample_view_contents(shipped):
    s = SampleSettings(sampler="mala", step_size=0.5, num_steps=30, num_chains=9, record_every=5, seed=3)
    view = sample_view(shipped, s)
    assert view.num_chains == 9 and view.steps_done == 30
    assert view.gif[:6] in (b"GIF87a", b"GIF89a") and view.png[:8] == b"\x89PNG\r\n\x1a\n"
    assert view.gif_frames == 7 and view.record_steps == [0, 5, 10, 15, 20, 25, 30]
    assert view.final_codes.shape == (9, 4) and view.paths.shape == (7, 9, 4)
    assert view.energy_traces.shape == (30, 9) and view.energy_mean.shape == (30,)
    assert 0 < view.mean_acceptance <= 1
    again = sample_view(shipped, s)
    np.testing.assert_array_equal(view.final_codes, again.final_codes)  # deterministic per seed


def test_a_watched_sample_is_the_same_sample_and_shows_its_chains_as_they_go(shipped):
    """Publishing after every block (interval 0): a frame per block but the last, each the first 64 chains
    decoded where they are and the energies so far; the finished view is bit for bit the unwatched one."""
    s = SampleSettings(num_steps=300, num_chains=80, record_every=64, seed=4)
    frames = []
    watched = sample_view(shipped, s, publish=frames.append, live_interval=0)
    alone = sample_view(shipped, s)
    assert watched.png == alone.png and watched.gif == alone.gif
    np.testing.assert_array_equal(watched.final_codes, alone.final_codes)
    assert [f.steps_done for f in frames] == [64, 128, 192, 256]  # blocks of 64 steps; none after the last
    chains = sample_chains(shipped, s)  # records every 64 steps: where each frame caught the chains
    energies = chains.energies.numpy()
    for record, frame in enumerate(frames, start=1):
        assert (frame.num_steps, frame.num_chains, frame.shown) == (300, 80, 64)
        picture = np.asarray(Image.open(io.BytesIO(frame.png)))
        assert np.array_equal(picture, image_grid(decode_binary(shipped, chains.trajectory[record, :64]), ncols=8))
        idx = frame.trace_steps - 1  # thinned, the first and last steps kept
        assert len(idx) == min(frame.steps_done, LIVE_TRACE_POINTS) and idx[0] == 0 and idx[-1] == frame.steps_done - 1
        np.testing.assert_allclose(frame.energy_mean, energies[idx].mean(1), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(frame.energy_traces, energies[idx, :16])


def test_render_thins_long_runs(shipped):
    s = SampleSettings(sampler="ula", num_steps=600, num_chains=65, record_every=5, seed=1)
    view = render_samples(shipped, sample_chains(shipped, s), s)
    assert view.gif_frames == limits.MAX_GIF_FRAMES and view.gif_chains == limits.MAX_GIF_CHAINS
    assert len(view.trace_steps) <= 500 and view.trace_steps[-1] == 600
    assert view.mean_acceptance == 1.0


def test_sample_view_refuses_oversized_requests(shipped):
    with pytest.raises(limits.RequestTooLarge):
        sample_view(shipped, SampleSettings(num_chains=1024, num_steps=5000))
