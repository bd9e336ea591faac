"""How long a training would take on this server: a short timed run of its shapes, scaled by the cost model.

The cost model (`ebm.limits.stage_macs`) counts a training's multiply-adds; how many of them this
machine does per second depends on its cores, its BLAS and the matrices' shapes. So a miniature
of the training (a few autoencoder batches and a few stage-2 iterations of the configured widths,
batches cut to `CALIBRATION_BATCH`, on random images) runs through the real training code once
per shape and process (twice: the first run compiles and warms up), and each stage is estimated at its
miniature's pace. One calibration
runs at a time, its random numbers forked away from the process's.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time

import torch

from .limits import stage_macs
from .training import TrainConfig, build_model, train

CALIBRATION_BATCH = 256  # images or chains per batch in the miniature: the pace per multiply-add has levelled off
CALIBRATION_BATCHES = 3  # autoencoder batches timed
CALIBRATION_ITERATIONS = 3  # stage-2 iterations timed
CALIBRATION_STEPS = 20  # Langevin steps per iteration at most

_one_at_a_time = threading.Lock()


def miniature(cfg: TrainConfig) -> TrainConfig:
    """The config timed for `cfg`: its shapes, sampler and device, a few small batches and iterations."""
    return dataclasses.replace(
        cfg, ae_epochs=1, ae_batch_size=min(cfg.ae_batch_size, CALIBRATION_BATCH),
        ebm_iterations=CALIBRATION_ITERATIONS, ebm_batch_size=min(cfg.ebm_batch_size, CALIBRATION_BATCH),
        mcmc_steps=min(cfg.mcmc_steps, CALIBRATION_STEPS), ebm_train_images=None, negatives_every=0,
        ebm_likelihood_iterations=0)  # chain iterations: the likelihood ones cost less (and need a proposal fit)


@functools.lru_cache(maxsize=64)
def _paces(mini_fields: tuple) -> dict[str, float]:
    """Multiply-adds per second of each stage of the miniature with these fields (`dataclasses.astuple`)."""
    mini = TrainConfig(*mini_fields)
    train_images = CALIBRATION_BATCHES * mini.ae_batch_size
    with _one_at_a_time, torch.random.fork_rng(devices=[]):
        images = (torch.rand(train_images + 8, 784) < 0.2).float()
        for _ in range(2):  # the first run pays for compiling the kernel and first allocations: time the second
            seconds = _stage_cpu_seconds(train(build_model(mini), images[:train_images], images[train_images:], mini))
    return {stage: macs / max(seconds[stage], 1e-6) for stage, macs in stage_macs(mini, train_images).items()}


def _stage_cpu_seconds(events) -> dict[str, float]:
    """This thread's CPU seconds in each stage of a training (its native pools run one thread, in it).

    CPU time, not wall time: on a server the first visit's page load holds the GIL in Streamlit's
    own thread, and a wall clock put the default training at 14-29 min instead of 7."""
    seconds, mark = {}, time.thread_time()
    for ev in events:
        now = time.thread_time()
        seconds[ev.stage] = seconds.get(ev.stage, 0.0) + now - mark
        mark = now
    return seconds


def estimate_seconds(cfg: TrainConfig) -> float:
    """Seconds a training with `cfg` would take on this server, from its shapes' measured pace (cached)."""
    paces = _paces(dataclasses.astuple(miniature(cfg)))
    return sum(macs / paces[stage] for stage, macs in stage_macs(cfg).items())
