"""Composable energies and inpainting: the sums' maths, the likelihood's gradient, mask checks, and
posterior sampling against a toy posterior known in closed form."""

import json

import numpy as np
import pytest
import torch
from scipy import stats

from ebm.checkpoint import load_model
from ebm.energies import (
    autograd_energy,
    bernoulli_nll,
    check_images,
    inpaint,
    model_logits,
    sample_posterior,
    summed,
    tempered,
    visible_mask,
)
from ebm.generate import SampleSettings, decode_binary


def quadratic(scale):
    """E(z) = scale |z|²/2, with its gradient by hand."""
    return lambda z: (0.5 * scale * z.square().sum(-1), scale * z)


def test_summed_and_tempered_add_and_divide_energies_and_gradients():
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    energy, grad = summed(quadratic(1.0), quadratic(2.0), quadratic(0.5))(z)
    torch.testing.assert_close(energy, 1.75 * z.square().sum(-1))
    torch.testing.assert_close(grad, 3.5 * z)
    energy, grad = tempered(quadratic(3.0), 2.0)(z)
    torch.testing.assert_close(energy, 0.75 * z.square().sum(-1))
    torch.testing.assert_close(grad, 1.5 * z)
    with pytest.raises(ValueError, match="temperature"):
        tempered(quadratic(1.0), 0.0)
    with pytest.raises(ValueError, match="at least one"):
        summed()


def finite_difference_grad(energy, z, h=1e-6):
    basis = torch.eye(z.shape[1], dtype=z.dtype)
    return torch.stack([(energy(z + h * e)[0] - energy(z - h * e)[0]) / (2 * h) for e in basis], -1)


def test_autograd_energy_and_the_likelihood_match_finite_differences():
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    logits = lambda z: torch.sin(z @ weight) * 4  # noqa: E731 - a toy decoder
    images = (torch.rand(4, 6, generator=gen) < 0.5).double()
    visible = torch.tensor([True, True, False, True, False, True])
    z = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    likelihood = bernoulli_nll(logits, images, visible)
    energy, grad = likelihood(z)
    p = torch.sigmoid(logits(z))
    expected = -(visible * (images * p.log() + (1 - images) * (1 - p).log())).sum(-1)
    torch.testing.assert_close(energy, expected)
    torch.testing.assert_close(grad, finite_difference_grad(likelihood, z), rtol=1e-6, atol=1e-6)
    composed = summed(quadratic(1.0), autograd_energy(lambda z: z.pow(3).sum(-1)), likelihood)
    torch.testing.assert_close(composed(z)[1], finite_difference_grad(composed, z), rtol=1e-6, atol=1e-6)


def test_hidden_pixels_add_nothing_to_the_likelihood():
    gen = torch.Generator().manual_seed(2)
    logits = lambda z: z @ torch.ones(2, 4, dtype=torch.float64) * 3  # noqa: E731
    z = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    visible = torch.tensor([True, False, True, False])
    one = bernoulli_nll(logits, torch.tensor([1.0, 0.0, 0.0, 1.0]), visible)(z)
    other = bernoulli_nll(logits, torch.tensor([1.0, 1.0, 0.0, 0.0]), visible)(z)
    torch.testing.assert_close(one, other)


def test_masks_by_name_and_given_ones():
    bottom = visible_mask("bottom").reshape(28, 28)
    assert bottom[:14].all() and not bottom[14:].any()
    right = visible_mask("right").reshape(28, 28)
    assert right[:, :14].all() and not right[:, 14:].any()
    assert (visible_mask("top") == ~visible_mask("bottom")).all()
    assert (visible_mask("left") == ~visible_mask("right")).all()
    given = torch.zeros(28, 28, dtype=torch.bool)
    given[3, 4] = True
    assert visible_mask(given).sum() == 1 and visible_mask(given).shape == (784,)
    for bad, match in [("middle", "top, bottom, left, right"), (torch.zeros(783, dtype=torch.bool), "784"),
                       (torch.zeros(784), "bool"), ([True] * 784, "list")]:
        with pytest.raises(ValueError, match=match):
            visible_mask(bad)
    for bad, match in [(torch.zeros(3, 5), "shape"), (torch.full((784,), 0.5), "binary")]:
        with pytest.raises(ValueError, match=match):
            check_images(bad)


# The toy posterior: prior N(0, I) in 2-D; visible on-pixel j has σ(l_j(z)) = exp(-(z - a_j)ᵀ P_j (z - a_j) / 2),
# so its likelihood is a Gaussian factor; the posterior is N(μ, Σ) with Σ⁻¹ = I + Σ_j P_j, μ = Σ Σ_j P_j a_j.
CENTRES = torch.tensor([[1.0, -0.5], [2.0, 0.5], [1.5, 1.0]], dtype=torch.float64)
PRECISIONS = torch.tensor([[[4.0, 0.0], [0.0, 1.0]], [[2.0, 1.5], [1.5, 2.0]], [[0.5, 0.0], [0.0, 6.0]]],
                          dtype=torch.float64)
COVARIANCE = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + PRECISIONS.sum(0))
MEAN = COVARIANCE @ torch.einsum("jab,jb->a", PRECISIONS, CENTRES)


