"""What a page shows of a sampling run, computed without Streamlit.

`sample_view` runs the chains (through `ebm.generate.sample_chains`, the shared entry point)
and turns the result into plain data: GIF and PNG bytes, thinned energy traces and acceptance.
Everything in a `SampleView` is bytes, numbers or numpy arrays, so a web cache can pickle it
and a test can inspect it.

While it runs, `sample_view` can `publish` a `LiveFrame` (the shown chains decoded where they are,
and the energies so far) at most every `LIVE_INTERVAL` seconds: a page shows those as the run goes.
Decoding 64 chains and one small PNG takes about 5 ms, so publishing costs the run about 1% of its
speed (`python -m benchmarks.live`), and the chains are the same with or without it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .generate import SampleSettings, chain_frames, decode_binary, sample_chains
from .images import gif_bytes, image_grid, png_bytes
from .limits import MAX_GIF_CHAINS, MAX_GIF_FRAMES, check_request_size, energy_step_macs, frame_indices
from .models import LatentEBM
from .samplers import ChainResult, ChainState, EnergyAndGrad, Traces, build_sampler, run_chains
from .scheduler import Cancelled
from .threads import sync_torch_threads

MAX_TRACE_POINTS = 500
"""Points per energy trace; longer runs are thinned (the mean over chains is kept at each point)."""

TRACE_CHAINS = 16
"""Chains whose own energy trace is drawn (the mean is over all of them)."""

LIVE_INTERVAL = 0.3
"""Seconds between two `LiveFrame`s of a running sample: often enough to watch, rare enough to cost nothing."""

LIVE_TRACE_POINTS = 200
"""Points per energy trace in a `LiveFrame` (a quick chart, redrawn with every frame)."""


@dataclass
class SampleView:
    """A sampling run, ready to show."""

    settings: dict
    num_chains: int
    steps_done: int
    gif: bytes  # animation of the first `gif_chains` chains over the recorded steps
    gif_chains: int
    gif_frames: int
    png: bytes  # final grid of every chain, scale 2
    preview_png: bytes  # final grid of the animated chains only, scale 2: readable when there are many
    final_codes: np.ndarray  # (chains, d) standardized codes after the last step
    trace_steps: np.ndarray  # (T,) step numbers of the thinned traces
    energy_traces: np.ndarray  # (T, trace_chains) energy of the first chains
    energy_mean: np.ndarray  # (T,) mean energy over all chains
    acceptance_mean: np.ndarray  # (T,) mean acceptance probability over all chains
    mean_acceptance: float  # over every step and chain
    record_steps: list[int]  # step of each recorded position
    paths: np.ndarray  # (records, path_chains, d) recorded positions of the first chains


def render_samples(
    model: LatentEBM,
    result: ChainResult,
    settings: SampleSettings,
    gif_chains: int = MAX_GIF_CHAINS,
    max_frames: int = MAX_GIF_FRAMES,
    trace_chains: int = TRACE_CHAINS,
    path_chains: int = 16,
) -> SampleView:
    """Turn a `ChainResult` into GIF/PNG bytes and thinned traces."""
    chains = result.state.position.shape[0]
    shown = min(gif_chains, chains)
    frames_idx = frame_indices(len(result.trajectory), max_frames)
    frames = chain_frames(model, result.trajectory[frames_idx, :shown], scale=1)  # the browser scales it (app.py)
    final = decode_binary(model, result.state.position)
    png = png_bytes(image_grid(final, ncols=math.ceil(math.sqrt(chains)), scale=2))
    preview = png if shown == chains else png_bytes(
        image_grid(final[:shown], ncols=math.ceil(math.sqrt(shown)), scale=2))
    steps = result.energies.shape[0]
    idx = np.asarray(frame_indices(steps, MAX_TRACE_POINTS))
    energies = result.energies.numpy()
    acceptance = result.acceptance.numpy()
    return SampleView(
        settings=settings.as_dict(),
        num_chains=chains,
        steps_done=steps,
        gif=gif_bytes(frames),
        gif_chains=shown,
        gif_frames=len(frames),
        png=png,
        preview_png=preview,
        final_codes=result.state.position.numpy().copy(),
        trace_steps=idx + 1,
        energy_traces=energies[idx, : min(trace_chains, chains)].copy(),
        energy_mean=energies.mean(1)[idx],
        acceptance_mean=acceptance.mean(1)[idx],
        mean_acceptance=float(acceptance.mean()) if steps else float("nan"),
        record_steps=list(result.record_steps),
        paths=result.trajectory[:, : min(path_chains, chains)].numpy().copy(),
    )


@dataclass(frozen=True)
class LiveFrame:
    """A running sample as its watchers see it: the shown chains decoded where they are now, and the energies so far."""

    steps_done: int
    num_steps: int
    num_chains: int
    shown: int  # chains in the grid: the first ones, as in the final animation
    png: bytes  # their digits at `steps_done`, one pixel per pixel (the browser scales it)
    trace_steps: np.ndarray  # (T,) step numbers, thinned to LIVE_TRACE_POINTS
    energy_traces: np.ndarray  # (T, trace_chains) energy of the first chains
    energy_mean: np.ndarray  # (T,) mean energy over all chains


class _LiveRecorder:
    """`sample_chains`' watch: keeps each block's energies (the mean and the first chains') and, at most every
    `interval` seconds, decodes the shown chains into a `LiveFrame` for `publish`. Never at the last block:
    the finished view follows at once."""

    def __init__(self, model: LatentEBM, settings: SampleSettings, publish: Callable[[LiveFrame], None],
                 interval: float, shown: int, trace_chains: int):
        self.model, self.settings, self.publish, self.interval = model, settings, publish, interval
        self.shown, self.trace_chains = shown, trace_chains
        self.means: list[torch.Tensor] = []
        self.traces: list[torch.Tensor] = []
        self.steps_done = 0
        self.last = time.perf_counter()  # a run shorter than `interval` publishes nothing

    def __call__(self, state: ChainState, traces: Traces) -> None:
        energies = traces.energies
        self.means.append(energies.mean(1))
        self.traces.append(energies[:, : self.trace_chains].clone())  # not a view: the block's arrays can go
        self.steps_done += len(energies)
        if self.steps_done < self.settings.num_steps and time.perf_counter() - self.last >= self.interval:
            self.publish(self.frame(state.position))
            self.last = time.perf_counter()

    def frame(self, position: torch.Tensor) -> LiveFrame:
        digits = decode_binary(self.model, position[: self.shown])
        idx = frame_indices(self.steps_done, LIVE_TRACE_POINTS)
        return LiveFrame(
            steps_done=self.steps_done, num_steps=self.settings.num_steps, num_chains=self.settings.num_chains,
            shown=self.shown, png=png_bytes(image_grid(digits, ncols=math.ceil(math.sqrt(self.shown)))),
            trace_steps=np.asarray(idx) + 1, energy_traces=torch.cat(self.traces)[idx].numpy(),
            energy_mean=torch.cat(self.means)[idx].numpy())


def sample_view(
    model: LatentEBM,
    settings: SampleSettings,
    data_codes: torch.Tensor | None = None,
    should_stop: Callable[[int], bool] | None = None,
    publish: Callable[[LiveFrame], None] | None = None,
    live_interval: float = LIVE_INTERVAL,
    energy: EnergyAndGrad | None = None,
) -> SampleView:
    """Check the request against the app's caps, run the chains, render the result.

    `should_stop(steps_done)` is called after every block of steps; when it returns True the run
    ends there and `ebm.scheduler.Cancelled` is raised, with nothing rendered. `publish`, when given,
    gets a `LiveFrame` at most every `live_interval` seconds while the chains run; the chains are
    the same with or without it. `energy` replaces the model's prior (a sum of energies: the
    Playground's runs). Raises `ebm.limits.RequestTooLarge` or ValueError for a request that cannot run.
    """
    check_request_size(settings.num_chains, settings.num_steps,
                       energy_step_macs(model.energy.config) * settings.gradients_per_step())
    sync_torch_threads()  # callers are often threads other than the one that configured torch
    stopped = []

    def callback(step: int) -> bool:
        if should_stop is not None and should_stop(step):
            stopped.append(step)
            return True
        return False

    watch = None if publish is None else _LiveRecorder(
        model, settings, publish, live_interval, min(MAX_GIF_CHAINS, settings.num_chains), TRACE_CHAINS)
    result = sample_chains(model, settings, data_codes, callback=callback, watch=watch, energy=energy)
    if stopped:
        raise Cancelled(f"sampling stopped at step {stopped[0]} of {settings.num_steps}")
    return render_samples(model, result, settings)


@dataclass(frozen=True)
class BirthSettings:
    """The Home page's animation: a few chains started far out, where codes decode to smudges, settling into digits."""

    num_chains: int = 16  # a 4 x 4 grid: each digit big enough to follow
    start_scale: float = 12.0  # starting codes ~ N(0, start_scale^2 I), far from the data (std 1): energy ~ 240
    step_size: float = 0.18  # small MALA steps (~97% accepted): each frame differs a little from the last
    num_steps: int = 300  # enough for the energy to fall to the data's level (~0)
    record_every: int = 3  # 101 frames, 8 s at 80 ms each
    seed: int = 3


@dataclass
class BirthView:
    """The animation and the energy it follows."""

    gif: bytes  # decoded pixel probabilities (gray), one frame per record
    record_steps: list[int]
    energies: np.ndarray  # (records, chains) energy at each recorded position
    mean_acceptance: float


def birth_view(model: LatentEBM, settings: BirthSettings = BirthSettings(),
               should_stop: Callable[[int], bool] | None = None) -> BirthView:
    """Run `settings`' chains from far out and animate them, decoded as probabilities: blur where the
    decoder is unsure, sharp strokes once a chain has reached a digit. Raises `Cancelled` like `sample_view`."""
    sync_torch_threads()
    generator = torch.Generator().manual_seed(settings.seed)
    start = settings.start_scale * torch.randn(settings.num_chains, model.latent_dim, generator=generator)
    sampler = build_sampler("mala", model.sampling_energy(), settings.step_size, generator)
    result = run_chains(sampler, sampler.init(start), settings.num_steps, settings.record_every, should_stop)
    if result.energies.shape[0] < settings.num_steps:
        raise Cancelled(f"stopped after {result.energies.shape[0]} of {settings.num_steps} steps")
    records, chains, d = result.trajectory.shape
    with torch.no_grad():
        codes = result.trajectory.reshape(-1, d)
        energies = model.energy(codes).reshape(records, chains).numpy()
        probabilities = model.decode(codes).reshape(records, chains, -1)
    ncols = math.ceil(math.sqrt(chains))
    frames = [image_grid(p, ncols=ncols) for p in probabilities]
    return BirthView(gif_bytes(frames), list(result.record_steps), energies, float(result.acceptance.mean()))
