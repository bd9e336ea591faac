"""The Latent explorer's plotly figures, and what a click on its slice map picked.

No Streamlit here: the page hands these figures to `st.plotly_chart`, and the chart's selection
back to `SliceMap.pick`. Everything is computed by `ebm.landscape`; this module only draws it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ebm.landscape import EnergySlice, Interpolation, Marginals, histogram_density, slice_code

CLICK_GRID = 41  # invisible points per axis that make every part of the slice map clickable
VIEWS = ("energy", "density")  # what a slice shows: E, or e^-E normalized over the slice

_THEME_PLACEHOLDER = re.compile(r"#0000([0-3][0-9]|40)", re.IGNORECASE)


def colorscale(name: str) -> list[list]:
    """Plotly's named colour scale as explicit stops, safe from Streamlit's chart theme.

    The theme sends colours #000001-#000040 as placeholders that the browser swaps for theme
    colours, and Magma starts at #000004: zero density was drawn pink. Such stops get a red
    channel of 01, which no eye can tell from the original.
    """
    return [[position, _THEME_PLACEHOLDER.sub(lambda m: "#0100" + m.group(1), colour)]
            for position, colour in plotly.colors.get_colorscale(name)]


def _shown(sl: EnergySlice, view: str) -> tuple[np.ndarray, list[list]]:
    """The values a slice shows in `view`, and their colour scale."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    if view == "energy":
        return sl.energy, colorscale("Viridis")
    return sl.density, colorscale("Magma")


@dataclass
class Pick:
    """A point picked on the slice map: its full code, a caption, and the test digit when one was clicked."""

    code: np.ndarray  # (d,) standardized code
    title: str
    test_index: int | None = None


@dataclass
class SliceMap:
    """The slice map and what it takes to read a selection on it back as a code."""

    figure: go.Figure
    plane: EnergySlice
    codes: np.ndarray | None  # (N, d) test codes, or None without a test set
    labels: np.ndarray | None  # (N,)
    code_traces: dict[int, np.ndarray]  # curve number -> indices into the test codes it draws

    def pick(self, selection) -> Pick:
        """The point a chart selection picked: a box's centre, else a test digit's code, else a point of the
        plane; the slice's centre when nothing is selected."""
        (i, j), fixed = self.plane.dims, self.plane.fixed
        boxes = (selection.get("box") or []) if selection else []
        points = (selection.get("points") or []) if selection else []
        code_points = [p for p in points if p.get("curve_number") in self.code_traces]
        if boxes:
            x, y = float(np.mean(boxes[0]["x"])), float(np.mean(boxes[0]["y"]))
            return Pick(slice_code((i, j), fixed, x, y), f"centre of the box: z{i}={x:.2f}, z{j}={y:.2f}")
        if code_points:
            p = code_points[0]
            idx = int(self.code_traces[p["curve_number"]][p["point_index"]])
            title = f"test digit #{idx} (label {self.labels[idx]}), its full {len(fixed)}-D code"
            return Pick(self.codes[idx], title, idx)
        if points:
            x, y = float(points[0]["x"]), float(points[0]["y"])
            return Pick(slice_code((i, j), fixed, x, y), f"z{i}={x:.2f}, z{j}={y:.2f} on the slice")
        return Pick(slice_code((i, j), fixed, 0.0, 0.0), "the slice's centre — click the map to pick a point")


