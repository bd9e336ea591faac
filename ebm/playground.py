"""What the Playground page shows of its three runs, computed without Streamlit: repair, inpaint, compose.

Each is a sum of energies sampled by MALA and rendered like a Sample page run:
- repair: the prior at a temperature, E(z)/T, every chain starting at the drawing's code;
- inpaint: the prior plus the visible pixels' Bernoulli likelihood, E(z) + NLL_visible(z) (`ebm.energies`);
- compose: the prior plus a latent classifier's energy, E(z) - λ log p(A | z) (`ebm.conditioning`).
Views are plain data (bytes, numbers, arrays), like `ebm.render.SampleView`, so a cache can keep them.
A `should_stop(steps_done)` that says True ends a run with `ebm.scheduler.Cancelled`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .conditioning import ClassSettings, LatentClassifier, class_shares, sample_classes
from .energies import INPAINTING, inpaint, tempered, visible_mask
from .generate import MAX_SEED, SampleSettings, decode_binary
from .images import gif_bytes, image_grid, png_bytes
from .limits import MAX_GIF_FRAMES, frame_indices
from .models import LatentEBM
from .render import LiveFrame, SampleView, render_samples, sample_view
from .samplers import ChainResult
from .scheduler import Cancelled
from .threads import sync_torch_threads
from .validation import Settings, setting

StopCheck = Callable[[int], bool] | None


REPAIR_STEP_SIZE = 0.1
"""ε of a repair: small steps, so the chains drift from the drawing into the nearest basin instead of jumping to
any digit. From the code of the first MNIST test digit (a 7), 16 chains of 50 steps at T = 0.5: 15 still read
as a 7 at ε = 0.1 (98% accepted), 6 at ε = 0.2 and none at the Sample page's 0.5 (`tests/test_playground.py`
checks the first)."""


@dataclass(frozen=True)
class RepairSettings(Settings):
    """Chains from one drawing's code on E(z)/T: at T = 1 a scribble drifts to a typical digit. Checked when made."""

    num_steps: int = setting(50, low=1, high=2000, label="steps", help="How far the chains go from the drawing")
    temperature: float = setting(0.5, low=0.1, high=5.0, label="temperature T",
                                 help="Below 1 the chains settle into the nearest basin; above 1 they wander off")
    num_chains: int = setting(16, low=1, high=64, label="chains", help="Each chain repairs the drawing its own way")
    seed: int = setting(0, low=0, high=MAX_SEED, label="seed")

    def sample_settings(self) -> SampleSettings:
        """The MALA run: from the drawing's code (`start="data"` with that one code), about 50 frames."""
        return SampleSettings(step_size=REPAIR_STEP_SIZE, num_steps=self.num_steps, num_chains=self.num_chains,
                              start="data", seed=self.seed, record_every=max(1, self.num_steps // 50))


def repair_view(model: LatentEBM, image: torch.Tensor, settings: RepairSettings, should_stop: StopCheck = None,
                publish: Callable[[LiveFrame], None] | None = None) -> SampleView:
    """MALA chains on E(z)/T, all from the code of the (784,) binary `image`; live frames to `publish`."""
    code = model.encode(image.reshape(1, -1))
    energy = tempered(model.sampling_energy(), settings.temperature)
    return sample_view(model, settings.sample_settings(), code, should_stop, publish, energy=energy)


def _finished(result: ChainResult, settings: SampleSettings) -> ChainResult:
    """The result of a run that went all the way; `Cancelled` for one that `should_stop` ended early."""
    if result.energies.shape[0] < settings.num_steps:
        raise Cancelled(f"stopped at step {result.energies.shape[0]} of {settings.num_steps}")
    return result


def _callback(should_stop: StopCheck) -> Callable[[int], bool]:
    return lambda step: bool(should_stop is not None and should_stop(step))


@dataclass
class InpaintView:
    """Completions of one image: the input with its hidden part marked, an animation and the final grid."""

    masked_png: bytes  # the input, hidden pixels grey
    gif: bytes  # every chain's completion over the recorded steps
    png: bytes  # the final completions, one per chain
    completions: torch.Tensor  # (chains, 784) binary: the final completions
    num_chains: int
    num_steps: int
    step_size: float  # ε the chains ran at (a warm-up picks it: the posterior is much sharper than the prior)
    mean_acceptance: float


HIDDEN_GREY = 0.5  # how the hidden pixels show in the masked input


def inpaint_view(model: LatentEBM, image: torch.Tensor, hidden: str, seed: int = 0,
                 settings: SampleSettings = INPAINTING, should_stop: StopCheck = None) -> InpaintView:
    """Sample the `hidden` part (a half's name, `ebm.energies.HIDDEN_HALVES`) of the (784,) binary `image`
    from p(z | visible pixels); each frame shows the visible pixels as given and the hidden ones decoded."""
    sync_torch_threads()
    visible = visible_mask(hidden)
    settings = SampleSettings(**{**settings.as_dict(), "seed": seed})
    done = inpaint(model, image, visible, settings, callback=_callback(should_stop))
    chains = _finished(done.result, settings)
    trajectory = chains.trajectory[frame_indices(len(chains.trajectory), MAX_GIF_FRAMES)]
    decoded = decode_binary(model, trajectory.reshape(-1, model.latent_dim)).reshape(len(trajectory), -1, 784)
    ncols = math.ceil(math.sqrt(settings.num_chains))
    masked = torch.where(visible, image, torch.full_like(image, HIDDEN_GREY))
    return InpaintView(
        masked_png=png_bytes(image_grid(masked.reshape(1, -1), ncols=1, pad=0)),
        gif=gif_bytes([image_grid(torch.where(visible, image, frame), ncols=ncols) for frame in decoded]),
        png=png_bytes(image_grid(done.images[0], ncols=ncols, scale=2)), completions=done.images[0],
        num_chains=settings.num_chains, num_steps=settings.num_steps, step_size=done.step_size,
        mean_acceptance=float(chains.acceptance.mean()))


@dataclass
class ComposeView:
    """A sample of the composed energy, and what the image classifier reads in it."""

    samples: SampleView
    step_size: float  # ε the chains ran at
    share_in_allowed: float  # of the samples, by the image classifier
    histogram: np.ndarray  # (10,) samples per class, by the image classifier


COMPOSE_SAMPLE = SampleSettings(num_chains=64)
"""Composed samples: the Sample page's defaults, 64 chains of 500 MALA steps."""


def compose_view(model: LatentEBM, latent_classifier: LatentClassifier, image_classifier, classes: ClassSettings,
                 seed: int = 0, should_stop: StopCheck = None) -> ComposeView:
    """MALA on E(z) - λ log p(A | z) (`ebm.conditioning.sample_classes`); the share of the samples in A."""
    sync_torch_threads()
    settings = SampleSettings(**{**COMPOSE_SAMPLE.as_dict(), "seed": seed})
    result, eps = sample_classes(model, latent_classifier, classes, settings, callback=_callback(should_stop))
    view = render_samples(model, _finished(result, settings), settings)
    shares = class_shares(image_classifier, decode_binary(model, result.state.position), classes.allowed)
    histogram = np.array([shares["histogram"][str(d)] for d in range(10)])
    return ComposeView(view, eps, shares["share_in_allowed"], histogram)
