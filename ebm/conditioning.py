"""Class-conditional sampling as a product of experts: the prior times a latent classifier's p(A | z)^λ.

    E_A(z) = E(z) - λ log p(A | z),   log p(A | z) = log Σ_{y ∈ A} p(y | z)

A = the allowed classes: the chosen digits ("3,8" is 3 OR 8), or all ten, minus the excluded ones (NOT).
p(y | z) is a small smooth MLP on the model's standardized codes, trained in seconds on the codes of
the training digits; it belongs to one model (its codes mean nothing to another), so its file records
a fingerprint of the model's tensors and refuses to load for any other. λ = 0, or A = all classes,
is the prior itself (the model's compiled energy), so those samples equal unconditional ones bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import Kind, WeightsError, artifact_bytes, check_weights_path, read_artifact, write_atomically
from .classifier import fit_classes
from .energies import POOL_SIZE, autograd_energy, posterior_starts, sample_posterior, summed
from .generate import SampleSettings, sample_chains
from .models import MAX_WIDTH, LatentEBM
from .samplers import ChainResult, EnergyAndGrad
from .validation import Settings, setting

NUM_CLASSES = 10
LATENT_CLASSIFIER = Kind("mnist-ebm-latent-classifier/1", "a latent classifier file",
                         "latent classifier {name} does not exist; make it with "
                         "`python -m ebm train-latent-classifier --weights <the model's weights>`")
DEFAULT_CLASS_WEIGHT = 8.0
"""λ, measured on the shipped model (`sample_classes`, MALA defaults, 1,000 samples per digit, seed 0): the
image classifier's least share of samples in the asked digit is 0.84 at λ = 2, 0.90 at 3, 0.952 at 5 and
0.972 at 8 (the digit 8 each time); 8 leaves a margin over 95% (the latent classifier reads 90.5% of test codes
right, so p(y | z) has to be sharpened to make the decoded digits unambiguous)."""


@dataclass
class LatentClassifierConfig(Settings):
    """Shape of the latent classifier d -> hidden -> hidden -> classes (SiLU: smooth, so its gradient is)."""

    latent_dim: int = setting(4, low=1, high=MAX_WIDTH)
    hidden_dim: int = setting(128, low=1, high=MAX_WIDTH)
    num_classes: int = setting(NUM_CLASSES, low=2, high=MAX_WIDTH)


class LatentClassifier(nn.Module):
    """p(y | z) on standardized codes: an MLP with SiLU activations returning class logits."""

    def __init__(self, config: LatentClassifierConfig):
        super().__init__()
        self.config = config
        d, h = config.latent_dim, config.hidden_dim
        self.net = nn.Sequential(nn.Linear(d, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(),
                                 nn.Linear(h, config.num_classes))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, d) standardized codes -> (N, classes) logits."""
        return self.net(codes)

    def log_prob(self, codes: torch.Tensor, allowed: tuple[int, ...]) -> torch.Tensor:
        """(N,) log p(A | z) = log Σ_{y ∈ A} p(y | z), differentiable."""
        return torch.logsumexp(torch.log_softmax(self(codes), -1)[:, list(allowed)], -1)


def model_fingerprint(model: LatentEBM) -> str:
    """sha256 over the model's tensors (names, shapes and bytes, in state_dict order): what a latent classifier
    was trained for."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


def latent_classifier_path(weights_path: str | Path) -> Path:
    """Where a model's latent classifier lives: beside it, `mnist_d4.safetensors` -> `mnist_d4.classes.safetensors`."""
    path = Path(weights_path)
    return path.with_name(path.name.removesuffix(".safetensors") + ".classes.safetensors")


def train_latent_classifier(model: LatentEBM, images: torch.Tensor, labels: torch.Tensor, epochs: int = 10,
                            batch_size: int = 256, lr: float = 3e-3, seed: int = 0) -> LatentClassifier:
    """Cross-entropy over the model's codes of `images` (`ebm.classifier.fit_classes`); deterministic for a given
    seed (one thread)."""
    codes = torch.cat([model.encode(chunk) for chunk in images.split(8192)])
    torch.manual_seed(seed)
    classifier = LatentClassifier(LatentClassifierConfig(latent_dim=model.latent_dim))
    return fit_classes(classifier, codes, labels, epochs, batch_size, lr, seed)


@torch.no_grad()
def latent_accuracy(classifier: LatentClassifier, model: LatentEBM, images: torch.Tensor,
                    labels: torch.Tensor) -> float:
    """Fraction of `images` whose code the latent classifier labels right."""
    return (classifier(model.encode(images)).argmax(-1) == labels).float().mean().item()


def save_latent_classifier(classifier: LatentClassifier, model: LatentEBM, path: str | Path,
                           extra: dict | None = None) -> Path:
    """Write atomically, with the fingerprint of `model` (the shipped folder needs EBM_ALLOW_SHIPPED_WRITE=1)."""
    metadata = {"config": json.dumps(asdict(classifier.config)), "model_sha256": model_fingerprint(model),
                "extra": json.dumps(extra or {})}
    return write_atomically(check_weights_path(path), artifact_bytes(classifier, LATENT_CLASSIFIER, metadata))


