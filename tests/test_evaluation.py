"""Tests for ebm.evaluation (and its parts ebm.quadrature, ebm.importance, ebm.metrics) and ebm.classifier
on cases whose answers are known.

Offline and fast: log Z is checked on Gaussian-mixture energies with a closed-form normalizer,
the metrics on synthetic arrays, and the whole pipeline on a tiny synthetic MNIST; the real
test set is only used (to check the shipped classifier's accuracy) when EBM_DATA_DIR has it.
"""

import argparse
import functools
import gzip
import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm
from scipy.stats import norm

from ebm import evaluation as ev
from ebm import importance, metrics, quadrature
from ebm.checkpoint import WeightsError, save_model
from ebm.classifier import (
    DEFAULT_CLASSIFIER,
    ClassifierConfig,
    MnistClassifier,
    accuracy,
    load_classifier,
    save_classifier,
)
from ebm.cli import run_evaluate
from ebm.training import TrainConfig, build_model

LOG_Z = 1.7  # the mixture energies below are -log(mixture density) - LOG_Z, so log Z = LOG_Z


def mixture_energy():
    """A correlated 3-component Gaussian mixture in 4-D as an energy, with its parameters."""
    torch.manual_seed(0)
    means = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 0.5, 1.0], [-1.5, 1.5, -1.0, 0.0]])
    a = 0.3 * torch.randn(3, 4, 4)
    covs = a @ a.transpose(1, 2) + 0.3 * torch.eye(4)
    weights = torch.tensor([0.5, 0.3, 0.2])
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(weights), torch.distributions.MultivariateNormal(means, covs)
    )
    return (lambda x: -mix.log_prob(x) - LOG_Z), mix, (means, covs, weights)


@pytest.fixture(scope="module")
def mixture_grid():
    return quadrature.grid_quadrature(mixture_energy()[0], np.full(4, -6.0), np.full(4, 6.0), resolution=30)


def test_grid_quadrature_finds_a_known_log_z(mixture_grid):
    grid = mixture_grid
    assert grid.log_z == pytest.approx(LOG_Z, abs=0.01)
    assert grid.edge_mass < 1e-4


def test_grid_marginals_match_the_mixture_marginals(mixture_grid):
    _, _, (means, covs, weights) = mixture_energy()
    grid = mixture_grid
    for k in range(4):
        edges = grid.edges(k)
        cdf = sum(w * norm.cdf(edges, m[k], math.sqrt(c[k, k]))
                  for w, m, c in zip(weights.tolist(), means.numpy(), covs.numpy()))
        np.testing.assert_allclose(np.exp(grid.marginal_log_mass[k]), np.diff(cdf), atol=2e-3)


def test_a_box_that_is_too_small_shows_in_edge_mass_and_log_z():
    energy, _, _ = mixture_energy()
    grid = quadrature.grid_quadrature(energy, np.full(4, -1.0), np.full(4, 1.0), resolution=10)
    assert grid.edge_mass > 0.1
    assert grid.log_z < LOG_Z - 0.5


def test_grid_quadrature_rejects_bad_boxes_and_nan():
    energy, _, _ = mixture_energy()
    with pytest.raises(ValueError):
        quadrature.grid_quadrature(energy, np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError):
        quadrature.grid_quadrature(lambda x: torch.full((len(x),), float("nan")), -np.ones(2), np.ones(2), resolution=4)


def test_importance_sampling_agrees_within_its_error_bars():
    energy, mix, _ = mixture_energy()
    codes = mix.sample((20_000,))
    est = importance.importance_log_z(energy, codes, num_samples=50_000, seed=0)
    assert 0 < est.standard_error < 0.02
    assert abs(est.log_z - LOG_Z) < 4 * est.standard_error
    assert est.effective_sample_size > 0.2 * est.num_samples


def test_importance_sampling_error_bars_grow_for_a_poor_proposal():
    """Codes that cover one mode only: the t tail still finds the others, with larger error bars."""
    energy, mix, (means, _, _) = mixture_energy()
    good = importance.importance_log_z(energy, mix.sample((5000,)), num_samples=20_000, seed=1)
    poor = importance.importance_log_z(energy, means[0] + 0.3 * torch.randn(5000, 4), num_samples=20_000,
                                       components=1, seed=1)
    assert poor.standard_error > 3 * good.standard_error
    assert poor.effective_sample_size < 0.5 * good.effective_sample_size


def test_frechet_distance_of_identical_features_is_zero():
    features = np.random.default_rng(0).standard_normal((500, 16)) @ np.random.default_rng(1).standard_normal((16, 16))
    mu, cov = metrics.features_stats(features)
    assert metrics.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8 * np.trace(cov))


