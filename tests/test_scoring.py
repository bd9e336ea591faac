"""Tests for ebm.scoring: the importance-sampled image likelihood against exact quadrature on toy models,
its error bars, the Newton search, and the percentiles and verdict; the shipped model tells MNIST from
Fashion-MNIST when EBM_DATA_DIR has both."""

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.functional import binary_cross_entropy_with_logits

from ebm import data, scoring
from ebm.checkpoint import save_model
from ebm.cli import main
from ebm.models import Autoencoder, AutoencoderConfig, EnergyConfig, EnergyNet, LatentEBM


def toy_model(latent_dim: int, decoder_scale: float = 3.0, seed: int = 0) -> LatentEBM:
    """A tiny random model in 1-D or 2-D whose posterior is wide enough for a grid to integrate exactly.

    Non-trivial code mean and std, so that forgetting the standardization would show.
    """
    torch.manual_seed(seed)
    autoencoder = Autoencoder(AutoencoderConfig(hidden_dim=8, latent_dim=latent_dim))
    energy = EnergyNet(EnergyConfig(latent_dim=latent_dim, hidden_dim=8, num_layers=2, tilt_sigma=1.0))
    with torch.no_grad():
        autoencoder.decoder[-1].weight.mul_(decoder_scale)
    return LatentEBM(autoencoder, energy, 0.5 * torch.randn(latent_dim), 0.5 + torch.rand(latent_dim)).eval()


@torch.no_grad()
def grid_log_integral(log_f, dim: int, half: float = 5.0, n: int = 240) -> float:
    """log of the integral of exp(log_f) over [-half, half]^dim by the midpoint rule."""
    axis = torch.linspace(-half, half, n + 1)[:-1] + half / n
    points = torch.stack(torch.meshgrid(*[axis] * dim, indexing="ij"), -1).reshape(-1, dim)
    values = torch.cat([log_f(p) for p in points.split(40_000)]).double()
    return (torch.logsumexp(values, 0) + dim * math.log(2 * half / n)).item()


@torch.no_grad()
def exact_log_p_x(model, image: torch.Tensor, log_z: float) -> float:
    """log ∫ p(x | z) p(z) dz on a grid over raw codes z = mean + std u (u in [-5, 5]^d, Jacobian prod std)."""
    def log_joint(u):
        z = model.code_mean + model.code_std * u
        logits = model.autoencoder.decode_logits(z)
        log_lik = -binary_cross_entropy_with_logits(logits, image.expand_as(logits), reduction="none").sum(1)
        log_prior_z = -model.energy(u) - log_z - model.code_std.log().sum()  # density of z, not of u
        return log_lik + log_prior_z + model.code_std.log().sum()

    return grid_log_integral(log_joint, model.latent_dim)


def toy_images(model, n: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 784, generator=gen) < model.decode(torch.randn(n, model.latent_dim, generator=gen))).float()


@pytest.fixture(scope="module", params=[1, 2])
def toy_case(request):
    """A toy model, its exact log Z, three of its images, their exact log p(x) and their scores."""
    model = toy_model(request.param)
    log_z = grid_log_integral(lambda c: -model.energy(c), request.param)
    images = toy_images(model, 3)
    exact = np.array([exact_log_p_x(model, x, log_z) for x in images])
    return model, log_z, images, exact, scoring.score_images(model, images, log_z, num_draws=2000)


def test_image_log_likelihood_matches_exact_quadrature_within_its_error_bars(toy_case):
    model, log_z, images, exact, scores = toy_case
    assert (scores.log_p_x_standard_error < 0.02).all()
    np.testing.assert_array_less(np.abs(scores.log_p_x - exact), 4 * scores.log_p_x_standard_error + 1e-3)
    assert (scores.effective_sample_size > 0.5 * 2000).all()
    # the latent scores are the code's: E(encode(x)) and -E - log Z
    with torch.no_grad():
        energy = model.energy(model.encode(images)).double().numpy()
    np.testing.assert_allclose(scores.energy, energy, rtol=1e-6)
    np.testing.assert_allclose(scores.log_p_z, -energy - log_z, rtol=1e-6)


