"""The samplers, by name: the registry that the CLI, the app, training and evaluation read.

Each sampler is one module composing the shared pieces (`base`: state, block loop and
`run_chains`; `integrators`: its proposal; `metropolis`: the accept test) and exporting an
`INFO` (`base.SamplerInfo`: builder, label, whether it is Metropolis-adjusted, its own
parameters as `ebm.validation.setting` fields). Adding a sampler is that module plus one
line in `SAMPLERS`: every choice of sampler, its flags (`--leapfrog-steps`), its form fields
and `SampleSettings.sampler_params` come from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from ..validation import Spec
from . import hmc, mala, ula
from .base import (
    BLOCK_STEPS,
    DEFAULT_TARGET_ACCEPTANCE,
    MAX_CHAINS,
    MAX_STEPS,
    ChainResult,
    ChainState,
    EnergyAndGrad,
    ReplayBuffer,
    SamplerInfo,
    SamplingAlgorithm,
    StepInfo,
    Traces,
    adapted_step_size,
    check_positions,
    check_step_size,
    run_chains,
)

__all__ = [
    "BLOCK_STEPS", "DEFAULT_TARGET_ACCEPTANCE", "MAX_CHAINS", "MAX_STEPS", "SAMPLERS", "ChainResult", "ChainState",
    "EnergyAndGrad", "ReplayBuffer", "SamplerInfo", "SamplingAlgorithm", "StepInfo", "Traces", "adapted_step_size",
    "all_param_specs", "build_sampler", "check_positions", "check_step_size", "contrasting_sampler",
    "gradients_per_step", "param_specs", "run_chains", "sampler_info", "sampler_params",
]

SAMPLERS: dict[str, SamplerInfo] = {"ula": ula.INFO, "mala": mala.INFO, "hmc": hmc.INFO}


def sampler_info(name: str) -> SamplerInfo:
    """The registry entry of `name` (any case); ValueError naming the samplers otherwise."""
    info = SAMPLERS.get(name.lower()) if isinstance(name, str) else None
    if info is None:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return info


def param_specs(name: str) -> dict[str, tuple[Any, Spec]]:
    """A sampler's own parameters: name -> (default, Spec), in declaration order."""
    return {f.name: (f.default, f.metadata["spec"]) for f in dataclasses.fields(sampler_info(name).params)}


def all_param_specs() -> dict[str, tuple[Any, Spec]]:
    """Every registered sampler's own parameters, name -> (default, Spec)."""
    return {param: spec for name in SAMPLERS for param, spec in param_specs(name).items()}


def sampler_params(name: str, given: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> tuple[tuple[str, Any], ...]:
    """`given` made the parameters of sampler `name`: validated, defaults filled in, in declaration order.

    A parameter that only other samplers declare is dropped (switching the sampler keeps the
    rest of a setting valid); one that no sampler declares is a ValueError.
    """
    try:
        given = dict(given)
    except (TypeError, ValueError):
        raise ValueError(f"sampler parameters must be (name, value) pairs or a mapping, got {given!r}") from None
    known = set(all_param_specs())
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"no sampler has a parameter {unknown[0]!r}; the parameters are {sorted(known) or 'none'}")
    own = sampler_info(name).params(**{k: v for k, v in given.items() if k in param_specs(name)})
    return tuple(dataclasses.asdict(own).items())


def gradients_per_step(name: str, params: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> int:
    """Energy gradients one step of sampler `name` with `params` costs (HMC: L; the Langevin samplers: 1)."""
    return sampler_info(name).params(**dict(sampler_params(name, params))).gradients_per_step


def build_sampler(name: str, energy_and_grad: EnergyAndGrad, step_size: float, generator=None,
                  **params: Any) -> SamplingAlgorithm:
    """Look a sampler up by name and build it; `params` are its own (e.g. HMC's `leapfrog_steps`), checked."""
    info = sampler_info(name)
    wrong = sorted(set(params) - set(param_specs(name)))
    if wrong:
        own = list(param_specs(name)) or "none"
        raise ValueError(f"sampler {name!r} has no parameter {wrong[0]!r}; its parameters: {own}")
    return info.build(energy_and_grad, step_size, generator, **params)


def contrasting_sampler(name: str) -> str:
    """Another sampler to compare `name` with: the first registered one that differs in having a
    Metropolis test (exact against biased), else the first other one."""
    adjusted = sampler_info(name).adjusted
    others = [other for other in SAMPLERS if other != name.lower()]
    return next((other for other in others if SAMPLERS[other].adjusted != adjusted), others[0])
