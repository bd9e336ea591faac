"""log Z of a low-dimensional energy by quadrature: exp(-E) summed on a midpoint grid over a box.

In 4-D a grid of 32^4 ≈ 10^6 points is a second of CPU and, because exp(-E) is smooth and
vanishes at the edges of a box around the data, accurate to a few thousandths of a nat; the
same sweep gives each axis's exact (to the grid) 1-D marginal. The evaluation uses it for the
test NLL and the sampler checks, the explorer page for its marginal plots, so this module
imports only numpy and torch: it sits on the app's page path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .scheduler import Cancelled

Energy = Callable[[torch.Tensor], torch.Tensor]  # (N, d) codes -> (N,) energies

GRID_RESOLUTION = 32  # default points per axis


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
        """The estimate, the box and the grid as plain JSON values, for the evaluation report."""
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
        raise ValueError(f"need a box with hi > lo in every dimension and resolution >= 2, "
                         f"got {lo}, {hi}, {resolution}")
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
