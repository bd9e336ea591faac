"""Latent explorer: slices of the 4-D energy landscape, data codes on it, paths and marginals."""

from itertools import combinations

import numpy as np
import streamlit as st

import figures
import widgets
from ebm.generate import SampleSettings
from ebm.landscape import decode_point, energy_slice, interpolate

widgets.ensure_router()

EXTENT = 4.0
RESOLUTION = 101
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
    widgets.Param("view", "x_view", "energy", choices=figures.VIEWS),
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
    show_codes = st.toggle(
        "Test-set codes", value=True, key="x_show_codes", help="Codes of test digits, projected on the plane"
    )
    show_paths = st.toggle(
        "Sampled chain paths", value=True, key="x_show_paths", help="MALA chains from noise, projected"
    )
widgets.state_to_url(PARAMS)

fixed = [float(st.session_state[P[f"z{k}"].key]) for k in range(d)]
sl = energy_slice(loaded.model, (i, j), fixed, EXTENT, RESOLUTION)
view_kind = st.session_state[P["view"].key]
paths = widgets.cached_sample_view(loaded, PATHS).paths if show_paths else None
slice_map = figures.slice_map(sl, view_kind, codes if show_codes else None, labels if show_codes else None, paths,
                              max_codes=SCATTER_CODES)

with plot_col:
    tab_map, tab_surface = st.tabs(["Map (click a point to decode it)", "3-D surface"])
    with tab_map:
        event = st.plotly_chart(slice_map.figure, key=f"slice_{pair}", on_select="rerun",
                                selection_mode=("points", "box"))
    with tab_surface:
        st.plotly_chart(figures.slice_surface(sl, view_kind), key="surface")

with digit_col:  # what was picked on the map, decoded
    st.markdown("**Decoded point**")
    picked = slice_map.pick(event.selection if event is not None else None)
    decoded, energy_here = decode_point(loaded.model, picked.code)
    st.image(widgets.digit_picture(decoded, scale=6), caption=picked.title, width=168, output_format="PNG")
    st.caption(f"E = {energy_here:.3f} · code = ({', '.join(f'{v:.2f}' for v in np.asarray(picked.code))})")
    if picked.test_index is not None:
        st.image(widgets.digit_picture(images[picked.test_index], scale=3), caption="the test image itself", width=100,
                 output_format="PNG")

# ---- interpolation ----------------------------------------------------------------------------
st.divider()
st.subheader("Interpolate between two digits")
if codes is not None:
    st.caption(
        "Pick a start and an end digit (the button under each gives its label), or type any test digit's number."
    )
    draw = st.session_state.setdefault("x_gallery_draw", 0)
    shown = widgets.gallery_indices(labels, draw)
    widgets.digit_gallery("Start", images, labels, shown, P["from"].key)
    widgets.digit_gallery("End", images, labels, shown, P["to"].key)
    with st.container(horizontal=True, vertical_alignment="bottom"):
        a = widgets.param_number(P["from"], "Start: test digit #", step=1, width=150)
        b = widgets.param_number(P["to"], "End: test digit #", step=1, width=150)
        st.button(
            "Other digits",
            icon=":material/shuffle:",
            key="x_gallery_shuffle",
            help="Show another digit of each class",
            on_click=lambda: st.session_state.update(x_gallery_draw=draw + 1),
        )
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
st.image(
    widgets.strip_picture(path.images, scale=2),
    caption=f"Straight line in code space: {what}",
    output_format="PNG",
    width="stretch",
)
st.plotly_chart(figures.path_energy(path), key="interp_energy")

# ---- marginals ---------------------------------------------------------------------------------
st.divider()
st.subheader("Marginal density of each dimension")
if d > 5:
    st.info(f"A {d}-D grid is too large to integrate here; marginals are shown for models with at most 5 latent dims.")
else:
    marg = widgets.cached_marginals(loaded)
    st.caption(
        f"p(z_k) = ∫ e^−E(z) dz_(others) / Z on a {marg.resolution}^{d} grid over [−{marg.extent:g}, "
        f"{marg.extent:g}]^{d}; "
        f"log Z = {marg.log_z:.4f}." + (" Bars: histogram of test-set codes." if codes is not None else "")
    )
    st.plotly_chart(figures.marginals(marg, codes), key="marginals")