def test_frechet_distance_closed_forms():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    # diagonal covariances: |mu1 - mu2|^2 + sum (sigma1 - sigma2)^2
    s1, s2 = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0])
    expected = 5.0 + np.square(s1 - s2).sum()
    assert metrics.frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected)
    # covariances that do not commute, against scipy's matrix square root
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    c1, c2 = a @ a.T, b @ b.T + np.eye(6)
    reference = np.trace(c1 + c2 - 2 * sqrtm(c1 @ c2).real)
    assert metrics.frechet_distance(np.zeros(6), c1, np.zeros(6), c2) == pytest.approx(reference, rel=1e-6)
    # a rank-deficient covariance is fine
    assert metrics.frechet_distance(np.zeros(6), np.zeros((6, 6)), np.zeros(6), c2) == pytest.approx(np.trace(c2))


def test_frechet_distance_of_samples_estimates_the_population_value():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50_000, 4))
    y = rng.standard_normal((50_000, 4)) * 2.0 + 1.0
    distance = metrics.frechet_distance(*metrics.features_stats(x), *metrics.features_stats(y))
    assert distance == pytest.approx(4 * 1.0 + 4 * 1.0, rel=0.02)


def test_inception_score_bounds():
    confident = np.eye(10)[np.arange(1000) % 10]
    assert metrics.inception_score(confident) == pytest.approx(10.0)
    assert metrics.inception_score(np.eye(10)[np.zeros(1000, dtype=int)]) == pytest.approx(1.0)
    assert metrics.inception_score(np.full((100, 10), 0.1)) == pytest.approx(1.0)
    two_classes = np.eye(10)[np.arange(1000) % 2]
    assert metrics.inception_score(two_classes) == pytest.approx(2.0)


def test_class_histogram():
    uniform = metrics.class_histogram(np.arange(1000) % 10)
    assert uniform["entropy_bits"] == pytest.approx(math.log2(10))
    assert uniform["min_share"] == pytest.approx(0.1)
    missing = metrics.class_histogram(np.array([0, 1, 1, 2]))
    assert missing["min_share"] == 0.0
    assert missing["entropy_bits"] == pytest.approx(1.5)
    assert missing["counts"][:3] == [1, 2, 1]
    with pytest.raises(ValueError):
        metrics.class_histogram(np.array([10]))


def test_knn_precision_recall():
    rng = np.random.default_rng(4)
    real = rng.standard_normal((400, 8))
    assert metrics.knn_precision_recall(real, real) == (1.0, 1.0)
    assert metrics.knn_precision_recall(real, real + 100.0) == (0.0, 0.0)
    # generated points that collapse onto part of the data: precise, but recall drops
    plane = rng.standard_normal((1000, 2))
    collapsed = plane[plane[:, 0] > 0.5]  # 31% of the points, all on one side
    precision, recall = metrics.knn_precision_recall(plane, collapsed)
    assert precision == 1.0 and 0.25 < recall < 0.45


# --- the classifier -------------------------------------------------------------------


def test_shipped_classifier_is_small_and_loads():
    assert DEFAULT_CLASSIFIER.stat().st_size < 2_000_000
    model, extra = load_classifier()
    assert extra["test_accuracy"] >= 0.985
    features, probs = model.predict(torch.zeros(3, 784))
    assert features.shape == (3, model.config.feature_dim) and probs.shape == (3, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))


@pytest.mark.skipif(not os.environ.get("EBM_DATA_DIR"), reason="needs MNIST in EBM_DATA_DIR")
def test_shipped_classifier_accuracy_on_mnist():
    from ebm.data import load_binarized

    images, labels = load_binarized("mnist", "test", os.environ["EBM_DATA_DIR"], download=False)
    assert accuracy(load_classifier()[0], images, labels) >= 0.985


