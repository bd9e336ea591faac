"""Comparing the samplers on one model: how fast each mixes, and how close it comes to the exact marginals.

Every registered sampler (`ebm.samplers.SAMPLERS`) runs through `ebm.generate.sample_chains` from the
same N(0, I) start with the same seed, step size and number of steps (so its chains are the Sample
page's for those settings). After a burn-in, per latent dim:
- bulk ESS and rank-normalized R-hat of the (chains, draws) draws, from arviz-stats. A sampler is as
  good as its worst dim, so a score gives the smallest ESS, and that per second of sampling (the wall
  clock of the chains alone, not of this arithmetic);
- the Wasserstein-1 distance of the pooled draws to the dim's exact marginal from the grid quadrature
  (`ebm.landscape.Marginals`), W1 = ∫ |F_draws - F_exact| dx (`ebm.diagnostics.marginal_w1`), next to
  the distance that ESS independent exact draws would have (`marginal_w1_noise`): a W1 well above
  that floor is the sampler's bias, not its noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from .diagnostics import marginal_w1, marginal_w1_noise
from .generate import MAX_SEED, SampleSettings, sample_chains
from .landscape import Marginals
from .limits import MAX_APP_CHAINS, MAX_APP_STEPS
from .models import LatentEBM
from .samplers import SAMPLERS, ChainResult
from .scheduler import Cancelled
from .threads import sync_torch_threads
from .validation import Settings, setting

MIN_DRAWS = 4  # ESS and R-hat split each chain in halves of at least two draws


@dataclass(frozen=True)
class CompareSettings(Settings):
    """One comparison: every sampler with these settings. Checked when made."""

    step_size: float = setting(0.5, low=0.0, low_open=True, label="step size ε")
    num_chains: int = setting(256, low=2, high=MAX_APP_CHAINS, label="number of chains")
    num_steps: int = setting(500, low=MIN_DRAWS + 1, high=MAX_APP_STEPS, label="number of steps K")
    burn_in: int = setting(100, low=0, high=MAX_APP_STEPS, label="burn-in steps",
                           help="Steps dropped from the start of every chain before scoring it")
    seed: int = setting(0, low=0, high=MAX_SEED, label="seed")

    def __post_init__(self):
        super().__post_init__()
        if self.num_steps - self.burn_in < MIN_DRAWS:
            raise ValueError(f"burn-in steps ({self.burn_in}) must leave at least {MIN_DRAWS} of the "
                             f"{self.num_steps} steps to score")

    @property
    def num_draws(self) -> int:
        """Steps kept per chain after the burn-in."""
        return self.num_steps - self.burn_in

    def sample_settings(self, sampler: str) -> SampleSettings:
        """What the Sample page would run for this sampler: noise start, every step recorded."""
        return SampleSettings(sampler=sampler, step_size=self.step_size, num_steps=self.num_steps,
                              num_chains=self.num_chains, record_every=1, start="noise", seed=self.seed)


@dataclass(frozen=True)
class SamplerScore:
    """How one sampler did, per latent dim and overall."""

    sampler: str
    seconds: float  # wall clock of its chains
    ess: np.ndarray  # (d,) bulk effective sample size of the draws
    rhat: np.ndarray  # (d,) rank-normalized split R-hat (about 1 when the chains agree)
    w1: np.ndarray  # (d,) Wasserstein-1 distance of the pooled draws to the exact marginal
    w1_floor: np.ndarray  # (d,) what ess[k] independent exact draws would give
    acceptance: float  # mean acceptance probability over every step and chain (1 for ULA)
    histogram: np.ndarray  # (d, n) density of the draws on the marginals' grid cells

    @property
    def min_ess(self) -> float:
        """ESS of the worst-mixing latent dim."""
        return float(self.ess.min())

    @property
    def ess_per_second(self) -> float:
        """The worst dim's ESS per second of sampling."""
        return self.min_ess / self.seconds if self.seconds > 0 else float("nan")

    @property
    def max_rhat(self) -> float:
        """R-hat of the worst dim: near 1 when the chains agree."""
        return float(self.rhat.max())


@dataclass(frozen=True)
class Comparison:
    """Every sampler's score against the same exact marginals."""

    settings: CompareSettings
    grid: np.ndarray  # (n,) cell centres of the marginals
    exact: np.ndarray  # (d, n) exact marginal densities
    scores: tuple[SamplerScore, ...]  # in `SAMPLERS` order


