"""The sampler benchmark's BlackJAX peer samples the same density as ours: its jax energy equals the torch
net's, and its MALA, at our step size mapped to BlackJAX's (τ = ε²/2), accepts as often as ours.
No timing is asserted. Skipped when benchmarks/requirements.txt is not installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("jax")
pytest.importorskip("blackjax")

import jax  # noqa: E402

from benchmarks.jax_energy import energy, energy_params  # noqa: E402
from benchmarks.sampler import BlackjaxMala, ours_chain_steps_per_s  # noqa: E402
from ebm.checkpoint import load_model  # noqa: E402
from ebm.samplers.mala import mala  # noqa: E402


@pytest.fixture(scope="module")
def net():
    return load_model()[0].energy


def test_jax_energy_and_gradient_equal_torch(net):
    z = torch.randn(512, net.config.latent_dim, generator=torch.Generator().manual_seed(0))
    params = energy_params(net)
    jax_energy, jax_grad = jax.vmap(jax.value_and_grad(lambda x: energy(params, x)))(jax.numpy.asarray(z.numpy()))
    assert jax_energy.dtype == jax.numpy.float32
    with torch.no_grad():
        torch_energy = net(z)
    _, torch_grad = net.energy_and_grad(z)
    np.testing.assert_allclose(np.asarray(jax_energy), torch_energy.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax_grad), torch_grad.numpy(), rtol=1e-5, atol=1e-5)


def test_blackjax_mala_accepts_as_often_as_ours(net):
    # At ε = 0.5 acceptance is well below 1, so a wrong step-size mapping (τ = ε, τ = ε²) shows.
    chains, steps, eps = 512, 40, 0.5
    _, ours = ours_chain_steps_per_s(net, chains, steps, seed=0, algorithm=mala, step_size=eps)
    _, theirs = BlackjaxMala(net, chains, steps, step_size=eps).chain_steps_per_s(seed=0)
    assert 0.2 < ours < 0.95
    assert abs(ours - theirs) < 0.03
