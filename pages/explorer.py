"""Latent explorer: slices of the 4-D energy landscape, data codes on it, paths and marginals."""

from itertools import combinations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch
from plotly.colors import qualitative
from plotly.subplots import make_subplots

import widgets
from ebm.generate import SampleSettings
from ebm.landscape import (
    energies,
    energy_slice,
    histogram_density,
    interpolate,
    slice_code,
)

widgets.ensure_router()

EXTENT = 4.0
RESOLUTION = 101
CLICK_GRID = 41  # invisible points that make every part of the slice clickable
SCATTER_CODES = 3000
TEST_CODES = 10_000
FIXED_RANGE = 3.0
# a few short chains from noise, drawn over the slice: ○ start, × end
PATHS = SampleSettings(sampler="mala", step_size=0.3, num_steps=80, num_chains=5, record_every=1, start="noise", seed=0)

loaded = widgets.model_picker()
d = loaded.model.latent_dim
st.title("Latent explorer")
if d < 2:
    st.error("This model has a 1-D latent space: there is no plane to slice.")
    st.stop()
pairs = [f"{i}-{j}" for i, j in combinations(range(d), 2)]
if st.session_state.get("x_pair") not in (None, *pairs):  # another model, with another latent dimension
    del st.session_state["x_pair"]
PARAMS = [
    widgets.Param("pair", "x_pair", pairs[0], choices=tuple(pairs)),
    widgets.Param("view", "x_view", "energy", choices=("energy", "density")),
    *[widgets.Param(f"z{k}", f"x_fix{k}", 0.0, -FIXED_RANGE, FIXED_RANGE) for k in range(d)],
]
st.caption(f"The energy E(z) of the model lives on a {d}-D space of standardized codes. "
           "Pick two dimensions to see a slice through it; the other dimensions stay at the values you set.")
messages = st.container()  # the link's messages go above the data's

test = widgets.data_codes(loaded, "test", TEST_CODES)  # None (with a message) when the test set is missing
codes = labels = images = None
if test is not None:
    codes, labels, images = (t.numpy() for t in test)
    last = len(codes) - 1  # the interpolation's endpoints are test digits, kept in the URL
    PARAMS += [widgets.Param("from", "x_from", 0, 0, last), widgets.Param("to", "x_to", min(1, last), 0, last)]
P = {p.name: p for p in PARAMS}
url_messages = widgets.url_to_state(PARAMS, "explorer")
with messages:
    widgets.show_url_messages(url_messages)

# The map comes first: on a narrow screen columns stack in this order, so it shows before the controls,
# with the decoded point (what a click on the map gives) between them.
plot_col, side = st.columns([2.4, 1.1], gap="medium")
digit_col, controls = side.container(), side.container()
with controls:
    pair = st.selectbox("Slice through dims", P["pair"].choices, key=P["pair"].key, persist_state="session",
                        format_func=lambda p: "z{} × z{}".format(*p.split("-")))
    i, j = (int(x) for x in pair.split("-"))
    others = [k for k in range(d) if k not in (i, j)]
    for k in others:
        widgets.param_slider(P[f"z{k}"], f"z{k} held at", step=0.05)
    widgets.param_select(P["view"], "Show", format_func={"energy": "energy E", "density": "density ∝ e⁻ᴱ"}.get,
                         help="Density: e⁻ᴱ normalized over the slice")
    show_codes = st.toggle("Test-set codes", value=True, key="x_show_codes", help="Codes of test digits, projected on the plane")
    show_paths = st.toggle("Sampled chain paths", value=True, key="x_show_paths", help="MALA chains from noise, projected")
widgets.state_to_url(PARAMS)

fixed = [float(st.session_state[P[f"z{k}"].key]) for k in range(d)]
sl = energy_slice(loaded.model, (i, j), fixed, EXTENT, RESOLUTION)
view_kind = st.session_state[P["view"].key]
z_values = sl.energy if view_kind == "energy" else sl.density

paths_view = None
if show_paths:
    paths_view = widgets.cached_sample_view(loaded, PATHS)

# ---- the slice map, with the traces it is clickable through ----------------------------------
fig = go.Figure()
fig.add_heatmap(x=sl.x, y=sl.y, z=z_values, colorscale=widgets.colorscale("Viridis" if view_kind == "energy" else "Magma"),
                colorbar=dict(title="E" if view_kind == "energy" else "p", len=0.8), hoverinfo="skip", name="slice")
