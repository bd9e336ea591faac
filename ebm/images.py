"""Turning decoded images into pictures: grids, PNG bytes, and GIFs of chains forming."""

from __future__ import annotations

import math

import imageio.v3 as iio
import numpy as np
import torch


def image_grid(images: torch.Tensor | np.ndarray, ncols: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """(N, 784) or (N, 28, 28) values in [0, 1] -> one uint8 (H, W) grid, white digits on black."""
    arr = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=np.float32)
    arr = arr.reshape(-1, 28, 28)
    n = len(arr)
    if n == 0:
        raise ValueError("no images to draw")
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    cell = 28 + pad
    grid = np.zeros((nrows * cell + pad, ncols * cell + pad), dtype=np.float32)
    for i, img in enumerate(arr):
        r, c = divmod(i, ncols)
        grid[pad + r * cell : pad + r * cell + 28, pad + c * cell : pad + c * cell + 28] = img
    grid = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid


def png_bytes(grid: np.ndarray) -> bytes:
    """Encode a uint8 grid as PNG."""
    return iio.imwrite("<bytes>", grid, extension=".png")


def gif_bytes(frames: list[np.ndarray], duration_ms: int = 80, final_hold_ms: int = 1500) -> bytes:
    """Encode uint8 frames as a looping GIF that holds the last frame a little longer."""
    if not frames:
        raise ValueError("no frames to animate")
    durations = [duration_ms] * (len(frames) - 1) + [final_hold_ms]
    return iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=durations, loop=0)
