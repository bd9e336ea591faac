"""How good is the model? Likelihood of test codes, sample quality, baselines, sampler checks.

Likelihood: the density over standardized codes is exp(-E(c)) / Z. In 4-D, log Z can simply be
integrated on a grid (midpoint rule, log-sum-exp in slices), checked once at double resolution
in a wider box, and cross-checked by importance sampling. Test NLL = mean E(test codes) + log Z,
in nats per code, comparable with Gaussian and GMM baselines fitted to the same codes.

Sample quality: a small MNIST CNN (ebm.classifier) stands in for Inception: Fréchet distance of
its penultimate features to the test set, an Inception-score analogue, the histogram of
predicted classes (does the model drop digits?) and kNN precision/recall. Decoded test codes
(`reconstruction`) show what the decoder itself allows, a rough ceiling for any prior over its
codes; training images (`data`) give the floor of the metrics.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy
import sklearn
import torch
from scipy.special import xlogy
from scipy.stats import entropy, multivariate_t
from sklearn.mixture import GaussianMixture

from .checkpoint import SHIPPED_WEIGHTS, WeightsError, load_model
from .classifier import DEFAULT_CLASSIFIER, MnistClassifier, load_classifier
from .data import DatasetError, load_binarized
from .diagnostics import effective_sample_size, marginal_w1, marginal_w1_noise, split_rhat
from .generate import SampleSettings, decode_binary, sample_chains
from .samplers import ChainResult, contrasting_sampler
from .scheduler import Cancelled

Energy = Callable[[torch.Tensor], torch.Tensor]  # (N, d) codes -> (N,) energies

DEFAULT_OUT_DIR = Path("runs/eval")
BASELINES = {"gaussian": 1, "gmm10": 10, "gmm50": 50}  # name -> number of full-covariance components
GRID_RESOLUTION = 32  # points per axis of the coarse grid; the check grid has twice as many
GRID_MARGIN = 1.5  # box = range of the training codes +- margin (standardized units); check: 2x
IS_SAMPLES = 1_000_000


# -----------------------------------------------------------------------------
# log Z: grid quadrature and importance sampling


@dataclass
class GridQuadrature:
    """Midpoint-rule integral of exp(-E) over a box, with the 1-D marginals that come with it."""

    log_z: float
    lo: np.ndarray  # (d,) box corner
    hi: np.ndarray  # (d,) opposite corner
    resolution: int  # cells per axis
    marginal_log_mass: np.ndarray  # (d, resolution): log share of the mass in each slab of cells
    seconds: float

    def edges(self, axis: int) -> np.ndarray:
        """Cell boundaries along one axis, (resolution + 1,)."""
        return np.linspace(self.lo[axis], self.hi[axis], self.resolution + 1)

    @property
    def edge_mass(self) -> float:
        """Largest share of the mass in the outermost cells of any axis: ~0 when the box is big enough."""
        mass = np.exp(self.marginal_log_mass)
        return float((mass[:, 0] + mass[:, -1]).max())

    def summary(self) -> dict:
        return {"log_z": self.log_z, "resolution": self.resolution, "points": self.resolution ** len(self.lo),
                "lo": self.lo.tolist(), "hi": self.hi.tolist(), "edge_mass": self.edge_mass, "seconds": self.seconds}


def code_box(codes: torch.Tensor | np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The smallest box holding all codes, widened by `margin` on every side."""
    codes = np.asarray(codes, dtype=np.float64)
    return codes.min(0) - margin, codes.max(0) + margin