fig.add_contour(x=sl.x, y=sl.y, z=sl.energy, contours=dict(coloring="lines", showlabels=False), ncontours=15,
                line=dict(width=0.6, color="rgba(255,255,255,0.45)"), showscale=False, hoverinfo="skip", name="contours")
grid = np.linspace(-EXTENT, EXTENT, CLICK_GRID)
gx, gy = np.meshgrid(grid, grid)
fig.add_scatter(x=gx.ravel(), y=gy.ravel(), mode="markers", marker=dict(size=9, opacity=0), name="click",
                hovertemplate=f"z{i}=%{{x:.2f}}, z{j}=%{{y:.2f}}<extra>click to decode</extra>", showlegend=False)
code_traces = {}  # curve number -> indices into the test codes
if show_codes and codes is not None:
    shown = np.arange(min(SCATTER_CODES, len(codes)))
    for label in range(10):
        idx = shown[labels[shown] == label]
        if len(idx) == 0:
            continue
        code_traces[len(fig.data)] = idx
        fig.add_scatter(x=codes[idx, i], y=codes[idx, j], mode="markers", name=str(label),
                        marker=dict(size=5, color=qualitative.Plotly[label % 10], opacity=0.85, line=dict(width=0)),
                        unselected=dict(marker=dict(opacity=0.85)),  # a click selects one point: keep the others as they were
                        customdata=idx, hovertemplate="test #%{customdata}, label " + str(label) + "<extra></extra>")
if paths_view is not None:
    for c in range(paths_view.paths.shape[1]):
        path = paths_view.paths[:, c]
        fig.add_scatter(x=path[:, i], y=path[:, j], mode="lines", line=dict(width=1.2, color="white"), opacity=0.75,
                        hoverinfo="skip", showlegend=c == 0, name="chain paths (○ start, × end)", legendgroup="paths")
        fig.add_scatter(x=path[[0, -1], i], y=path[[0, -1], j], mode="markers",
                        marker=dict(size=[6, 10], color="white", symbol=["circle-open", "x"]),
                        hoverinfo="skip", showlegend=False, legendgroup="paths")
fig.update_layout(height=560, margin=dict(l=10, r=10, t=30, b=10),
                  xaxis=dict(title=f"z{i}", range=[-EXTENT, EXTENT], constrain="domain"),
                  yaxis=dict(title=f"z{j}", range=[-EXTENT, EXTENT], scaleanchor="x", constrain="domain"),
                  legend=dict(title="digit", orientation="h", y=-0.12), title=f"Slice z{i} × z{j}")

with plot_col:
    tab_map, tab_surface = st.tabs(["Map (click a point to decode it)", "3-D surface"])
    with tab_map:
        event = st.plotly_chart(fig, key=f"slice_{pair}", on_select="rerun", selection_mode=("points", "box"))
    with tab_surface:
        surface = go.Figure(go.Surface(x=sl.x, y=sl.y, z=z_values, colorscale=widgets.colorscale("Viridis" if view_kind == "energy" else "Magma"),
                                       showscale=False))
        surface.update_layout(height=560, margin=dict(l=0, r=0, t=30, b=0),
                              scene=dict(xaxis_title=f"z{i}", yaxis_title=f"z{j}",
                                         zaxis_title="E" if view_kind == "energy" else "density"))
        st.plotly_chart(surface, key="surface")

# ---- decode what was picked -------------------------------------------------------------------
selection = event.selection if event is not None else None
picked_code, picked_title, picked_original = None, None, None
if selection:
    boxes = selection.get("box") or []
    points = selection.get("points") or []
    code_points = [p for p in points if p.get("curve_number") in code_traces]
    if boxes:
        box = boxes[0]
        x, y = float(np.mean(box["x"])), float(np.mean(box["y"]))
        picked_code, picked_title = slice_code((i, j), fixed, x, y), f"centre of the box: z{i}={x:.2f}, z{j}={y:.2f}"
    elif code_points:
        p = code_points[0]
        idx = int(code_traces[p["curve_number"]][p["point_index"]])
        picked_code, picked_title = codes[idx], f"test digit #{idx} (label {labels[idx]}), its full {d}-D code"
        picked_original = images[idx]
    elif points:
        x, y = float(points[0]["x"]), float(points[0]["y"])
        picked_code, picked_title = slice_code((i, j), fixed, x, y), f"z{i}={x:.2f}, z{j}={y:.2f} on the slice"

