"""Tests for figures: the Latent explorer's slice map and how a selection on it is read back as a code."""

import numpy as np
import pytest
import torch

import figures
from ebm.landscape import energy_slice
from ebm.models import EnergyConfig, EnergyNet


@pytest.fixture
def plane():
    torch.manual_seed(0)
    net = EnergyNet(EnergyConfig(latent_dim=4, hidden_dim=8))
    return energy_slice(net, dims=(1, 3), fixed=[0.5, 0.0, -1.0, 0.0], extent=2.0, resolution=11)


def test_the_map_draws_each_label_once_and_knows_which_trace_holds_which_code(plane):
    codes = np.arange(40, dtype=np.float32).reshape(10, 4)
    labels = np.array([3, 3, 1, 1, 1, 7, 7, 7, 7, 3])
    slice_map = figures.slice_map(plane, "density", codes, labels, max_codes=9)  # the 10th code is not shown
    traces = {int(slice_map.figure.data[n].name): idx.tolist() for n, idx in slice_map.code_traces.items()}
    assert traces == {1: [2, 3, 4], 3: [0, 1], 7: [5, 6, 7, 8]}
    heatmap = slice_map.figure.data[0]
    assert np.allclose(heatmap.z, plane.density) and heatmap.colorscale == tuple(
        map(tuple, figures.colorscale("Magma"))
    )


def test_a_selection_is_read_as_a_box_centre_a_test_code_a_plane_point_or_the_centre(plane):
    codes = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, 1, 0, 1, 0, 1])
    slice_map = figures.slice_map(plane, "energy", codes, labels)
    on_plane = lambda x, y: np.array([0.5, x, -1.0, y], dtype=np.float32)  # noqa: E731
    centre = slice_map.pick(None)
    assert np.array_equal(centre.code, on_plane(0, 0)) and centre.test_index is None
    assert slice_map.pick({"points": [], "box": []}).title == centre.title
    box = slice_map.pick({"box": [{"x": [0.0, 1.0], "y": [-1.0, 0.0]}], "points": [{"x": 9, "y": 9}]})
    assert np.array_equal(box.code, on_plane(0.5, -0.5)) and box.title == "centre of the box: z1=0.50, z3=-0.50"
    ones = next(n for n, idx in slice_map.code_traces.items() if labels[idx[0]] == 1)  # codes 1, 3, 5
    clicked = slice_map.pick(
        {"points": [{"x": 0.1, "y": 0.2, "curve_number": 2}, {"curve_number": ones, "point_index": 1}]}
    )
    assert clicked.test_index == 3 and np.array_equal(clicked.code, codes[3])
    assert clicked.title == "test digit #3 (label 1), its full 4-D code"
    point = slice_map.pick({"points": [{"x": 0.25, "y": -1.5, "curve_number": 2}]})
    assert np.array_equal(point.code, on_plane(0.25, -1.5)) and point.title == "z1=0.25, z3=-1.50 on the slice"


def test_an_unknown_view_is_refused(plane):
    with pytest.raises(ValueError, match="view must be one of"):
        figures.slice_surface(plane, "log")