def test_classifier_round_trip_and_clear_errors(tmp_path):
    torch.manual_seed(0)
    model = MnistClassifier(ClassifierConfig(channels1=4, channels2=8, feature_dim=16))
    path = save_classifier(model, tmp_path / "c.safetensors", {"note": "x"})
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    loaded, extra = load_classifier(path)
    assert extra == {"note": "x"}
    x = torch.rand(5, 784)
    torch.testing.assert_close(loaded(x), model(x))

    with pytest.raises(WeightsError, match="do not exist"):
        load_classifier(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a weights file")
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        load_classifier(tmp_path / "junk.safetensors")
    with pytest.raises(WeightsError, match="not a classifier"):
        load_classifier(save_model(build_model(TrainConfig(ae_hidden_dim=8, ebm_hidden_dim=8)),
                                   tmp_path / "ebm.safetensors"))
    # a tensor whose shape does not fit the architecture in the metadata
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    tensors["fc.weight"] = tensors["fc.weight"][:, :-1].contiguous()
    header = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])
    save_file(tensors, tmp_path / "bad.safetensors", metadata=header["__metadata__"])
    with pytest.raises(WeightsError, match="fc.weight.*shape"):
        load_classifier(tmp_path / "bad.safetensors")
    # an absurd width in the metadata is refused before anything is allocated
    huge_config = {**json.loads(header["__metadata__"]["config"]), "channels1": 10**7}
    metadata = dict(header["__metadata__"], config=json.dumps(huge_config))
    save_file(load_file(path), tmp_path / "huge.safetensors", metadata=metadata)
    with pytest.raises(WeightsError, match="config.*channels1"):
        load_classifier(tmp_path / "huge.safetensors")


# --- the whole pipeline on a tiny synthetic MNIST ---------------------------------------


def _write_fake_mnist(root: Path, n_train=300, n_test=200, folder="MNIST") -> None:
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = (rng.random((n, 28, 28)) < 0.2).astype(np.uint8) * 255
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images_idx = struct.pack(">4I", 0x803, n, 28, 28) + images.tobytes()
        labels_idx = struct.pack(">2I", 0x801, n) + labels.tobytes()
        (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images_idx))
        (raw / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels_idx))


def test_run_evaluate_end_to_end_on_synthetic_data(tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "GRID_RESOLUTION", 8)
    monkeypatch.setattr(ev, "IS_SAMPLES", 2000)
    monkeypatch.setattr(ev, "BASELINES", {"gaussian": 1, "gmm10": 2, "gmm50": 3})  # same keys, faster fits
    monkeypatch.setattr(ev, "OOD_IMAGES", 50)
    monkeypatch.setattr(ev, "INPAINT_IMAGES", 20)
    _write_fake_mnist(tmp_path / "data")
    _write_fake_mnist(tmp_path / "data", folder="FashionMNIST")  # else it is copied from the Debian package
    weights = save_model(build_model(TrainConfig(ae_hidden_dim=16, ebm_hidden_dim=8)), tmp_path / "m.safetensors")
    args = argparse.Namespace(weights=weights, classifier=DEFAULT_CLASSIFIER, samples=100, seed=0, sampler="mala",
                              data_dir=tmp_path / "data", out_dir=tmp_path / "eval", threads=torch.get_num_threads())
    results = run_evaluate(args)

    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["ebm"]["test_nll_nats"] == pytest.approx(results["ebm"]["test_nll_nats"])
    for name in ("ebm", "gaussian", "gmm10", "gmm50", "reconstruction", "data"):
        for key in ("test_nll_nats", "fid", "class_min_share", "inception_score", "class_entropy_bits"):
            assert key in saved[name]
        assert saved[name]["num_images"] == 100
        assert (saved[name]["test_nll_nats"] is None) == (name in ("reconstruction", "data"))
    assert saved["log_z"]["quadrature"]["resolution"] == 8 and saved["log_z"]["quadrature_check"]["resolution"] == 16
    assert set(saved["diagnostics"]) == {"mala", "ula"}
    assert len(saved["diagnostics"]["ula"]["marginal_w1"]) == 4
    assert saved["settings"]["sample_settings"]["num_chains"] == 100
    report = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "| gmm50 |" in report and "importance sampling" in report
    assert saved["ood"]["num_images"] == 50 and "| fashion-mnist |" in report
    assert saved["inpainting"]["images"] == 20 and "## Inpainting" in report


def test_run_evaluate_refuses_a_classifier_of_another_dataset(tmp_path):
    weights = save_model(build_model(TrainConfig(ae_hidden_dim=16, ebm_hidden_dim=8, dataset="fashion-mnist")),
                         tmp_path / "m.safetensors", extra={"dataset": "fashion-mnist", "threshold": 0.5})
    args = argparse.Namespace(weights=weights, classifier=DEFAULT_CLASSIFIER, samples=100, seed=0, sampler="mala",
                              data_dir=tmp_path / "data", out_dir=tmp_path / "eval", threads=1)
    with pytest.raises(SystemExit, match="reads mnist images, but the model was trained on fashion-mnist"):
        run_evaluate(args)
    assert not (tmp_path / "eval").exists()