with digit_col:
    st.markdown("**Decoded point**")
    if picked_code is None:
        picked_code = slice_code((i, j), fixed, 0.0, 0.0)
        picked_title = "the slice's centre — click the map to pick a point"
    code_tensor = torch.as_tensor(np.asarray(picked_code, dtype=np.float32))[None]
    decoded = loaded.model.decode(code_tensor)[0].numpy()
    energy_here = float(energies(loaded.model, code_tensor)[0])
    st.image(widgets.digit_picture(decoded, scale=6), caption=picked_title, width=168, output_format="PNG")
    st.caption(f"E = {energy_here:.3f} · code = ({', '.join(f'{v:.2f}' for v in np.asarray(picked_code))})")
    if picked_original is not None:
        st.image(widgets.digit_picture(picked_original, scale=3), caption="the test image itself", width=100, output_format="PNG")

# ---- interpolation ----------------------------------------------------------------------------
st.divider()
st.subheader("Interpolate between two digits")
if codes is not None:
    st.caption("Pick a start and an end digit (the button under each gives its label), or type any test digit's number.")
    draw = st.session_state.setdefault("x_gallery_draw", 0)
    shown = widgets.gallery_indices(labels, draw)
    widgets.digit_gallery("Start", images, labels, shown, P["from"].key)
    widgets.digit_gallery("End", images, labels, shown, P["to"].key)
    with st.container(horizontal=True, vertical_alignment="bottom"):
        a = widgets.param_number(P["from"], "Start: test digit #", step=1, width=150)
        b = widgets.param_number(P["to"], "End: test digit #", step=1, width=150)
        st.button("Other digits", icon=":material/shuffle:", key="x_gallery_shuffle", help="Show another digit of each class",
                  on_click=lambda: st.session_state.update(x_gallery_draw=draw + 1))
    start, end = codes[a], codes[b]
    what = f"test #{a} (label {labels[a]}) → test #{b} (label {labels[b]})"
else:
    st.caption("No test set here: interpolating between two sampled digits instead.")
    endpoints = widgets.cached_sample_view(loaded, PATHS).final_codes
    with st.container(horizontal=True):
        a = st.number_input("From sample #", 0, len(endpoints) - 1, value=0, key="x_from_s", width=150)
        b = st.number_input("To sample #", 0, len(endpoints) - 1, value=1, key="x_to_s", width=150)
    start, end = endpoints[a], endpoints[b]
    what = f"sample #{a} → sample #{b}"
steps = st.slider("Points on the path", 3, 24, 12, key="x_interp_steps")
path = interpolate(loaded.model, start, end, steps)
st.image(widgets.strip_picture(path.images, scale=2), caption=f"Straight line in code space: {what}", output_format="PNG",
         width="stretch")
fig = go.Figure(go.Scatter(x=path.alphas, y=path.energies, mode="lines+markers"))
fig.update_layout(height=230, margin=dict(l=10, r=10, t=30, b=10), title="Energy along the path",
                  xaxis_title="position on the path (0 = start, 1 = end)", yaxis_title="E")
st.plotly_chart(fig, key="interp_energy")

# ---- marginals ---------------------------------------------------------------------------------
st.divider()
st.subheader("Marginal density of each dimension")
if d > 5:
    st.info(f"A {d}-D grid is too large to integrate here; marginals are shown for models with at most 5 latent dims.")
else:
    marg = widgets.cached_marginals(loaded)
    st.caption(f"p(z_k) = ∫ e^−E(z) dz_(others) / Z on a {marg.resolution}^{d} grid over [−{marg.extent:g}, {marg.extent:g}]^{d}; "
               f"log Z = {marg.log_z:.4f}." + (" Bars: histogram of test-set codes." if codes is not None else ""))
    mfig = make_subplots(rows=1, cols=d, subplot_titles=[f"z{k}" for k in range(d)], shared_yaxes=True)
    for k in range(d):
        if codes is not None:
            centres, dens = histogram_density(codes[:, k], marg.extent, bins=50)
            mfig.add_bar(x=centres, y=dens, marker_color="rgba(99,110,250,0.35)", showlegend=k == 0,
                         name="test codes", row=1, col=k + 1)
        mfig.add_scatter(x=marg.grid, y=marg.density[k], mode="lines", line=dict(color="crimson", width=2),
                         showlegend=k == 0, name="model marginal", row=1, col=k + 1)
    mfig.update_layout(height=280, margin=dict(l=10, r=10, t=40, b=10), bargap=0,
                       legend=dict(orientation="h", y=-0.2))
    st.plotly_chart(mfig, key="marginals")