def slice_map(sl: EnergySlice, view: str, codes: np.ndarray | None = None, labels: np.ndarray | None = None,
              paths: np.ndarray | None = None, max_codes: int = 3000) -> SliceMap:
    """The slice as a clickable heatmap with energy contours, the first `max_codes` test codes coloured
    by label, and chain `paths` ((T, chains, d)) projected on the plane: ○ start, × end."""
    (i, j), extent = sl.dims, float(sl.x[-1])
    values, scale = _shown(sl, view)
    fig = go.Figure()
    fig.add_heatmap(x=sl.x, y=sl.y, z=values, colorscale=scale, hoverinfo="skip", name="slice",
                    colorbar=dict(title="E" if view == "energy" else "p", len=0.8))
    fig.add_contour(x=sl.x, y=sl.y, z=sl.energy, contours=dict(coloring="lines", showlabels=False), ncontours=15,
                    line=dict(width=0.6, color="rgba(255,255,255,0.45)"), showscale=False, hoverinfo="skip",
                    name="contours")
    grid = np.linspace(-extent, extent, CLICK_GRID)
    gx, gy = np.meshgrid(grid, grid)
    fig.add_scatter(x=gx.ravel(), y=gy.ravel(), mode="markers", marker=dict(size=9, opacity=0), name="click",
                    hovertemplate=f"z{i}=%{{x:.2f}}, z{j}=%{{y:.2f}}<extra>click to decode</extra>", showlegend=False)
    code_traces = {}
    if codes is not None:
        shown = np.arange(min(max_codes, len(codes)))
        for label in range(10):
            idx = shown[labels[shown] == label]
            if len(idx) == 0:
                continue
            code_traces[len(fig.data)] = idx
            fig.add_scatter(
                x=codes[idx, i],
                y=codes[idx, j],
                mode="markers",
                name=str(label),
                marker=dict(
                    size=5, color=plotly.colors.qualitative.Plotly[label % 10], opacity=0.85, line=dict(width=0)
                ),
                unselected=dict(marker=dict(opacity=0.85)),  # a click selects one point: keep the rest
                customdata=idx,
                hovertemplate="test #%{customdata}, label " + str(label) + "<extra></extra>",
            )
    if paths is not None:
        for c in range(paths.shape[1]):
            path = paths[:, c]
            fig.add_scatter(
                x=path[:, i],
                y=path[:, j],
                mode="lines",
                line=dict(width=1.2, color="white"),
                opacity=0.75,
                hoverinfo="skip",
                showlegend=c == 0,
                name="chain paths (○ start, × end)",
                legendgroup="paths",
            )
            fig.add_scatter(x=path[[0, -1], i], y=path[[0, -1], j], mode="markers",
                            marker=dict(size=[6, 10], color="white", symbol=["circle-open", "x"]),
                            hoverinfo="skip", showlegend=False, legendgroup="paths")
    fig.update_layout(height=560, margin=dict(l=10, r=10, t=30, b=10),
                      xaxis=dict(title=f"z{i}", range=[-extent, extent], constrain="domain"),
                      yaxis=dict(title=f"z{j}", range=[-extent, extent], scaleanchor="x", constrain="domain"),
                      legend=dict(title="digit", orientation="h", y=-0.12), title=f"Slice z{i} × z{j}")
    return SliceMap(fig, sl, codes, labels, code_traces)


def slice_surface(sl: EnergySlice, view: str) -> go.Figure:
    """The slice as a 3-D surface."""
    i, j = sl.dims
    values, scale = _shown(sl, view)
    fig = go.Figure(go.Surface(x=sl.x, y=sl.y, z=values, colorscale=scale, showscale=False))
    fig.update_layout(
        height=560,
        margin=dict(l=0, r=0, t=30, b=0),
        scene=dict(xaxis_title=f"z{i}", yaxis_title=f"z{j}", zaxis_title="E" if view == "energy" else "density"),
    )
    return fig


def path_energy(path: Interpolation) -> go.Figure:
    """The energy along an interpolation."""
    fig = go.Figure(go.Scatter(x=path.alphas, y=path.energies, mode="lines+markers"))
    fig.update_layout(height=230, margin=dict(l=10, r=10, t=30, b=10), title="Energy along the path",
                      xaxis_title="position on the path (0 = start, 1 = end)", yaxis_title="E")
    return fig


