"""How good is the model? Likelihood of test codes, sample quality, baselines, sampler checks.

`evaluate` runs it all and returns a JSON-ready dict; `report_markdown` writes that up.
Likelihood: the density over standardized codes is exp(-E(c)) / Z. In 4-D, log Z can simply be
integrated on a grid (`ebm.quadrature`), checked once at double resolution in a wider box, and
cross-checked by importance sampling (`ebm.importance`). Test NLL = mean E(test codes) + log Z,
in nats per code, comparable with Gaussian, GMM and normalizing-flow (`ebm.flow`) baselines fitted to the
same codes.

Sample quality (`ebm.metrics`): FID, an Inception-score analogue, the class histogram and kNN
precision/recall on the outputs of a classifier of the model's dataset. Decoded test codes (`reconstruction`) show
what the decoder itself allows, a rough ceiling for any prior over its codes; training images
(`data`) give the floor of the metrics. The command line (`python -m ebm evaluate`) is in `ebm.cli`.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
import sklearn
import torch
import zuko
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

from .ais import annealed_log_z
from .classifier import MnistClassifier
from .data import DatasetError, load_binarized
from .diagnostics import effective_sample_size, marginal_w1, marginal_w1_noise, split_rhat
from .energies import inpainting_accuracy
from .flow import FlowSettings, fit_flow, flow_nll, sample_flow
from .generate import SampleSettings, decode_binary, sample_chains
from .importance import IS_SAMPLES, importance_log_z
from .metrics import Reference, image_metrics
from .quadrature import GRID_RESOLUTION, GridQuadrature, code_box, grid_quadrature
from .samplers import ChainResult, contrasting_sampler
from .scoring import IS_DRAWS, OUTLIER_PERCENTILE, score_images

DEFAULT_OUT_DIR = Path("runs/eval")
BASELINES = {"gaussian": 1, "gmm10": 10, "gmm50": 50}  # name -> number of full-covariance components
GRID_MARGIN = 1.5  # box = range of the training codes +- margin (standardized units); check: 2x


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
# out-of-distribution detection

OOD_IMAGES = 2000  # per set (the model's test images, the other dataset's, noise): ~15 s each on one core
OOD_SCORES = ("energy", "log_p_z", "log_p_x")  # `ebm.scoring.Scores` fields, higher = more like the data but energy


OOD_OTHER = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}  # the other dataset: a model's outliers


def ood_detection(model, test_x: torch.Tensor, log_z: float, data_dir=None, num_images: int = OOD_IMAGES,
                  seed: int = 0, dataset: str = "mnist") -> dict:
    """AUROC of each score (`ebm.scoring`) for telling the model's test images from the other dataset's
    (`OOD_OTHER`: Fashion-MNIST for an MNIST model) and from noise.

    Random subsets of `num_images` of each; noise is Bernoulli pixels at the test images' mean ink density.
    AUROC 1 means every test image scores above every outlier, 0.5 chance; energy is negated (low = inlier).
    `flagged_share` is the share of outliers below the `OUTLIER_PERCENTILE` of the test images' log p(x),
    the verdict's threshold. A set that cannot be loaded gets an `error` instead of numbers.
    """
    gen = torch.Generator().manual_seed(seed)
    outliers: dict = {"noise": (torch.rand(num_images, 784, generator=gen) < test_x.mean()).float()}
    other = OOD_OTHER[dataset]
    try:
        images, _ = load_binarized(other, "test", data_dir)
        outliers = {other: images[torch.randperm(len(images), generator=gen)[:num_images]], **outliers}
    except DatasetError as e:
        outliers = {other: f"{other} could not be loaded: {e}", **outliers}
    inliers = score_images(model, test_x[torch.randperm(len(test_x), generator=gen)[:num_images]], log_z, seed=seed)
    threshold = np.percentile(inliers.log_p_x, OUTLIER_PERCENTILE)
    out: dict = {"num_images": len(inliers.energy), "draws": IS_DRAWS, "outlier_percentile": OUTLIER_PERCENTILE,
                 "inliers": {"dataset": dataset, "median_log_p_x": float(np.median(inliers.log_p_x)),
                             "median_standard_error": float(np.median(inliers.log_p_x_standard_error)),
                             "median_ess_share": float(np.median(inliers.effective_sample_size)) / IS_DRAWS}}
    for name, images in outliers.items():
        if isinstance(images, str):
            out[name] = {"error": images}
            continue
        scores = score_images(model, images, log_z, seed=seed)
        labels = np.r_[np.ones(len(inliers.energy)), np.zeros(len(images))]
        out[name] = {"auroc": {key: float(roc_auc_score(labels, (-1 if key == "energy" else 1)
                                                        * np.r_[getattr(inliers, key), getattr(scores, key)]))
                               for key in OOD_SCORES},
                     "flagged_share": float(np.mean(scores.log_p_x < threshold)),
                     "median_log_p_x": float(np.median(scores.log_p_x))}
    return out


# -----------------------------------------------------------------------------
# inpainting

INPAINT_IMAGES = 1000  # the first test images, their bottom half hidden: ~16 s on one core
INPAINT_HIDDEN = "bottom"


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
    flow_settings: FlowSettings | None = None,
    log: Callable[[str], None] = lambda message: None,
    dataset: str = "mnist",
) -> dict:
    """Evaluate a LatentEBM against its baselines; returns a JSON-ready dict (see module doc).

    Samples: `sample_settings` (default: SampleSettings() with num_samples chains and `seed`);
    the other Langevin sampler (ULA for MALA) is also run with the same settings, for the
    diagnostics only, to show the bias of the unadjusted chain at that step size. The flow
    baseline is fitted with `flow_settings` (default: FlowSettings(), issue 11's recipe) and `seed`.
    `dataset` is the one the model was trained on, and `classifier`'s.
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
    train_x, _ = load_binarized(dataset, "train", data_dir)
    test_x, test_labels = load_binarized(dataset, "test", data_dir)
    train_codes, test_codes = _encode(model, train_x), _encode(model, test_x)
    reference = Reference.from_features(classifier.predict(test_x)[0].numpy())
    lap("data")

    coarse = grid_quadrature(model.energy, *code_box(train_codes, GRID_MARGIN), GRID_RESOLUTION)
    fine = grid_quadrature(model.energy, *code_box(train_codes, 2 * GRID_MARGIN), 2 * GRID_RESOLUTION)
    lap("quadrature")
    importance = importance_log_z(model.energy, train_codes, IS_SAMPLES, seed=seed)
    lap("importance_sampling")
    ais = annealed_log_z(model.sampling_energy(), model.latent_dim, generator=torch.Generator().manual_seed(seed))
    lap("annealed_importance_sampling")
    # Every estimate of log Z by name, as its summary(): the report lists them all. Grids show their
    # edge mass; any other estimate is random and has log_z, standard_error, num_samples and
    # effective_sample_size.
    log_z = {"quadrature": coarse.summary(), "quadrature_check": fine.summary(), "importance": importance.summary(),
             "ais": ais.summary()}

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
    flow_settings = flow_settings or FlowSettings()
    flow = fit_flow(train_codes, flow_settings, seed, log)
    codes = sample_flow(flow, num_samples, seed)
    results["flow"] = {"test_nll_nats": flow_nll(flow, test_codes),
                       **image_metrics(classifier, decode_binary(model, codes), reference)}
    lap("flow")
    reconstructions = decode_binary(model, test_codes[:num_samples])
    results["reconstruction"] = {"test_nll_nats": None, **image_metrics(classifier, reconstructions, reference)}
    subset = torch.from_numpy(np.random.default_rng(seed).choice(len(train_x), num_samples, replace=False))
    results["data"] = {"test_nll_nats": None, **image_metrics(classifier, train_x[subset], reference)}
    lap("reference_metrics")

    other = contrasting_sampler(settings.sampler)
    other_chains = sample_chains(model, SampleSettings(**{**settings.as_dict(), "sampler": other}), train_codes)
    results["diagnostics"] = {settings.sampler.lower(): sampler_diagnostics(chains, fine),
                              other: sampler_diagnostics(other_chains, fine)}
    lap("diagnostics")
    results["ood"] = ood_detection(model, test_x, fine.log_z, data_dir, OOD_IMAGES, seed, dataset)
    lap("ood")
    results["inpainting"] = inpainting_accuracy(model, classifier, test_x[:INPAINT_IMAGES],
                                                test_labels[:INPAINT_IMAGES], INPAINT_HIDDEN)
    lap("inpainting")
    results["log_z"] = {**log_z, "used_for_nll": "quadrature_check"}
    results["settings"] = {
        "dataset": dataset, "num_samples": num_samples, "seed": seed, "sample_settings": settings.as_dict(),
        "grid_resolution": GRID_RESOLUTION, "grid_margin": GRID_MARGIN, "importance_samples": IS_SAMPLES,
        "baselines": {name: f"sklearn GaussianMixture({k}, covariance_type='full', random_state={seed})"
                      for name, k in BASELINES.items()},
        "flow": {"library": f"zuko {zuko.__version__} flows.NSF", "seed": seed, **flow_settings.as_dict()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
                     "zuko": zuko.__version__},
    }
    results["timings_s"] = timings
    results["wall_time_s"] = round(time.perf_counter() - start, 2)
    return results


def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


# report names of the log Z estimates; others show by key
LOG_Z_LABELS = {"quadrature": "grid {resolution}^4", "quadrature_check": "grid {resolution}^4, wider box",
                "importance": "importance sampling",
                "ais": "annealed importance sampling, {num_temperatures} temperatures"}


def _log_z_lines(log_z: dict) -> list[str]:
    """One line per estimate of log Z: a grid with its edge mass, a random estimate with its error bar."""
    lines = []
    for name, e in log_z.items():
        if name == "used_for_nll":
            continue
        label = LOG_Z_LABELS.get(name, name).format(**e)
        if "edge_mass" in e:
            line = f"- {label}: {e['log_z']:.4f} (edge mass {e['edge_mass']:.1e}, {e['seconds']:.1f} s)"
        else:
            line = (f"- {label}: {e['log_z']:.4f} ± {e['standard_error']:.4f} "
                    f"({e['num_samples']} draws, weight ESS {e['effective_sample_size']:.0f})")
        lines.append(line + (" — used for the NLL" if name == log_z["used_for_nll"] else ""))
    return lines


def _ood_lines(ood: dict) -> list[str]:
    """The out-of-distribution section: AUROC of each score per outlier set, or why a set is missing."""
    n, pct, inliers = ood["num_images"], ood["outlier_percentile"], ood["inliers"]
    lines = [
        "## Out-of-distribution detection", "",
        (f"AUROC of each score for telling {n} {inliers['dataset']} test images from {n} images of each other set "
         "(random subsets; noise: Bernoulli pixels at the test images' mean ink density); 1 = every test image "
         "scores above every outlier, 0.5 = chance. Energy and log p(z) rank identically (log Z is a constant), so "
         "their AUROCs are equal by construction. log p(x), the image's likelihood under the whole model, by "
         f"importance sampling with {ood['draws']} draws per image (test images: median standard error "
         f"{inliers['median_standard_error']:.3f} nats, median weight ESS {inliers['median_ess_share']:.0%} of the "
         f"draws). Flagged: share below percentile {pct:g} of the test images' log p(x), the playground's "
         f"\"unlike anything in training\" threshold, which flags {pct:g}% of test images by construction."), "",
        "| images | AUROC energy | AUROC log p(z) | AUROC log p(x) | flagged | median log p(x) (nats) |",
        "|---|---|---|---|---|---|",
        f"| {inliers['dataset']} (in) | — | — | — | {pct / 100:.3f} | {inliers['median_log_p_x']:.1f} |",
    ]
    errors = []
    for name, r in ood.items():
        if isinstance(r, dict) and "error" in r:
            lines.append(f"| {name} | not loaded | — | — | — | — |")
            errors.append(f"- {name}: " + " ".join(r["error"].split()))
        elif isinstance(r, dict) and "auroc" in r:
            a = r["auroc"]
            lines.append(f"| {name} | {a['energy']:.3f} | {a['log_p_z']:.3f} | {a['log_p_x']:.3f} | "
                         f"{r['flagged_share']:.3f} | {r['median_log_p_x']:.1f} |")
    return [*lines, "", *errors, *([""] if errors else [])]


def _inpainting_lines(r: dict) -> list[str]:
    """The inpainting section: how often the classifier reads the true class in a completion, with its bounds."""
    return [
        "## Inpainting", "",
        (f"The first {r['images']} test images with their {r['hidden']} half hidden, one completion each from "
         f"p(z | visible pixels) (MALA, {r['settings']['num_steps']} steps at ε = {r['step_size']:.3g}, mean "
         f"acceptance {r['mean_acceptance']:.2f}); the share the image classifier reads as the true class. "
         "Ceiling: the autoencoder's reconstruction of the whole image; floor: the visible half alone."), "",
        "| completion | reconstruction (ceiling) | visible half only |", "|---|---|---|",
        f"| {r['inpainted']:.3f} | {r['reconstructed']:.3f} | {r['visible_only']:.3f} |", ""]


def report_markdown(results: dict) -> str:
    """A human-readable summary of `evaluate`'s results."""
    rows = [
        "| model | test NLL (nats/code) | FID ↓ | IS ↑ | class entropy (bits) | min class share | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("ebm", *BASELINES, "flow", "reconstruction", "data"):
        r = results[name]
        rows.append(f"| {name} | {_fmt(r['test_nll_nats'])} | {_fmt(r['fid'], 2)} | {_fmt(r['inception_score'], 2)} | "
                    f"{_fmt(r['class_entropy_bits'])} | {_fmt(r['class_min_share'])} | "
                    f"{_fmt(r['precision'])} | {_fmt(r['recall'])} |")
    lines = [
        "# Evaluation", "",
        (f"{results['settings']['num_samples']} images per model, seed {results['settings']['seed']}. "
         "NLL is over standardized latent codes for every model; `reconstruction` (decoded test codes) "
         "shows what the decoder itself allows, `data` (training images) the floor of the metrics."), "",
        *rows, "",
        "## log Z", "",
        *_log_z_lines(results["log_z"]), "",
        *_ood_lines(results["ood"]),
        *_inpainting_lines(results["inpainting"]),
        "## Samplers", "",
        "| sampler | acceptance | R-hat energy | ESS energy | max R-hat coords | min ESS coords "
        "| marginal W1 per dim | W1 noise level |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, d in results["diagnostics"].items():
        w1 = ", ".join(f"{v:.3f}" for v in d["marginal_w1"])
        lines.append(
            f"| {name} | {d['mean_acceptance']:.3f} | {_fmt(d.get('energy_rhat'))} | {_fmt(d.get('energy_ess'), 0)} | "
            f"{_fmt(max(d['coord_rhat']) if 'coord_rhat' in d else None)} | "
            f"{_fmt(min(d['coord_ess']) if 'coord_ess' in d else None, 0)} | "
            f"{w1} | {np.mean(d['marginal_w1_noise']):.3f} |"
        )
    step = results["settings"]["sample_settings"]
    lines += ["", (f"Both samplers: ε = {step['step_size']}, {step['num_steps']} steps from {step['start']}; "
                   "R-hat and ESS over the second half of the chains."), "",
              f"Wall time {results['wall_time_s']:.0f} s: "
              + ", ".join(f"{k} {v:.0f} s" for k, v in results["timings_s"].items()), ""]
    return "\n".join(lines)