def toy_logits(z):
    """Logits of 3 Gaussian-likelihood pixels, then one hidden pixel that would pull hard if it counted."""
    diff = z[:, None, :] - CENTRES
    log_p = -0.5 * torch.einsum("nja,jab,njb->nj", diff, PRECISIONS, diff)
    return torch.cat([log_p - torch.log(-torch.expm1(log_p)), 20 * z[:, :1]], -1)


TOY_IMAGE = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
TOY_VISIBLE = torch.tensor([True, True, True, False])


def matches_posterior(samples: torch.Tensor) -> bool:
    """Mean and covariance within 5 standard errors, each marginal's KS test p > 0.001."""
    n, var = len(samples), COVARIANCE.diagonal()
    mean_ok = ((samples.mean(0) - MEAN).abs() < 5 * (var / n).sqrt()).all()
    cov_se = ((var[:, None] * var[None, :] + COVARIANCE.square()) / n).sqrt()
    cov_ok = ((torch.cov(samples.T) - COVARIANCE).abs() < 5 * cov_se).all()
    ks_ok = all(stats.kstest(samples[:, i].numpy(), "norm", (MEAN[i].item(), COVARIANCE[i, i].sqrt().item())).pvalue
                > 1e-3 for i in range(2))
    return bool(mean_ok and cov_ok and ks_ok)


def toy_samples(sampler: str, step_size: float, with_likelihood: bool = True) -> torch.Tensor:
    prior = quadratic(1.0)
    energy = summed(prior, bernoulli_nll(toy_logits, TOY_IMAGE, TOY_VISIBLE)) if with_likelihood else prior
    start = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2
    settings = SampleSettings(sampler, step_size, num_steps=100, num_chains=2000, record_every=100, seed=3)
    result, _ = sample_posterior(energy, start, settings)
    return result.state.position


def test_posterior_sampling_draws_the_closed_form_posterior():
    assert matches_posterior(toy_samples("mala", 0.5))  # the warm-up starts from the prior's ε
    # biased: ULA's stationary law at this ε is 26% and 49% too wide along the posterior's principal axes
    assert not matches_posterior(toy_samples("ula", 0.35))
    assert not matches_posterior(toy_samples("mala", 0.5, with_likelihood=False))  # the prior is not the posterior


def test_posterior_sampling_adapts_the_step_size_and_is_deterministic():
    prior = quadratic(1.0)
    energy = summed(prior, bernoulli_nll(toy_logits, TOY_IMAGE, TOY_VISIBLE))
    start = torch.zeros(64, 2, dtype=torch.float64)
    settings = SampleSettings(num_steps=50, num_chains=64, seed=1)
    (one, eps), (two, _) = sample_posterior(energy, start, settings), sample_posterior(energy, start, settings)
    assert torch.equal(one.state.position, two.state.position)
    assert eps < 0.5 and 0.35 < one.acceptance.mean() < 0.8


@pytest.fixture(scope="module")
def shipped_model():
    return load_model()[0]


def test_inpaint_keeps_the_visible_pixels_and_repeats_per_seed(shipped_model):
    model = shipped_model
    images = decode_binary(model, torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(0)))
    settings = SampleSettings(num_steps=20, num_chains=3, seed=4)
    visible = visible_mask("bottom")
    first, second = inpaint(model, images, "bottom", settings, pool_size=256), inpaint(model, images, visible,
                                                                                          settings, pool_size=256)
    assert first.images.shape == (2, 3, 784) and first.codes.shape == (2, 3, model.latent_dim)
    assert torch.equal(first.images, second.images)
    assert (first.images[:, :, visible] == images[:, None, visible]).all()
    hidden = torch.where(visible, images[:, None], decode_binary(model, first.codes.reshape(6, -1)).reshape(2, 3, -1))
    assert torch.equal(first.images, hidden)
    assert np.isfinite(first.step_size) and first.step_size < 0.5


def test_model_logits_are_the_decoder_on_standardized_codes(shipped_model):
    z = torch.randn(4, shipped_model.latent_dim, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.sigmoid(model_logits(shipped_model)(z)), shipped_model.decode(z))


def test_inpaint_command_writes_the_completions_and_reads_their_digits(tmp_path, capsys):
    from PIL import Image

    from ebm.cli import main

    picture = np.zeros((40, 30), np.uint8)
    picture[5:35, 12:18] = 255  # a one
    Image.fromarray(picture).save(tmp_path / "one.png")
    main(["inpaint", str(tmp_path / "one.png"), "--mask", "top", "--num-chains", "4",
          "--out-dir", str(tmp_path / "out")])
    result = json.loads(capsys.readouterr().out)
    assert result["hidden"] == "top" and result["num_chains"] == 4 and len(result["digits_read"]) == 4
    assert all(0 <= d <= 9 for d in result["digits_read"])
    assert np.asarray(Image.open(tmp_path / "out" / "completions.png")).ndim == 2
    assert (tmp_path / "out" / "masked.png").is_file() and (tmp_path / "out" / "chains.gif").is_file()
    with pytest.raises(SystemExit, match="cannot read the image"):
        main(["inpaint", str(tmp_path / "missing.png")])