def cell_edges(marginals: Marginals) -> np.ndarray:
    """(n + 1,) edges of the quadrature's cells, whose centres are `marginals.grid`."""
    width = 2 * marginals.extent / marginals.resolution
    return -marginals.extent + width * np.arange(marginals.resolution + 1)


def marginal_distance(draws: np.ndarray, marginals: Marginals, dim: int) -> float:
    """W1 between 1-D draws and the exact marginal of `dim`, uniform within each quadrature cell."""
    edges = cell_edges(marginals)
    return marginal_w1(draws, edges, marginals.density[dim] * np.diff(edges))


def score(name: str, result: ChainResult, seconds: float, marginals: Marginals, burn_in: int) -> SamplerScore:
    """Score one sampler's chains (every step recorded) after `burn_in` steps against the exact marginals."""
    draws = result.trajectory[burn_in + 1:].double().numpy()  # (draws, chains, d); record 0 is the start
    if len(draws) < MIN_DRAWS:
        raise ValueError(f"need at least {MIN_DRAWS} recorded steps after the burn-in, got {len(draws)}")
    from arviz_stats.base import array_stats  # here: importing it (scipy.signal, scipy.optimize) takes seconds

    by_dim = draws.transpose(2, 1, 0)  # (d, chains, draws): arviz-stats' chain and draw axes last
    ess = np.asarray(array_stats.ess(by_dim, chain_axis=-2, draw_axis=-1, method="bulk"), dtype=np.float64)
    rhat = np.asarray(array_stats.rhat(by_dim, chain_axis=-2, draw_axis=-1, method="rank"), dtype=np.float64)
    edges = cell_edges(marginals)
    mass = marginals.density * np.diff(edges)
    pooled = by_dim.reshape(len(by_dim), -1)
    w1 = np.array([marginal_distance(pooled[k], marginals, k) for k in range(len(pooled))])
    floor = np.array([marginal_w1_noise(edges, mass[k], max(1, round(n))) if np.isfinite(n) else np.nan
                      for k, n in enumerate(ess)])
    histogram = np.stack([np.histogram(pooled[k], bins=edges)[0] / (pooled.shape[1] * np.diff(edges))
                          for k in range(len(pooled))])
    return SamplerScore(name, seconds, ess, rhat, w1, floor, float(result.acceptance.mean()), histogram)


def compare_samplers(model: LatentEBM, marginals: Marginals, settings: CompareSettings = CompareSettings(),
                     should_stop: Callable[[int], bool] | None = None) -> Comparison:
    """Run every sampler in `SAMPLERS` with `settings` and score it against `marginals` (the model's own).

    `should_stop(steps_done)` is asked after every block, steps counted over all samplers in turn
    (len(SAMPLERS) * num_steps in all); when it says True, `ebm.scheduler.Cancelled` is raised.
    """
    d = model.latent_dim
    if marginals.log_density.shape[0] != d:
        raise ValueError(f"the marginals have {marginals.log_density.shape[0]} dims; "
                         f"the model's latent dimension is {d}")
    sync_torch_threads()  # a scheduler's worker thread, often
    scores = []
    for i, name in enumerate(SAMPLERS):
        offset = i * settings.num_steps

        def callback(done: int, offset: int = offset) -> bool:
            return should_stop is not None and should_stop(offset + done)

        sample_chains(model, replace(settings.sample_settings(name), num_steps=1))  # a kernel's first call loads it
        start = time.perf_counter()
        result = sample_chains(model, settings.sample_settings(name), callback=callback)
        seconds = time.perf_counter() - start
        if result.energies.shape[0] < settings.num_steps:
            raise Cancelled(f"the comparison stopped in {name} at step {result.energies.shape[0]} "
                            f"of {settings.num_steps}")
        scores.append(score(name, result, seconds, marginals, settings.burn_in))
    return Comparison(settings, marginals.grid.copy(), marginals.density, tuple(scores))


def table(comparison: Comparison) -> list[dict]:
    """One row per sampler, for a page's table: the worst dim's ESS and R-hat, ESS per second, W1 per dim and
    the largest noise floor (a W1 below it cannot be told from exact draws)."""
    rows = []
    for s in comparison.scores:
        row = {"sampler": s.sampler.upper(), "min ESS": s.min_ess, "ESS / s": s.ess_per_second,
               "max R-hat": s.max_rhat, "acceptance": s.acceptance, "seconds": s.seconds}
        row.update({f"W1 z{k}": float(w) for k, w in enumerate(s.w1)})
        row["W1 noise floor"] = float(np.max(s.w1_floor))
        rows.append(row)
    return rows