def marginals(marg: Marginals, codes: np.ndarray | None = None) -> go.Figure:
    """Each dim's model marginal, one panel per dim, over a histogram of the test codes when there are some."""
    d = len(marg.density)
    fig = make_subplots(rows=1, cols=d, subplot_titles=[f"z{k}" for k in range(d)], shared_yaxes=True)
    for k in range(d):
        if codes is not None:
            centres, dens = histogram_density(codes[:, k], marg.extent, bins=50)
            fig.add_bar(x=centres, y=dens, marker_color="rgba(99,110,250,0.35)", showlegend=k == 0,
                        name="test codes", row=1, col=k + 1)
        fig.add_scatter(x=marg.grid, y=marg.density[k], mode="lines", line=dict(color="crimson", width=2),
                        showlegend=k == 0, name="model marginal", row=1, col=k + 1)
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=40, b=10), bargap=0, legend=dict(orientation="h", y=-0.2))
    return fig


def mark_code(fig: go.Figure, code: np.ndarray, dims: tuple[int, int], name: str = "your digit") -> go.Figure:
    """A star at a code's projection on a slice map (the map's plane holds the code's other dims)."""
    i, j = dims
    fig.add_scatter(x=[float(code[i])], y=[float(code[j])], mode="markers", name=name,
                    marker=dict(symbol="star", size=18, color="#ffd400", line=dict(width=1.5, color="black")),
                    hovertemplate=f"{name}: z{i}=%{{x:.2f}}, z{j}=%{{y:.2f}}<extra></extra>")
    return fig


SCORE_SET_COLOURS = {"MNIST test digits": "rgba(99,110,250,0.55)", "Fashion-MNIST test images": "rgba(239,85,59,0.5)"}
SURPRISE_TICKS = (20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)  # nats, on the histogram's log axis


def score_histograms(sets: dict[str, np.ndarray], log_p_x: float, threshold: float) -> go.Figure:
    """Histograms of −log p(x) (nats, log axis: digits sit near 100, clothes spread over thousands) for each
    reference set, the outlier threshold (dashed) and this image (line)."""
    surprise = {name: np.log10(np.maximum(-values, 1.0)) for name, values in sets.items()}
    value, cut = np.log10(max(-log_p_x, 1.0)), np.log10(max(-threshold, 1.0))
    everything = np.concatenate([*surprise.values(), [value, cut]])
    lo, hi = min(np.percentile(everything, 0.5), value, cut), max(np.percentile(everything, 99.5), value)
    fig = go.Figure()
    for name, values in surprise.items():
        fig.add_histogram(x=np.clip(values, lo, hi), name=name, histnorm="probability", opacity=0.75,
                          xbins=dict(start=lo, end=hi, size=(hi - lo) / 60), marker_color=SCORE_SET_COLOURS.get(name),
                          hovertemplate=f"{name}<br>%{{y:.1%}} of them in this bin<extra></extra>")
    fig.add_vline(x=cut, line=dict(dash="dash", width=1.5, color="grey"),
                  annotation_text="outlier beyond", annotation_position="top right")
    fig.add_vline(x=value, line=dict(width=3, color="#ffd400"), annotation_text="your digit",
                  annotation_position="top left")
    ticks = [t for t in SURPRISE_TICKS if lo <= np.log10(t) <= hi]
    fig.update_layout(barmode="overlay", height=320, margin=dict(l=10, r=10, t=40, b=10),
                      title="How surprising your digit is: −log p(x)",
                      xaxis=dict(title="−log p(x) (nats, log scale; digits left)", tickvals=np.log10(ticks),
                                 ticktext=[f"{t:,}" for t in ticks], range=[lo, hi]),
                      yaxis=dict(title="share of the set", tickformat=".0%"),
                      legend=dict(orientation="h", y=-0.3))
    return fig


def class_bars(histogram: np.ndarray, allowed: tuple[int, ...]) -> go.Figure:
    """Samples per digit class as the image classifier reads them; the allowed classes highlighted."""
    colours = ["#2ca02c" if d in allowed else "rgba(128,128,128,0.6)" for d in range(len(histogram))]
    fig = go.Figure(go.Bar(x=[str(d) for d in range(len(histogram))], y=histogram, marker_color=colours))
    fig.update_layout(height=240, margin=dict(l=10, r=10, t=40, b=10), title="Digits read",
                      xaxis=dict(title="digit", type="category", dtick=1),
                      yaxis_title="samples")
    return fig