@torch.no_grad()
def grid_quadrature(energy: Energy, lo, hi, resolution: int = GRID_RESOLUTION, chunk: int = 65_536,
                    should_stop: Callable[[int], bool] | None = None) -> GridQuadrature:
    """log of the integral of exp(-E) over the box [lo, hi] on a resolution^d midpoint grid.

    The grid is swept one slice of axis 0 at a time (resolution^(d-1) points), so memory stays
    small; each slice's log-sum-exp is accumulated in float64, and so are the 1-D marginals
    (log-sum-exp over all other axes). `should_stop(slices_done)` is asked after every slice;
    when it says True, `ebm.scheduler.Cancelled` is raised (a server's visitor left).
    """
    start = time.perf_counter()
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    d, n = lo.size, int(resolution)
    if lo.ndim != 1 or hi.shape != lo.shape or not np.all(hi > lo) or n < 2:
        raise ValueError(f"need a box with hi > lo in every dimension and resolution >= 2, got {lo}, {hi}, {resolution}")
    width = (hi - lo) / n
    axes = [torch.tensor(lo[k] + (np.arange(n) + 0.5) * width[k], dtype=torch.float32) for k in range(d)]
    points = torch.empty(n ** (d - 1), d)
    if d > 1:
        points[:, 1:] = torch.stack(torch.meshgrid(*axes[1:], indexing="ij"), -1).reshape(-1, d - 1)
    marginals = torch.full((d, n), -math.inf, dtype=torch.float64)
    for i in range(n):
        points[:, 0] = axes[0][i]
        log_p = -torch.cat([energy(p) for p in points.split(chunk)]).double()
        if torch.isnan(log_p).any():
            raise ValueError("the energy is NaN somewhere on the grid")
        marginals[0, i] = torch.logsumexp(log_p, 0)
        cube = log_p.reshape((n,) * (d - 1))
        for k in range(1, d):
            others = tuple(j for j in range(d - 1) if j != k - 1)
            marginals[k] = torch.logaddexp(marginals[k], torch.logsumexp(cube, others) if others else cube)
        if should_stop is not None and should_stop(i + 1):
            raise Cancelled(f"grid quadrature stopped after {i + 1} of {n} slices")
    total = torch.logsumexp(marginals[0], 0).item()
    return GridQuadrature(
        log_z=total + float(np.log(width).sum()), lo=lo, hi=hi, resolution=n,
        marginal_log_mass=(marginals - total).numpy(), seconds=time.perf_counter() - start,
    )


@dataclass
class ImportanceEstimate:
    log_z: float
    standard_error: float  # of log_z, by the delta method
    effective_sample_size: float  # (sum w)^2 / sum w^2
    num_samples: int
    seconds: float

    def summary(self) -> dict:
        return {"log_z": self.log_z, "standard_error": self.standard_error,
                "effective_sample_size": self.effective_sample_size, "num_samples": self.num_samples, "seconds": self.seconds}


@torch.no_grad()
def importance_log_z(
    energy: Energy,
    codes: torch.Tensor | np.ndarray,
    num_samples: int = IS_SAMPLES,
    components: int = 10,
    tail_weight: float = 0.1,
    seed: int = 0,
) -> ImportanceEstimate:
    """log Z = log E_q[exp(-E(x)) / q(x)] with a heavy-tailed proposal q fitted to the codes.

    q = (1 - tail_weight) GMM(codes) + tail_weight Student-t(3 dof, codes' mean, 4 x their
    covariance): the GMM puts the samples where the mass is, the t tail keeps the weights
    bounded where the GMM falls off faster than exp(-E). The mixture is sampled with fixed
    component counts (stratified), which keeps the estimate unbiased.
    """
    start = time.perf_counter()
    x_fit = np.asarray(codes, dtype=np.float64)
    rng = np.random.default_rng(seed)
    gmm = GaussianMixture(components, covariance_type="full", random_state=seed).fit(x_fit)
    tail = multivariate_t(loc=x_fit.mean(0), shape=4.0 * np.cov(x_fit.T), df=3)
    n_tail = max(1, round(num_samples * tail_weight))
    x = np.concatenate([gmm.sample(num_samples - n_tail)[0], tail.rvs(size=n_tail, random_state=rng).reshape(n_tail, -1)])
    alpha = n_tail / num_samples
    log_q = np.logaddexp(np.log1p(-alpha) + gmm.score_samples(x), np.log(alpha) + tail.logpdf(x))
    energies = torch.cat([energy(p) for p in torch.from_numpy(x).float().split(65_536)]).double().numpy()
    log_w = -energies - log_q
    w = np.exp(log_w - log_w.max())
    return ImportanceEstimate(
        log_z=float(np.log(w.mean()) + log_w.max()),
        standard_error=float(w.std(ddof=1) / (w.mean() * math.sqrt(num_samples))),
        effective_sample_size=float(w.sum() ** 2 / np.square(w).sum()),
        num_samples=num_samples, seconds=time.perf_counter() - start,
    )


# -----------------------------------------------------------------------------
# image metrics on classifier outputs (pure functions of arrays)