def load_latent_classifier(path: str | Path, model: LatentEBM) -> tuple[LatentClassifier, dict]:
    """(classifier, extra metadata) from `path`; WeightsError when it was trained for another model."""
    classifier, header = read_artifact(
        path, LATENT_CLASSIFIER, lambda h: LatentClassifier(h.config("config", LatentClassifierConfig)))
    if header.metadata.get("model_sha256") != model_fingerprint(model):
        raise WeightsError(f"{header.name} was trained for another model (its model_sha256 does not match these "
                           "weights'); train one for them with `python -m ebm train-latent-classifier`")
    return classifier, header.extra


def parse_digits(name: str, value) -> tuple[int, ...]:
    """Digits from "3,8" (or a sequence of ints) as a sorted tuple; ValueError for non-digits, repeats."""
    if isinstance(value, str):
        words = [w.strip() for w in value.split(",")] if value.strip() else []
        if any(not w.isdecimal() for w in words):
            raise ValueError(f"{name} must be digits 0-9 separated by commas, like 3,8; got {value!r}")
        value = [int(w) for w in words]
    try:
        digits = list(value)
    except TypeError:
        raise ValueError(f"{name} must be digits 0-9, like 3,8; got {value!r}") from None
    if any(isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < NUM_CLASSES for d in digits):
        raise ValueError(f"{name} must be digits 0-9; got {value!r}")
    if len(set(digits)) != len(digits):
        raise ValueError(f"{name} lists a digit twice: {value!r}")
    return tuple(sorted(digits))


@dataclass(frozen=True)
class ClassSettings(Settings):
    """Which digits to draw: `digits` (any of them: OR; none = all ten) minus `exclude` (NOT), at class weight λ.

    Digits are given as "3,8" or a sequence; checked when made.
    """

    digits: tuple = ()
    exclude: tuple = ()
    class_weight: float = setting(DEFAULT_CLASS_WEIGHT, low=0.0, high=100.0, label="class weight λ",
                                  help="how strongly the latent classifier pulls: E(z) - λ log p(A | z)")

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "digits", parse_digits("digits", self.digits))
        object.__setattr__(self, "exclude", parse_digits("excluded digits", self.exclude))
        if not self.allowed:
            raise ValueError(f"no digit is left: {', '.join(map(str, self.digits or range(NUM_CLASSES)))} "
                             "are all excluded")

    @property
    def allowed(self) -> tuple[int, ...]:
        """A: the chosen digits (or all), minus the excluded ones."""
        return tuple(d for d in (self.digits or range(NUM_CLASSES)) if d not in self.exclude)

    @property
    def conditional(self) -> bool:
        """Whether this changes the prior at all (some class is not allowed and λ > 0)."""
        return self.class_weight > 0 and len(self.allowed) < NUM_CLASSES


def class_energy(model: LatentEBM, classifier: LatentClassifier, settings: ClassSettings) -> EnergyAndGrad:
    """E_A(z) = E(z) - λ log p(A | z); the prior's own compiled energy when `settings` conditions on nothing."""
    prior = model.sampling_energy()
    if not settings.conditional:
        return prior
    allowed, weight = settings.allowed, settings.class_weight
    return summed(prior, autograd_energy(lambda z: -weight * classifier.log_prob(z, allowed)))


@torch.no_grad()
def sample_classes(model: LatentEBM, classifier: LatentClassifier, classes: ClassSettings,
                   settings: SampleSettings, pool_size: int = POOL_SIZE,
                   callback: Callable[[int], bool | None] | None = None) -> tuple[ChainResult, float]:
    """(chains on `class_energy`, the ε they ran at); deterministic per `settings.seed`.

    Conditioning on nothing is `sample_chains` itself. Otherwise the target is sharper than the prior
    and parts of the latent space are all but forbidden, so the chains start from
    `ebm.energies.posterior_starts` (a pool of N(0, I) codes resampled by exp(-E_A); `settings.start` is
    unused) and `ebm.energies.sample_posterior` picks ε by a warm-up from `settings.step_size`.
    From N(0, I) noise at the prior's ε the chains stall in the wrong digits: at λ = 3 only 54% of
    zeros came out zeros, and with noise starts and a warm-up still only 75% of twos (1,000 samples).
    `callback` is `run_chains`'s (progress; True stops the chains there).
    """
    if not classes.conditional:
        return sample_chains(model, settings, callback=callback), settings.step_size
    generator = torch.Generator().manual_seed(int(settings.seed))
    energy = class_energy(model, classifier, classes)
    pool = torch.randn(pool_size, model.latent_dim, generator=generator)
    start = posterior_starts(-energy(pool)[0][None], pool, settings.num_chains, generator)
    return sample_posterior(energy, start, settings, generator, callback)


@torch.no_grad()
def class_shares(image_classifier, images: torch.Tensor, allowed: tuple[int, ...]) -> dict:
    """What the image classifier (`ebm.classifier`) reads in `images`: the share in `allowed` and a histogram."""
    predicted = image_classifier.predict(images)[1].argmax(-1)
    counts = torch.bincount(predicted, minlength=NUM_CLASSES)
    return {"allowed": list(allowed), "share_in_allowed": round(torch.isin(predicted, torch.tensor(allowed))
                                                                .float().mean().item(), 4),
            "histogram": {str(d): int(c) for d, c in enumerate(counts.tolist())}}
