"""Tests for ebm.preprocess: drawings and uploads become MNIST-like binary digits, bad files clear errors."""

import io
import os

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import center_of_mass

from ebm import preprocess as pp
from ebm.preprocess import ImageError, ink, mnist_layout, preprocess_array, preprocess_bytes


def canvas(strokes: np.ndarray, colour=(255, 255, 255)) -> np.ndarray:
    """A drawable-canvas-like RGBA array: `strokes` (H, W) uint8 as opacity, in `colour`, on transparency."""
    rgba = np.zeros((*strokes.shape, 4), dtype=np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = strokes
    return rgba


def png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def seven(size: int = 280) -> np.ndarray:
    """A thick "7" off-centre in a size × size uint8 picture, white on black."""
    picture = np.zeros((size, size), dtype=np.uint8)
    s = size // 28
    picture[3 * s : 6 * s, 2 * s : 16 * s] = 255  # the bar
    for row in range(6 * s, 22 * s):  # the stem, slanting left
        col = 16 * s - (row - 6 * s) // 3
        picture[row, col - 3 * s : col] = 255
    return picture


@pytest.mark.skipif(not os.environ.get("EBM_DATA_DIR"), reason="needs MNIST in EBM_DATA_DIR")
def test_an_mnist_digit_drawn_large_on_a_canvas_comes_back_as_itself():
    from ebm.data import binarize, load_images

    images, _ = load_images("mnist", "test", os.environ["EBM_DATA_DIR"], download=False)
    images = images[:50]
    expected = binarize(images).reshape(-1, 28, 28).numpy()
    exact, close = 0, 0
    for digit, target in zip(images.numpy(), expected):
        big = np.kron(digit, np.ones((10, 10), dtype=np.uint8))  # each pixel a 10 × 10 block: 280 × 280
        got = preprocess_array(canvas(big)).reshape(28, 28).numpy()
        misses = [(np.roll(got, (dr, dc), (0, 1)) != target).sum() for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
        exact += misses[4] <= 4
        close += min(misses) <= 12  # up to a one-pixel shift: MNIST's centring rounds half-pixels either way
    assert exact >= 42 and close == 50


def test_a_digit_is_scaled_to_a_20_pixel_box_with_its_centre_of_mass_at_the_centre():
    gray = mnist_layout(ink(canvas(seven())))
    rows, cols = np.flatnonzero(gray.max(1) > 0.05), np.flatnonzero(gray.max(0) > 0.05)
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (20, 21)  # Lanczos spreads a faint fringe
    np.testing.assert_allclose(center_of_mass(gray), (pp.CENTRE, pp.CENTRE), atol=0.5)
    # the same digit anywhere on the canvas, at any scale, comes out the same
    shifted = np.roll(seven(), (40, 60), (0, 1))
    small = np.asarray(Image.fromarray(seven()).resize((140, 140), Image.Resampling.NEAREST))
    reference = preprocess_array(canvas(seven()))
    assert (preprocess_array(canvas(shifted)) != reference).sum() == 0
    assert (preprocess_array(canvas(small)) != reference).sum() <= 6


def test_a_tall_thin_stroke_keeps_its_aspect():
    bar = np.zeros((300, 200), dtype=np.uint8)
    bar[20:260, 90:120] = 255  # 240 tall, 30 wide: 20 × 2.5 after scaling
    digit = preprocess_array(canvas(bar)).reshape(28, 28).numpy()
    rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
    assert rows.size == 20 and 2 <= cols.size <= 3


def test_colours_and_backgrounds_all_give_the_same_digit():
    white_on_black = preprocess_array(seven())
    variants = {
        "black on white, gray": 255 - seven(),
        "black on white, RGB": np.repeat((255 - seven())[..., None], 3, 2),
        "dark blue on a light grey photo": np.stack([200 - seven() * 0.7, 200 - seven() * 0.7, 210 - seven() * 0.5],
                                                    -1).astype(np.uint8),
        "black strokes on transparency": canvas(seven(), colour=(0, 0, 0)),
        "white strokes on transparency": canvas(seven()),
        "floats in [0, 1]": seven() / 255.0,
    }
    for name, picture in variants.items():
        assert (preprocess_array(picture) != white_on_black).sum() <= 2, name


def test_files_read_like_arrays():
    picture = 255 - seven(200)
    expected = preprocess_array(picture)
    assert (preprocess_bytes(png(picture)) == expected).all()
    assert (preprocess_bytes(png(canvas(seven(200)))) == expected).all()  # RGBA PNG with transparency
    assert (preprocess_bytes(png(picture, "JPEG")) != expected).sum() <= 8  # lossy, nearly the same
    assert preprocess_bytes(png(picture)).shape == (784,)
    assert set(preprocess_bytes(png(picture)).unique().tolist()) == {0.0, 1.0}


def test_blank_pictures_say_nothing_was_drawn():
    blanks = (np.zeros((280, 280, 4), np.uint8), np.full((50, 60), 255, np.uint8), np.full((9, 9, 3), 128, np.uint8))
    for blank in blanks:
        with pytest.raises(ImageError, match="nothing drawn"):
            preprocess_array(blank)
    with pytest.raises(ImageError, match="nothing drawn"):
        preprocess_bytes(png(np.full((30, 30), 255, np.uint8)))


def test_strokes_too_thin_to_survive_say_so():
    hair = np.zeros((2000, 2000), dtype=np.uint8)
    hair[100:1900, 1000] = 255  # one pixel wide: 1/90 px after scaling
    hair[1000, 100:1900] = 255
    with pytest.raises(ImageError, match="too thin"):
        preprocess_array(hair)


def test_corrupt_and_hostile_files_are_refused_in_one_sentence(monkeypatch):
    good = png(seven(100))
    cases = {b"": "empty", b"definitely not an image": "not an image", good[: len(good) // 2]: "corrupt or truncated"}
    for data, message in cases.items():
        with pytest.raises(ImageError, match=message):
            preprocess_bytes(data)
    bomb = png(np.zeros((5000, 5000), np.uint8))  # a few kB that would decode to 25 million pixels
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="more than"):
        preprocess_bytes(bomb)
    monkeypatch.setattr(pp, "MAX_FILE_BYTES", 100)
    with pytest.raises(ImageError, match="bytes, more than"):
        preprocess_bytes(good)


def test_bad_arrays_are_refused():
    for bad in (np.zeros((5, 5, 2), np.uint8), np.zeros((0, 5), np.uint8), np.zeros(10, np.uint8)):
        with pytest.raises(ImageError, match="shape"):
            preprocess_array(bad)
    with pytest.raises(ImageError, match="finite"):
        preprocess_array(np.full((5, 5), np.nan))
    with pytest.raises(ImageError, match="uint8 or float"):
        preprocess_array(np.zeros((5, 5), np.int64))
    with pytest.raises(ValueError, match="threshold"):
        preprocess_array(seven(), threshold=2.0)
