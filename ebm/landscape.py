"""Looking at the energy landscape of the latent space: slices, paths and marginals.

All functions work in the model's standardized code space (where the energy net lives),
accept a `LatentEBM` or a bare `EnergyNet`, and return numpy arrays ready to plot.

- `energy_slice`: E on a 2-D grid over two chosen dims, the other dims held fixed.
- `decode_point`: what one code decodes to, and its energy.
- `interpolate`: a straight path between two codes, decoded, with the energy along it.
- `marginal_densities`: each dim's marginal density p_i(z_i) = ∫ exp(-E(z)) dz_{-i} / Z and
  log Z itself, by log-sum-exp over a regular grid on the whole latent space. With d = 4 a
  grid of 32⁴ ≈ 10⁶ points is a second of CPU and accurate to the plotting resolution,
  because exp(-E) is smooth and the Gaussian tilt makes it vanish at the edges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .models import EnergyNet, LatentEBM
from .quadrature import grid_quadrature
from .validation import check_float, check_int

MAX_GRID_POINTS = 4_000_000
"""Most energy evaluations one quadrature grid may take (memory: 4 bytes each)."""


def _energy_net(model: LatentEBM | EnergyNet) -> EnergyNet:
    return model.energy if isinstance(model, LatentEBM) else model


def _latent_dim(model: LatentEBM | EnergyNet) -> int:
    return _energy_net(model).config.latent_dim


@torch.no_grad()
def energies(model: LatentEBM | EnergyNet, codes: torch.Tensor, chunk: int = 65_536) -> torch.Tensor:
    """(N, d) standardized codes -> (N,) energies, evaluated in chunks without autograd."""
    net = _energy_net(model)
    codes = torch.as_tensor(codes, dtype=torch.float32)
    if codes.ndim != 2 or codes.shape[1] != net.config.latent_dim:
        raise ValueError(f"codes have shape {tuple(codes.shape)}; "
                         f"the model's latent dimension is {net.config.latent_dim}")
    if len(codes) == 0:
        return torch.empty(0)
    return torch.cat([net(c) for c in codes.split(chunk)])


def _check_dims(dims: Sequence[int], d: int) -> tuple[int, int]:
    if len(dims) != 2:
        raise ValueError(f"a slice needs exactly two dims, got {tuple(dims)}")
    i, j = (int(x) for x in dims)
    if i == j or not (0 <= i < d and 0 <= j < d):
        raise ValueError(f"slice dims must be two different dims in 0..{d - 1}, got {(i, j)}")
    return i, j


def _check_grid(extent: float, resolution: int) -> tuple[float, int]:
    """(extent, resolution) of a square grid, checked: half-width > 0, at least 2 points a side."""
    return check_float("extent", extent, 0.0, low_open=True), check_int("resolution", resolution, 2)


def _fixed_vector(fixed: Sequence[float] | None, d: int) -> torch.Tensor:
    if fixed is None:
        return torch.zeros(d)
    vec = torch.as_tensor(list(fixed), dtype=torch.float32)
    if vec.shape != (d,) or not torch.isfinite(vec).all():
        raise ValueError(f"fixed must be {d} finite numbers (one per latent dim), got {list(fixed)}")
    return vec


def log_normalize(log_values: np.ndarray, cell: float) -> np.ndarray:
    """Normalize log densities on a grid so that sum(exp(result)) * cell = 1."""
    flat = np.asarray(log_values, dtype=np.float64)
    top = flat.max()
    log_sum = top + np.log(np.exp(flat - top).sum()) + math.log(cell)
    return flat - log_sum


@dataclass
class EnergySlice:
    """E on the plane spanned by two latent dims, the others held at `fixed`."""

    dims: tuple[int, int]
    fixed: np.ndarray  # (d,) the full code the plane passes through (sliced dims' entries are ignored)
    x: np.ndarray  # (nx,) values of dim dims[0]
    y: np.ndarray  # (ny,) values of dim dims[1]
    energy: np.ndarray  # (ny, nx): energy[r, c] = E at (x[c], y[r]) — plotly's heatmap layout

    @property
    def log_density(self) -> np.ndarray:
        """log of exp(-E) normalized over the slice (the conditional density on the plane)."""
        cell = float((self.x[1] - self.x[0]) * (self.y[1] - self.y[0]))
        return log_normalize(-self.energy, cell)

    @property
    def density(self) -> np.ndarray:
        """exp of `log_density`: the conditional density on the plane."""
        return np.exp(self.log_density)


def slice_code(dims: Sequence[int], fixed: Sequence[float], x: float, y: float) -> np.ndarray:
    """(d,) code equal to `fixed` except dims[0] = x and dims[1] = y."""
    code = np.array(fixed, dtype=np.float32).copy()
    i, j = _check_dims(dims, len(code))
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"slice coordinates must be finite, got {(x, y)}")
    code[i], code[j] = x, y
    return code


def energy_slice(
    model: LatentEBM | EnergyNet,
    dims: Sequence[int] = (0, 1),
    fixed: Sequence[float] | None = None,
    extent: float = 4.0,
    resolution: int = 101,
) -> EnergySlice:
    """Energies on a resolution × resolution grid over [-extent, extent]² in two dims."""
    d = _latent_dim(model)
    i, j = _check_dims(dims, d)
    extent, resolution = _check_grid(extent, resolution)
    base = _fixed_vector(fixed, d)
    axis = torch.linspace(-extent, extent, resolution)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    codes = base.expand(xx.numel(), d).clone()
    codes[:, i] = xx.reshape(-1)
    codes[:, j] = yy.reshape(-1)
    e = energies(model, codes).reshape(len(axis), len(axis))
    return EnergySlice((i, j), base.numpy().copy(), axis.numpy().copy(), axis.numpy().copy(),
                       e.numpy().astype(np.float64))


@torch.no_grad()
def decode_point(model: LatentEBM, code: Sequence[float] | np.ndarray) -> tuple[np.ndarray, float]:
    """One (d,) standardized code's decoded pixel probabilities (784,) and its energy E."""
    codes = torch.as_tensor(np.asarray(code, dtype=np.float32))[None]
    energy = float(energies(model, codes)[0])  # first: it says so when the code does not fit the model
    return model.decode(codes)[0].numpy(), energy