def test_evaluate_reports_the_flow_baseline(tmp_path, monkeypatch):
    """The flow row: an NLL over the same test codes and the same image metrics as the other baselines."""
    from ebm.flow import FlowSettings

    monkeypatch.setattr(ev, "GRID_RESOLUTION", 8)
    monkeypatch.setattr(ev, "IS_SAMPLES", 2000)
    monkeypatch.setattr(ev, "BASELINES", {"gaussian": 1})
    monkeypatch.setattr(ev, "annealed_log_z", functools.partial(ev.annealed_log_z, num_chains=64, num_temperatures=20))
    monkeypatch.setattr(ev, "OOD_IMAGES", 50)
    monkeypatch.setattr(ev, "INPAINT_IMAGES", 20)
    _write_fake_mnist(tmp_path / "data")
    _write_fake_mnist(tmp_path / "data", folder="FashionMNIST")
    tiny = FlowSettings(transforms=1, hidden_width=8, bins=4, epochs=2)
    results = ev.evaluate(build_model(TrainConfig(ae_hidden_dim=16, ebm_hidden_dim=8)), load_classifier()[0],
                          tmp_path / "data", num_samples=100, flow_settings=tiny)
    flow = json.loads(json.dumps(results))["flow"]
    assert math.isfinite(flow["test_nll_nats"]) and flow["num_images"] == 100
    assert results["gaussian"].keys() == flow.keys()
    assert results["settings"]["flow"] == {"library": "zuko 1.6.0 flows.NSF", "seed": 0, **tiny.as_dict()}
    assert "flow" in results["timings_s"]
    report = ev.report_markdown(results)
    assert "| flow |" in report and report.index("| gaussian |") < report.index("| flow |") < report.index("| data |")


# --- out-of-distribution detection -------------------------------------------------------


def _tiny_model():
    torch.manual_seed(0)
    return build_model(TrainConfig(ae_hidden_dim=16, ebm_hidden_dim=8)).eval()


def test_ood_detection_scores_each_set_and_energy_ranks_as_log_p_z(tmp_path):
    """Fashion-MNIST replaced by MNIST itself: every score is at chance (AUROC ~ 0.5) against it."""
    _write_fake_mnist(tmp_path, n_test=400)
    _write_fake_mnist(tmp_path, n_test=400, folder="FashionMNIST")
    from ebm.data import load_binarized

    test_x, _ = load_binarized("mnist", "test", tmp_path)
    ood = ev.ood_detection(_tiny_model(), test_x, log_z=1.0, data_dir=tmp_path, num_images=200, seed=0)
    assert ood["num_images"] == 200 and set(ood) >= {"inliers", "fashion-mnist", "noise"}
    assert ood["inliers"]["dataset"] == "mnist"
    for name in ("fashion-mnist", "noise"):
        auroc = ood[name]["auroc"]
        assert auroc["energy"] == auroc["log_p_z"]  # log Z is a constant: the same ranking
        assert all(0 <= v <= 1 for v in auroc.values()) and 0 <= ood[name]["flagged_share"] <= 1
    assert abs(ood["fashion-mnist"]["auroc"]["log_p_x"] - 0.5) < 0.12
    assert ev.ood_detection(_tiny_model(), test_x, 1.0, tmp_path, 200, seed=0) == ood  # same seed, same numbers
    lines = "\n".join(ev._ood_lines(ood))
    assert "equal by construction" in lines and "| noise |" in lines and "| mnist (in) |" in lines
    fashion_test_x, _ = load_binarized("fashion-mnist", "test", tmp_path)  # a Fashion-MNIST model's outliers: MNIST
    reverse = ev.ood_detection(_tiny_model(), fashion_test_x, 1.0, tmp_path, 200, seed=0, dataset="fashion-mnist")
    assert set(reverse) >= {"inliers", "mnist", "noise"} and "fashion-mnist" not in reverse
    assert "| fashion-mnist (in) |" in "\n".join(ev._ood_lines(reverse))


def test_ood_detection_says_why_fashion_mnist_is_missing(tmp_path, monkeypatch):
    from ebm import data

    def offline(*args):
        raise data.DatasetError("offline and no Debian copy")

    monkeypatch.setattr(data, "_fetch", offline)
    test_x = (torch.rand(100, 784, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    ood = ev.ood_detection(_tiny_model(), test_x, 1.0, tmp_path / "empty", num_images=50)
    assert "offline and no Debian copy" in ood["fashion-mnist"]["error"] and "auroc" in ood["noise"]
    lines = ev._ood_lines(ood)
    assert any(line.startswith("| fashion-mnist | not loaded") for line in lines)
    assert any("offline and no Debian copy" in line for line in lines)