@pytest.mark.parametrize("toy_case", [2], indirect=True)  # in 1-D this posterior is too close to Gaussian to tell
def test_importance_sampling_corrects_the_laplace_approximation(toy_case):
    """Laplace alone (no sampling) misses the exact value by many of the estimator's standard errors."""
    model, log_z, images, exact, scores = toy_case
    modes, _, log_det = scoring.posterior_mode(model, images)
    with torch.no_grad():
        laplace = (-scoring.neg_log_joint(model, modes, images) - log_z + 0.5 * log_det + math.log(2 * math.pi)).numpy()
    assert np.max(np.abs(laplace - exact) / scores.log_p_x_standard_error) > 6


def test_standard_errors_match_the_spread_over_seeds():
    model = toy_model(2, decoder_scale=10.0)
    image = toy_images(model, 1)
    runs = [scoring.score_images(model, image, 0.0, num_draws=64, seed=seed) for seed in range(40)]
    spread = np.std([r.log_p_x[0] for r in runs], ddof=1)
    mean_error = np.mean([r.log_p_x_standard_error[0] for r in runs])
    assert 0.6 < spread / mean_error < 1.6


def test_newton_reaches_the_posterior_mode_from_the_encoders_code():
    model = toy_model(2, decoder_scale=10.0)
    images = toy_images(model, 5)
    modes, root, log_det = scoring.posterior_mode(model, images)
    value, grad, hessian = scoring._value_grad_hessian(model, modes, images)
    start = scoring.neg_log_joint(model, model.encode(images), images).detach()
    assert (value <= start + 1e-5).all()
    assert grad.norm(dim=1).max() < 0.05
    # L L^T is the inverse Hessian and log det Σ its log determinant
    torch.testing.assert_close(root @ root.transpose(1, 2) @ hessian, torch.eye(2).expand(5, 2, 2), atol=1e-3, rtol=0)
    torch.testing.assert_close(log_det, -torch.logdet(hessian), atol=1e-3, rtol=0)


def test_scores_are_reproducible_and_do_not_depend_on_the_batch():
    model = toy_model(2, decoder_scale=10.0)
    images = toy_images(model, 6)
    first, again = scoring.score_images(model, images, 1.0), scoring.score_images(model, images, 1.0)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    alone = scoring.score_images(model, images[3:4], 1.0)
    # the same draws, up to float32 rounding that depends on the batch's shape (7e-7 relative on a Zen 3);
    # other draws move log p(x) by ~1e-4 relative
    np.testing.assert_allclose(alone.log_p_x, first.log_p_x[3:4], rtol=5e-6, atol=0)
    other_seed = scoring.score_images(model, images, 1.0, seed=1)
    assert not np.array_equal(other_seed.log_p_x, first.log_p_x)


def test_the_t_draws_have_the_standard_t_density():
    draws, log_density = scoring.standard_t_draws(200_000, 2, seed=0)
    # T_DOF = 5: covariance dof / (dof - 2) I; log density against the product formula at 0
    np.testing.assert_allclose(np.cov(draws.numpy().T), np.eye(2) * 5 / 3, atol=0.05)
    at_zero = math.lgamma(3.5) - math.lgamma(2.5) - math.log(5 * math.pi)
    assert log_density.max().item() <= at_zero + 1e-9
    assert log_density.max().item() == pytest.approx(at_zero, abs=1e-3)


def test_reference_percentiles_and_verdict():
    model = toy_model(2, decoder_scale=10.0)
    test_images = toy_images(model, 200)
    reference = scoring.build_reference(model, test_images, log_z=0.0, num_images=100)
    assert len(reference.log_p_x) == 100 and np.all(np.diff(reference.log_p_x) >= 0) and reference.seconds > 0
    assert reference.outlier_log_p_x == pytest.approx(np.percentile(reference.log_p_x, scoring.OUTLIER_PERCENTILE))
    typical = scoring.score_image(model, test_images[0], reference)
    assert typical.verdict == scoring.INLIER and 0 < typical.log_p_x_percentile < 100
    odd = torch.zeros(784)
    odd[::2] = 1  # stripes the decoder cannot draw
    outlier = scoring.score_image(model, odd, reference)
    assert outlier.verdict == scoring.OUTLIER and outlier.log_p_x_percentile == 0.0
    assert json.loads(json.dumps(outlier.to_dict()))["verdict"] == scoring.OUTLIER
    assert set(outlier.to_dict()) == set(scoring.ImageScore._fields)


