"""A drawing or an uploaded picture -> what the model was trained on: a binarized, centred 28×28 digit.

MNIST's own recipe (LeCun et al.): crop to the ink, scale (anti-aliased) so that the larger side
is 20 px keeping the aspect ratio, and place the result in 28×28 with its centre of mass at
the centre, pixel (14, 14) as in MNIST's test set; then binarize at the model's threshold as
the training data was (`ebm.data.binarize`). Ink is opacity when the background is transparent
(a canvas, a transparent PNG), otherwise brightness, inverted when the background is light (a
scan of pen on paper), and stretched so that the background is 0 and the darkest stroke 1.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.ndimage import center_of_mass

from .data import DEFAULT_THRESHOLD, check_threshold

SIDE = 28  # the model's image side
DIGIT_SIDE = 20  # MNIST scales each digit's bounding box to this larger side
CENTRE = 14.0  # MNIST test digits' mean centre of mass, row and column (index coordinates)
INK_FLOOR = 0.05  # after the contrast stretch, fainter pixels are background (JPEG noise, paper grain)
MIN_CONTRAST = 0.1  # ink and background closer than this (of full scale) means nothing was drawn
MAX_PIXELS = 4096 * 4096
"""Largest picture decoded: ~64 MB as RGBA. Checked from the header before decoding, so a small
file that inflates to gigabytes (a decompression bomb) is refused without being unpacked."""
MAX_FILE_BYTES = 20 * 1024 * 1024


class ImageError(ValueError):
    """A picture that cannot be turned into a digit, with the reason in one sentence."""


def _border_median(values: np.ndarray) -> float:
    """Median of the outermost rows and columns: the background's level, even where a stroke touches the edge."""
    return float(np.median(np.concatenate([values[0], values[-1], values[:, 0], values[:, -1]])))


def ink(array: np.ndarray) -> np.ndarray:
    """(H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA, uint8 or floats in [0, 1] -> (H, W) ink in [0, 1].

    Ink is 1 on the strokes and 0 on the background, whatever their colours (see module doc).
    """
    array = np.asarray(array)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)) or 0 in array.shape:
        raise ImageError(f"need a gray, RGB or RGBA picture of shape (H, W[, 1|3|4]), got {array.shape}")
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise ImageError(f"the picture has {array.shape[0] * array.shape[1]} pixels, more than the {MAX_PIXELS} "
                         "allowed")
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif array.dtype == bool or np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ImageError("a float picture needs finite values in [0, 1]")
    else:
        raise ImageError(f"need uint8 or float pixels, got {array.dtype}")
    values = values.reshape(*values.shape[:2], -1)
    channels = values.shape[2]
    gray = values[..., 0] if channels < 3 else values[..., :3] @ np.float32([0.299, 0.587, 0.114])  # as PIL's "L"
    alpha = values[..., 3] if channels == 4 else None
    if alpha is not None and _border_median(alpha) < 0.5:
        strokes = alpha  # transparent background: what was painted is the ink, in any colour
    elif _border_median(gray) > 0.5:
        strokes = 1.0 - gray  # dark on light
    else:
        strokes = gray
    background, peak = _border_median(strokes), strokes.max()
    if peak - background < MIN_CONTRAST:
        raise ImageError("nothing drawn: the picture is blank")
    return np.clip((strokes - background) / (peak - background), 0.0, 1.0)


def mnist_layout(strokes: np.ndarray) -> np.ndarray:
    """(H, W) ink in [0, 1] -> (28, 28) gray digit laid out as MNIST's: 20 px box, centre of mass at the centre."""
    rows, cols = np.flatnonzero((strokes > INK_FLOOR).any(1)), np.flatnonzero((strokes > INK_FLOOR).any(0))
    if rows.size == 0:
        raise ImageError("nothing drawn: the picture is blank")
    crop = strokes[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = DIGIT_SIDE / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))  # PIL's (width, height)
    small = np.asarray(Image.fromarray(crop.astype(np.float32), "F").resize(size, Image.Resampling.LANCZOS))
    small = np.clip(small, 0.0, 1.0)  # Lanczos rings a little past the range
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    if not small.any():  # no centre of mass to place
        return out
    corner = [int(np.clip(round(CENTRE - c), 0, SIDE - n)) for c, n in zip(center_of_mass(small), small.shape)]
    out[corner[0] : corner[0] + small.shape[0], corner[1] : corner[1] + small.shape[1]] = small
    return out


def preprocess_array(array: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """A picture as an array (a canvas's RGBA, any size) -> (784,) float tensor in {0, 1}, like the training data."""
    check_threshold(threshold)
    digit = torch.from_numpy(mnist_layout(ink(array)).reshape(-1) >= threshold).float()
    if not digit.any():
        raise ImageError("the strokes are too thin or faint to survive shrinking to 28×28: draw with a thicker pen")
    return digit


def preprocess_bytes(data: bytes, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """An image file's bytes (PNG, JPEG, anything PIL reads) -> (784,) float tensor in {0, 1}; ImageError if not."""
    if not data:
        raise ImageError("the file is empty")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"the file has {len(data)} bytes, more than the {MAX_FILE_BYTES} allowed")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(f"the picture is {image.width}×{image.height} pixels, more than the "
                                 f"{MAX_PIXELS} allowed")
            image = ImageOps.exif_transpose(image)  # phone photos: upright as seen
            has_alpha = "A" in image.getbands() or "transparency" in image.info
            array = np.asarray(image.convert("RGBA" if has_alpha else "L"))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("the file is not an image that PIL can read (PNG, JPEG, GIF, BMP, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"the image is corrupt or truncated ({type(e).__name__}: {e})") from None
    return preprocess_array(array, threshold)
