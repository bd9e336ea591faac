"""A normalizing-flow baseline: zuko's neural spline flow fitted to latent codes by maximum likelihood.

A flow's density is exact, like the EBM's after quadrature, so its test NLL is directly comparable:
-mean log p(test codes) in nats per code, over the same standardized codes. The flow is zuko's stock
`NSF` (Durkan et al., 2019: autoregressive rational-quadratic splines on [-5, 5], identity outside),
trained with Adam and a cosine-decayed learning rate on one torch thread, with its random numbers
(initial weights, batch order, samples) forked away from the process's and seeded, so the same codes,
settings and seed give the same flow and samples bit for bit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import zuko

from .generate import MAX_SEED
from .validation import Settings, check_int, setting


@dataclass(frozen=True)
class FlowSettings(Settings):
    """The flow and its training; the defaults are issue 11's recipe. Checked when made."""

    # autoregressive spline transforms stacked, feature order reversed between them
    transforms: int = setting(5, low=1, high=64, label="spline transforms")
    # width of each hidden layer of a transform's masked MLP
    hidden_width: int = setting(128, low=1, high=4096, label="hidden width")
    # hidden layers of each masked MLP
    hidden_layers: int = setting(2, low=1, high=16, label="hidden layers")
    # bins of each rational-quadratic spline
    bins: int = setting(16, low=2, high=256, label="spline bins")
    # passes over the training codes
    epochs: int = setting(30, low=1, high=10_000, label="epochs")
    # Adam's initial learning rate, decayed to 0 along a cosine over all the steps
    learning_rate: float = setting(1e-3, low=0.0, high=1.0, low_open=True, label="learning rate")
    # codes per Adam step (the last batch of an epoch may be smaller)
    batch_size: int = setting(512, low=1, high=1_000_000, label="batch size")

    def as_dict(self) -> dict:
        """The settings as a plain dict, for JSON output and reports."""
        return asdict(self)


def _check_codes(codes: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """`codes` as a float32 (N, d) tensor of finite numbers; ValueError in one sentence otherwise."""
    if not isinstance(codes, torch.Tensor) or codes.ndim != 2 or len(codes) < 2 or codes.shape[1] < 1:
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"codes must be a (N, d) tensor with N >= 2, got {shape}")
    if dim is not None and codes.shape[1] != dim:
        raise ValueError(f"codes have {codes.shape[1]} dimensions; the flow has {dim}")
    if not torch.isfinite(codes).all():
        raise ValueError("codes contain NaN or infinite values")
    return codes.float()


@contextlib.contextmanager
def _one_thread(seed: int | None = None) -> Iterator[None]:
    """One torch thread (small ops: as fast, and the floats do not depend on the cores); with a `seed`, torch's
    global generator forked and seeded too (zuko draws weights and samples from it). Both restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(check_int("seed", seed, 0, MAX_SEED))
            yield
    finally:
        torch.set_num_threads(threads)


def build_flow(dim: int, settings: FlowSettings) -> zuko.flows.NSF:
    """An untrained NSF over `dim` features (its initial weights come from torch's global generator)."""
    return zuko.flows.NSF(dim, transforms=settings.transforms, bins=settings.bins,
                          hidden_features=(settings.hidden_width,) * settings.hidden_layers)


def fit_flow(codes: torch.Tensor, settings: FlowSettings = FlowSettings(), seed: int = 0,
             log: Callable[[str], None] = lambda message: None) -> zuko.flows.NSF:
    """An NSF fitted to `codes` (N, d) by maximum likelihood; `log` gets the mean train NLL of each epoch.

    ValueError (one sentence) for bad codes or seed, or when the loss stops being finite.
    """
    codes = _check_codes(codes)
    steps = settings.epochs * math.ceil(len(codes) / settings.batch_size)
    with _one_thread(seed), torch.enable_grad():
        flow = build_flow(codes.shape[1], settings)
        optimizer = torch.optim.Adam(flow.parameters(), lr=settings.learning_rate)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        for epoch in range(1, settings.epochs + 1):
            total = 0.0
            for batch in codes[torch.randperm(len(codes))].split(settings.batch_size):
                loss = -flow().log_prob(batch).mean()
                if not torch.isfinite(loss):
                    raise ValueError(f"the flow's training loss became {loss.item()} in epoch {epoch}; "
                                     "try a smaller learning rate")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(batch)
            log(f"flow epoch {epoch}/{settings.epochs}: train NLL {total / len(codes):.4f} nats/code")
    return flow.eval()


@torch.no_grad()
def flow_nll(flow: zuko.flows.NSF, codes: torch.Tensor) -> float:
    """-mean log p(codes) under the flow, in nats per code (ValueError for bad codes)."""
    codes = _check_codes(codes, flow.base().event_shape[0])
    with _one_thread():
        return -torch.cat([flow().log_prob(chunk) for chunk in codes.split(8192)]).double().mean().item()


@torch.no_grad()
def sample_flow(flow: zuko.flows.NSF, num_samples: int, seed: int = 0) -> torch.Tensor:
    """`num_samples` codes (num_samples, d) drawn from the flow; the same seed gives the same codes."""
    num_samples = check_int("num_samples", num_samples, 1, 10_000_000)
    with _one_thread(seed):
        return flow().sample((num_samples,))