@dataclass
class Interpolation:
    """A straight path between two codes, decoded, with the energy along it."""

    alphas: np.ndarray  # (n,) 0 .. 1
    codes: np.ndarray  # (n, d)
    energies: np.ndarray  # (n,)
    images: np.ndarray  # (n, 784) decoded pixel probabilities


@torch.no_grad()
def interpolate(model: LatentEBM, start: Sequence[float] | torch.Tensor, end: Sequence[float] | torch.Tensor,
                steps: int = 10) -> Interpolation:
    """Codes (1 - a) start + a end for `steps` values of a in [0, 1], decoded and scored."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 2:
        raise ValueError(f"an interpolation needs steps >= 2, got {steps}")
    a = torch.as_tensor(np.asarray(start, dtype=np.float32)).reshape(-1)
    b = torch.as_tensor(np.asarray(end, dtype=np.float32)).reshape(-1)
    d = model.latent_dim
    if a.shape != (d,) or b.shape != (d,):
        raise ValueError(f"start and end must be codes of dimension {d}, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("start and end codes must be finite")
    alphas = torch.linspace(0.0, 1.0, int(steps))
    codes = (1 - alphas[:, None]) * a + alphas[:, None] * b
    return Interpolation(
        alphas.numpy(), codes.numpy(), energies(model, codes).numpy().astype(np.float64), model.decode(codes).numpy()
    )


@dataclass
class Marginals:
    """1-D marginal densities of every latent dim and log Z, from one grid quadrature."""

    grid: np.ndarray  # (n,) grid values, the same for every dim
    log_density: np.ndarray  # (d, n) log p_i(grid)
    log_z: float  # log ∫ exp(-E(z)) dz over the grid box
    extent: float
    resolution: int

    @property
    def density(self) -> np.ndarray:
        """(d, n) p_i(grid), exp of `log_density`."""
        return np.exp(self.log_density)


def grid_resolution(d: int, max_points: int = MAX_GRID_POINTS, cap: int = 32) -> int:
    """The finest resolution n with n**d <= max_points (and n <= cap)."""
    n = min(cap, math.floor(max_points ** (1.0 / d) + 1e-9))
    while n**d > max_points:
        n -= 1
    return n


@torch.no_grad()
def marginal_densities(model: LatentEBM | EnergyNet, extent: float = 5.0, resolution: int | None = None,
                       should_stop: Callable[[int], bool] | None = None) -> Marginals:
    """p_i(z_i) for each dim and log Z, from the evaluation's midpoint-grid quadrature.

    The grid has `resolution` cells per dim on [-extent, extent] (default: as fine as
    MAX_GRID_POINTS allows, at most 32; on the shipped model log Z then agrees with a 40⁴ grid
    to 1e-4). Mass outside the box is ignored: standardized data codes lie within a few
    units of 0, and beyond them the Gaussian tilt makes exp(-E) vanish. `should_stop` is
    `grid_quadrature`'s: asked after each of the `resolution` slices.
    """
    d = _latent_dim(model)
    resolution = grid_resolution(d) if resolution is None else resolution
    extent, n = _check_grid(extent, resolution)
    if n**d > MAX_GRID_POINTS:
        raise ValueError(
            f"a {n}^{d} grid has {n**d:,} points, above the cap of {MAX_GRID_POINTS:,}; "
            f"use resolution <= {grid_resolution(d)}"
        )
    grid = grid_quadrature(lambda codes: energies(model, codes), [-extent] * d, [extent] * d, n,
                           should_stop=should_stop)
    width = 2 * extent / n
    centres = -extent + (np.arange(n) + 0.5) * width
    return Marginals(centres, grid.marginal_log_mass - math.log(width), grid.log_z, float(extent), n)


def histogram_density(values: np.ndarray, extent: float, bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, density) of the values of one dim inside [-extent, extent], for comparison with a marginal."""
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins, range=(-extent, extent))
    width = edges[1] - edges[0]
    total = max(len(values), 1)
    return (edges[:-1] + edges[1:]) / 2, counts / (total * width)