def test_percentile_of_counts_ties_half():
    values = np.array([1.0, 2.0, 2.0, 3.0])
    assert scoring.percentile_of(values, 0.0) == 0.0
    assert scoring.percentile_of(values, 2.0) == 50.0
    assert scoring.percentile_of(values, 2.5) == 75.0
    assert scoring.percentile_of(values, 9.0) == 100.0


def test_bad_images_are_refused():
    model = toy_model(2)
    for bad, message in ((torch.full((2, 784), 0.5), "binary"), (torch.zeros(2, 783), "shape"),
                         (torch.zeros(0, 784), "shape"), (torch.full((1, 784), float("nan")), "binary")):
        with pytest.raises(ValueError, match=message):
            scoring.score_images(model, bad, 0.0)
    with pytest.raises(ValueError, match="num_draws"):
        scoring.score_images(model, torch.zeros(1, 784), 0.0, num_draws=1)


@pytest.mark.skipif(not os.environ.get("EBM_DATA_DIR"), reason="needs MNIST in EBM_DATA_DIR")
def test_the_shipped_model_tells_digits_from_clothes():
    from sklearn.metrics import roc_auc_score

    from ebm.checkpoint import load_model
    from ebm.data import load_binarized

    model, _ = load_model()
    digits, _ = load_binarized("mnist", "test", os.environ["EBM_DATA_DIR"], download=False)
    try:  # copied in from Debian's dataset-fashion-mnist the first time (.ci/run installs it)
        clothes, _ = load_binarized("fashion-mnist", "test", os.environ["EBM_DATA_DIR"])
    except data.DatasetError as e:
        pytest.skip(f"no Fashion-MNIST: {e}")
    inside, outside = (scoring.score_images(model, x[:100], 0.0) for x in (digits, clothes))
    labels = np.r_[np.ones(100), np.zeros(100)]
    assert roc_auc_score(labels, np.r_[inside.log_p_x, outside.log_p_x]) >= 0.95
    assert np.median(inside.effective_sample_size) > 0.5 * scoring.IS_DRAWS
    assert np.median(inside.log_p_x_standard_error) < 0.1


# --- the command line ------------------------------------------------------------------


def write_one(path) -> None:
    """A dark "1" on white, as a PNG."""
    picture = np.full((60, 40), 255, np.uint8)
    picture[10:50, 15:25] = 0
    Image.fromarray(picture).save(path)


def test_score_command_prints_json_and_writes_the_preprocessed_digit(tiny_model, tiny_data_dir, tmp_path, capsys):
    weights = save_model(tiny_model[0], tmp_path / "m.safetensors")
    write_one(tmp_path / "one.png")
    main(["score", str(tmp_path / "one.png"), "--weights", str(weights), "--data-dir", str(tiny_data_dir),
          "--out", str(tmp_path / "out" / "digit.png")])
    result = json.loads(capsys.readouterr().out)
    assert set(scoring.ImageScore._fields) <= set(result)
    assert result["verdict"] in (scoring.INLIER, scoring.OUTLIER)
    assert result["reference"]["num_images"] == 128  # all the tiny test set
    assert math.isfinite(result["log_p_x"]) and result["log_p_x_standard_error"] > 0
    digit = np.asarray(Image.open(tmp_path / "out" / "digit.png"))
    assert digit.shape == (28, 28) and set(np.unique(digit)) == {0, 255} and result["written"].endswith("digit.png")


def test_score_command_errors_are_one_line(tiny_model, tiny_data_dir, tmp_path, monkeypatch):
    weights = str(save_model(tiny_model[0], tmp_path / "m.safetensors"))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "blank.png").write_bytes(b"")
    cases = {str(tmp_path / "missing.png"): "cannot read the image", str(tmp_path / "bad.png"): "corrupt|not an image",
             str(tmp_path / "blank.png"): "empty"}
    for path, message in cases.items():
        with pytest.raises(SystemExit, match=message):
            main(["score", path, "--weights", weights, "--data-dir", str(tiny_data_dir)])

    def offline(*args):
        raise data.DatasetError("offline: no MNIST here")

    monkeypatch.setattr(data, "_fetch", offline)
    good = tmp_path / "good.png"
    write_one(good)
    with pytest.raises(SystemExit, match="no MNIST"):
        main(["score", str(good), "--weights", weights, "--data-dir", str(tmp_path / "empty")])