def features_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (k,) and covariance (k, k) of (N, k) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2).

    |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)), using tr (cov1 cov2)^(1/2) =
    tr (s cov2 s)^(1/2) with s = cov1^(1/2): a symmetric eigenproblem, stable for singular covs.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    cov1, cov2 = np.asarray(cov1, dtype=np.float64), np.asarray(cov2, dtype=np.float64)
    vals, vecs = np.linalg.eigh(cov1)
    s = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    m = s @ cov2 @ s
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (m + m.T)), 0, None)).sum()
    distance = np.square(mu1 - mu2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt
    return max(float(distance), 0.0)  # >= 0 in exact arithmetic; clip rounding below zero


def inception_score(probs: np.ndarray) -> float:
    """exp(mean KL(p(y|x) || p(y))): between 1 (all alike or all unsure) and the number of classes."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(1, keepdims=True)
    kl = (xlogy(p, p) - xlogy(p, p.mean(0))).sum(1)
    return float(np.exp(kl.mean()))


def class_histogram(labels: np.ndarray, num_classes: int = 10) -> dict:
    """Counts and shares of predicted classes, their entropy in bits and the smallest share."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=num_classes)
    if len(counts) > num_classes or counts.sum() == 0:
        raise ValueError(f"need at least one label, all in 0..{num_classes - 1}")
    shares = counts / counts.sum()
    return {"counts": counts.tolist(), "shares": shares.tolist(),
            "entropy_bits": float(entropy(shares, base=2)), "min_share": float(shares.min())}


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(np.square(a).sum(1)[:, None] + np.square(b).sum(1)[None] - 2 * a @ b.T, 0)


def knn_radii(features: np.ndarray, k: int = 3, chunk: int = 2048) -> np.ndarray:
    """Squared distance of each point to its k-th nearest other point."""
    f = np.asarray(features, dtype=np.float32)
    return np.concatenate([np.partition(_sq_distances(f[i : i + chunk], f), k, axis=1)[:, k] for i in range(0, len(f), chunk)])


def _covered(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Which points lie inside at least one ball (centre, radius)."""
    return np.concatenate([(_sq_distances(points[i : i + chunk], centres) <= radii[None]).any(1) for i in range(0, len(points), chunk)])


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, real_radii: np.ndarray | None = None) -> tuple[float, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019) with k-NN balls in feature space.

    Precision: share of generated points inside some real point's k-NN ball (quality).
    Recall: share of real points inside some generated point's k-NN ball (coverage).
    """
    real, fake = np.asarray(real, dtype=np.float32), np.asarray(fake, dtype=np.float32)
    real_radii = knn_radii(real, k) if real_radii is None else real_radii
    precision = _covered(fake, real, real_radii).mean()
    recall = _covered(real, fake, knn_radii(fake, k)).mean()
    return float(precision), float(recall)


@dataclass
class Reference:
    """Classifier outputs on the test set, computed once and compared with every image set."""

    features: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    radii: np.ndarray

    @classmethod
    def from_features(cls, features: np.ndarray, k: int = 3) -> Reference:
        mean, cov = features_stats(features)
        return cls(np.asarray(features, dtype=np.float32), mean, cov, knn_radii(features, k))


def image_metrics(classifier: MnistClassifier, images: torch.Tensor, reference: Reference) -> dict:
    """All sample-quality numbers of one set of binary images against the test set."""
    features, probs = (t.numpy() for t in classifier.predict(images))
    hist = class_histogram(probs.argmax(1), probs.shape[1])
    precision, recall = knn_precision_recall(reference.features, features, real_radii=reference.radii)
    return {
        "fid": frechet_distance(*features_stats(features), reference.mean, reference.cov),
        "inception_score": inception_score(probs),
        "class_entropy_bits": hist["entropy_bits"],
        "class_min_share": hist["min_share"],
        "class_shares": hist["shares"],
        "precision": precision,
        "recall": recall,
        "num_images": len(images),
    }


# -----------------------------------------------------------------------------
# sampler diagnostics


def sampler_diagnostics(chains: ChainResult, grid: GridQuadrature, warmup: float = 0.5) -> dict:
    """Mixing (split R-hat, ESS) after warm-up, and the W1 distance of final samples' marginals to the grid's.

    Energies are traced every step, coordinates only at the recorded steps; the first
    `warmup` fraction of the run is dropped from both.
    """
    energies = chains.energies.numpy()
    first = int(warmup * len(energies))
    recorded = np.asarray(chains.record_steps) >= warmup * chains.record_steps[-1]
    coords = chains.trajectory.numpy()[recorded]
    final = chains.state.position.numpy()
    out = {"mean_acceptance": chains.acceptance.mean().item(), "warmup_fraction": warmup}
    if len(energies) - first >= 4:
        out["energy_rhat"] = split_rhat(energies[first:])
        out["energy_ess"] = effective_sample_size(energies[first:])
    if len(coords) >= 4:
        out["coord_rhat"] = split_rhat(coords).tolist()
        out["coord_ess"] = effective_sample_size(coords).tolist()
    mass = np.exp(grid.marginal_log_mass)
    out["marginal_w1"] = [marginal_w1(final[:, k], grid.edges(k), mass[k]) for k in range(final.shape[1])]
    out["marginal_w1_noise"] = [marginal_w1_noise(grid.edges(k), mass[k], len(final)) for k in range(final.shape[1])]
    return out


# -----------------------------------------------------------------------------
# the whole evaluation


@torch.no_grad()
def _encode(model, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.encode(chunk) for chunk in images.split(8192)])


@torch.no_grad()
def evaluate(
    model,
    classifier: MnistClassifier,
    data_dir=None,
    num_samples: int = 10_000,
    seed: int = 0,
    sample_settings: SampleSettings | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Evaluate a LatentEBM against its baselines; returns a JSON-ready dict (see module doc).

    Samples: `sample_settings` (default: SampleSettings() with num_samples chains and `seed`);
    the other Langevin sampler (ULA for MALA) is also run with the same settings, for the
    diagnostics only, to show the bias of the unadjusted chain at that step size.
    """
    if not 10 <= num_samples <= 60_000:
        raise ValueError(f"num_samples must be in [10, 60000], got {num_samples}")
    start = last = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal last
        timings[name], last = round(time.perf_counter() - last, 2), time.perf_counter()
        log(f"{name}: {timings[name]:.1f} s")

    model.eval()
    train_x, _ = load_binarized("mnist", "train", data_dir)
    test_x, _ = load_binarized("mnist", "test", data_dir)
    train_codes, test_codes = _encode(model, train_x), _encode(model, test_x)
    reference = Reference.from_features(classifier.predict(test_x)[0].numpy())
    lap("data")

    coarse = grid_quadrature(model.energy, *code_box(train_codes, GRID_MARGIN), GRID_RESOLUTION)
    fine = grid_quadrature(model.energy, *code_box(train_codes, 2 * GRID_MARGIN), 2 * GRID_RESOLUTION)
    lap("quadrature")
    importance = importance_log_z(model.energy, train_codes, IS_SAMPLES, seed=seed)
    lap("importance_sampling")

    results: dict = {}
    settings = sample_settings or SampleSettings(num_chains=num_samples, seed=seed)
    chains = sample_chains(model, settings, train_codes)
    lap("sampling")
    results["ebm"] = {"test_nll_nats": model.energy(test_codes).double().mean().item() + fine.log_z,
                      **image_metrics(classifier, decode_binary(model, chains.state.position), reference)}
    lap("ebm_metrics")
    for name, components in BASELINES.items():
        gmm = GaussianMixture(components, covariance_type="full", random_state=seed).fit(train_codes.double().numpy())
        codes = torch.from_numpy(gmm.sample(num_samples)[0]).float()
        results[name] = {"test_nll_nats": float(-gmm.score(test_codes.double().numpy())),
                         **image_metrics(classifier, decode_binary(model, codes), reference)}
        lap(name)
    results["reconstruction"] = {"test_nll_nats": None, **image_metrics(classifier, decode_binary(model, test_codes[:num_samples]), reference)}
    subset = torch.from_numpy(np.random.default_rng(seed).choice(len(train_x), num_samples, replace=False))
    results["data"] = {"test_nll_nats": None, **image_metrics(classifier, train_x[subset], reference)}
    lap("reference_metrics")

    other = contrasting_sampler(settings.sampler)
    other_chains = sample_chains(model, SampleSettings(**{**settings.as_dict(), "sampler": other}), train_codes)
    results["diagnostics"] = {settings.sampler.lower(): sampler_diagnostics(chains, fine),
                              other: sampler_diagnostics(other_chains, fine)}
    lap("diagnostics")
    results["log_z"] = {"quadrature": coarse.summary(), "quadrature_check": fine.summary(),
                        "importance": importance.summary(), "used_for_nll": "quadrature_check"}
    results["settings"] = {
        "num_samples": num_samples, "seed": seed, "sample_settings": settings.as_dict(),
        "grid_resolution": GRID_RESOLUTION, "grid_margin": GRID_MARGIN, "importance_samples": IS_SAMPLES,
        "baselines": {name: f"sklearn GaussianMixture({k}, covariance_type='full', random_state={seed})" for name, k in BASELINES.items()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, "scikit-learn": sklearn.__version__},
    }
    results["timings_s"] = timings
    results["wall_time_s"] = round(time.perf_counter() - start, 2)
    return results


def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def report_markdown(results: dict) -> str:
    """A human-readable summary of `evaluate`'s results."""
    rows = [
        "| model | test NLL (nats/code) | FID ↓ | IS ↑ | class entropy (bits) | min class share | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("ebm", *BASELINES, "reconstruction", "data"):
        r = results[name]
        rows.append(f"| {name} | {_fmt(r['test_nll_nats'])} | {_fmt(r['fid'], 2)} | {_fmt(r['inception_score'], 2)} | "
                    f"{_fmt(r['class_entropy_bits'])} | {_fmt(r['class_min_share'])} | {_fmt(r['precision'])} | {_fmt(r['recall'])} |")
    lz = results["log_z"]
    q, qc, imp = lz["quadrature"], lz["quadrature_check"], lz["importance"]
    lines = [
        "# Evaluation", "",
        (f"{results['settings']['num_samples']} images per model, seed {results['settings']['seed']}. "
         "NLL is over standardized latent codes for every model; `reconstruction` (decoded test codes) "
         "shows what the decoder itself allows, `data` (training images) the floor of the metrics."), "",
        *rows, "",
        "## log Z", "",
        f"- grid {q['resolution']}^4: {q['log_z']:.4f} (edge mass {q['edge_mass']:.1e}, {q['seconds']:.1f} s)",
        f"- grid {qc['resolution']}^4, wider box: {qc['log_z']:.4f} (edge mass {qc['edge_mass']:.1e}, {qc['seconds']:.1f} s) — used for the NLL",
        (f"- importance sampling: {imp['log_z']:.4f} ± {imp['standard_error']:.4f} "
         f"({imp['num_samples']} draws, weight ESS {imp['effective_sample_size']:.0f})"), "",
        "## Samplers", "",
        "| sampler | acceptance | R-hat energy | ESS energy | max R-hat coords | min ESS coords | marginal W1 per dim | W1 noise level |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, d in results["diagnostics"].items():
        w1 = ", ".join(f"{v:.3f}" for v in d["marginal_w1"])
        lines.append(
            f"| {name} | {d['mean_acceptance']:.3f} | {_fmt(d.get('energy_rhat'))} | {_fmt(d.get('energy_ess'), 0)} | "
            f"{_fmt(max(d['coord_rhat']) if 'coord_rhat' in d else None)} | {_fmt(min(d['coord_ess']) if 'coord_ess' in d else None, 0)} | "
            f"{w1} | {np.mean(d['marginal_w1_noise']):.3f} |"
        )
    step = results["settings"]["sample_settings"]
    lines += ["", (f"Both samplers: ε = {step['step_size']}, {step['num_steps']} steps from {step['start']}; "
                   "R-hat and ESS over the second half of the chains."), "",
              f"Wall time {results['wall_time_s']:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in results["timings_s"].items()), ""]
    return "\n".join(lines)


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS, help="model weights to evaluate")
    p.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER, help="classifier weights for the image metrics")
    p.add_argument("--samples", type=int, default=10_000, help="images per model (and chains for the EBM)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None, help="dataset root (default $EBM_DATA_DIR or data/)")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where evaluation.json and evaluation.md go")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the work is many small tensor ops, and on a shared "
                        "machine extra threads mostly wait for each other: measured 3-8x slower with 2)")


def run_evaluate(args: argparse.Namespace) -> dict:
    """Evaluate, print the Markdown report, write it with the JSON results into --out-dir."""
    if args.threads < 1:
        raise SystemExit(f"error: --threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    try:
        model, _ = load_model(args.weights)
        classifier, classifier_meta = load_classifier(args.classifier)
        results = evaluate(model, classifier, args.data_dir, args.samples, args.seed,
                           log=lambda message: print(message, flush=True))
    except (WeightsError, DatasetError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    results["settings"]["threads"] = args.threads
    results["settings"]["weights"] = str(args.weights)
    results["settings"]["classifier"] = str(args.classifier)
    results["settings"]["classifier_test_accuracy"] = classifier_meta.get("test_accuracy")
    report = report_markdown(results)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "evaluation.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out_dir / "evaluation.md").write_text(report)
    print(report)
    print(f"wrote {args.out_dir / 'evaluation.json'} and {args.out_dir / 'evaluation.md'}")
    return results
