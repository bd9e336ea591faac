"""Resource limits for serving requests: what one interactive request may cost.

The app (and anything else serving requests) checks a request with `check_request_size`
before running chains; the CLI is not capped, since there the user pays for what they ask.
"""

from __future__ import annotations

import math

from .sampling import check_int

MAX_APP_CHAINS = 1024
"""Most chains one interactive request may run."""

MAX_CHAIN_STEPS = 2_000_000
"""Most chains × steps one interactive request may run (≈ 5-10 s on one CPU core)."""

MAX_APP_STEPS = 20_000
"""Most Langevin steps K per chain in the app."""

MAX_GIF_CHAINS = 64
"""Chains shown in an animation (the final grid shows them all)."""

MAX_GIF_FRAMES = 51
"""Frames in an animation; more recorded steps are thinned evenly (first and last always kept)."""


class RequestTooLarge(ValueError):
    """An interactive request above the caps; the message says which cap and what would fit."""


def check_request_size(num_chains: int, num_steps: int) -> int:
    """Raise RequestTooLarge unless chains ≤ MAX_APP_CHAINS, K ≤ MAX_APP_STEPS and chains × K ≤ MAX_CHAIN_STEPS.

    Returns the request's chain-steps (chains × K).
    """
    chains = check_int("number of chains", num_chains, 1, math.inf)
    steps = check_int("number of steps K", num_steps, 1, math.inf)
    if chains > MAX_APP_CHAINS:
        raise RequestTooLarge(f"{chains} chains requested; the app runs at most {MAX_APP_CHAINS} at once")
    if steps > MAX_APP_STEPS:
        raise RequestTooLarge(f"K = {steps} steps requested; the app runs at most {MAX_APP_STEPS:,} steps per chain")
    total = chains * steps
    if total > MAX_CHAIN_STEPS:
        raise RequestTooLarge(
            f"{chains} chains × {steps} steps = {total:,} chain-steps is above the cap of {MAX_CHAIN_STEPS:,}; "
            f"with {chains} chains use K ≤ {MAX_CHAIN_STEPS // chains:,}, or fewer chains "
            f"(the command line `python -m ebm sample` has no cap)"
        )
    return total


def frame_indices(num_records: int, max_frames: int = MAX_GIF_FRAMES) -> list[int]:
    """Indices of at most `max_frames` records, evenly spread, always including the first and last."""
    num_records = check_int("number of records", num_records, 1, math.inf)
    max_frames = check_int("max_frames", max_frames, 1, math.inf)
    if num_records <= max_frames:
        return list(range(num_records))
    if max_frames == 1:
        return [num_records - 1]
    step = (num_records - 1) / (max_frames - 1)
    return sorted({round(i * step) for i in range(max_frames)})
