"""Turning decoded images into pictures: grids, PNG bytes, and GIFs of chains forming."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

GRAY_PALETTE = [v for g in range(256) for v in (g, g, g)]  # palette index = gray level: no colour quantization


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
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grid, dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def gif_bytes(frames: list[np.ndarray], duration_ms: int = 80, final_hold_ms: int = 1500) -> bytes:
    """Encode uint8 gray frames as a looping GIF that holds the last frame a little longer.

    Each frame goes in as a palette image whose index is its gray level, so Pillow skips colour
    quantization, the slow part of letting it pick a palette (`python -m benchmarks.render`).
    """
    if not frames:
        raise ValueError("no frames to animate")
    images = []
    for frame in frames:
        image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), "P")
        image.putpalette(GRAY_PALETTE)
        images.append(image)
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], loop=0, optimize=False,
                   duration=[duration_ms] * (len(images) - 1) + [final_hold_ms])
    return buf.getvalue()
