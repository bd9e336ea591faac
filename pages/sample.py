"""Sample: run Langevin chains on the chosen model and watch digits form."""

import plotly.graph_objects as go
import streamlit as st

import widgets
from ebm.generate import STARTS, SampleSettings
from ebm.limits import MAX_APP_CHAINS, RequestTooLarge
from ebm.samplers import SAMPLERS, param_specs

widgets.ensure_router()

DEFAULTS = SampleSettings()
PARAMS = [
    widgets.Param("sampler", "s_sampler", DEFAULTS.sampler, choices=tuple(SAMPLERS)),
    widgets.Param("eps", "s_eps", DEFAULTS.step_size, 0.01, 2.0),
    widgets.Param("K", "s_steps", DEFAULTS.num_steps, 1, 5000),
    widgets.Param("chains", "s_chains", DEFAULTS.num_chains, 1, MAX_APP_CHAINS),
    widgets.Param("every", "s_every", DEFAULTS.record_every, 1, 500),
    widgets.Param("start", "s_start", DEFAULTS.start, choices=STARTS),
    widgets.Param("seed", "s_seed", DEFAULTS.seed, 0, widgets.MAX_UI_SEED),
]
# each sampler's own parameters (HMC's leapfrog_steps): in the URL and on the page only while it is chosen
OWN_PARAMS = {name: [(widgets.Param(param, f"s_{param}", default, spec.low, spec.high), spec)
                     for param, (default, spec) in param_specs(name).items()] for name in SAMPLERS}
OWN_NAMES = {p.name: p for own in OWN_PARAMS.values() for p, _ in own}
PARAMS += list(OWN_NAMES.values())
P = {p.name: p for p in PARAMS}
DATA_CODES_LIMIT = 10_000
CHAIN_GREY = "rgba(128, 128, 128, 0.4)"  # the energy chart reads on light and dark themes alike
MEAN_RED = "#e0303b"

loaded = widgets.model_picker()
url_messages = widgets.url_to_state(PARAMS, "sample")

st.title("Sample digits")
widgets.show_url_messages(url_messages)
data_codes = None
if st.session_state.get("s_start") == "data":  # before the widgets: without the data, the page (and URL) say noise
    found = widgets.data_codes(loaded, "train", DATA_CODES_LIMIT)
    if found is None:
        st.session_state["s_start"] = "noise"
        st.info("Starting from noise instead: random data codes need the training set.")
    else:
        data_codes = found[0]

# The output column comes first: on a narrow screen columns stack in this order, so the digits show before the controls.
output, controls = st.columns([2.2, 1], gap="large")
with controls:
    widgets.param_select(P["sampler"], "Sampler", format_func=lambda name: SAMPLERS[name].label,
                         help="; ".join(f"{info.label} {info.help}" for info in SAMPLERS.values()))
    own = [p for p, _ in OWN_PARAMS[st.session_state.s_sampler]]
    for p, spec in OWN_PARAMS[st.session_state.s_sampler]:
        widgets.param_slider(p, spec.label[:1].upper() + spec.label[1:], help=spec.help)
    widgets.param_slider(P["eps"], "Step size ε", step=0.01,
                         help="Noise scale of a Langevin step; the drift is ε²/2 times the energy gradient")
    widgets.param_slider(P["K"], "Steps K", step=1)
    widgets.param_slider(P["chains"], "Chains", step=1, help="One digit per chain")
    widgets.param_slider(P["every"], "Record every s steps", step=1, help="One animation frame per s steps")
    widgets.param_select(P["start"], "Start from", format_func={"noise": "noise", "data": "data codes"}.get,
                         help="Noise: codes drawn from N(0, I). Data codes: codes of random training digits")
    widgets.seed_input(P["seed"])
widgets.state_to_url([p for p in PARAMS if p.name not in OWN_NAMES or p in own])

s = st.session_state
with output:
    try:
        settings = SampleSettings(sampler=s.s_sampler, step_size=float(s.s_eps), num_steps=int(s.s_steps),
                                  num_chains=int(s.s_chains), record_every=int(s.s_every), start=s.s_start, seed=int(s.s_seed),
                                  sampler_params={p.name: s[p.key] for p in own})
        view = widgets.cached_sample_view(loaded, settings, data_codes)
    except RequestTooLarge as e:
        st.warning(f"That request is too large for the app: {e}.")
        st.stop()
    except ValueError as e:
        st.error(f"Cannot sample with these settings: {e}")
        st.stop()

    anim, final = st.columns(2)
    with anim:
        shown = widgets.plural(view.gif_chains, "chain") if view.gif_chains == view.num_chains else f"the first {view.gif_chains} chains"
        st.image(view.gif, caption=f"{shown} over {widgets.plural(view.steps_done, 'step')} ({widgets.plural(view.gif_frames, 'frame')})",
                 width="stretch")
        st.download_button("GIF", view.gif, icon=":material/download:", file_name="chains.gif", mime="image/gif", on_click="ignore")
    with final:
        samples = f"{widgets.plural(view.num_chains, 'sample')} after step {view.steps_done}"
        if view.num_chains > view.gif_chains and not st.session_state.get("s_show_all"):
            grid, caption = view.preview_png, f"{samples}: the first {view.gif_chains} shown"
        else:
            grid, caption = view.png, samples
        st.image(grid, caption=caption, width="stretch",
                 output_format="PNG")  # Streamlit would re-encode it as a JPEG: blurred binary digits
        buttons = st.container(horizontal=True, vertical_alignment="center")
        buttons.download_button("PNG", view.png, icon=":material/download:", file_name="samples.png", mime="image/png",
                                on_click="ignore", help="The whole grid")
        if view.num_chains > view.gif_chains:
            buttons.toggle(f"Show all {view.num_chains:,}", key="s_show_all",
                           help="Every chain's digit, smaller; open the picture full screen to zoom")

# the charts span the page below the pictures and controls
traces, accept = st.columns([3, 2])
with traces:
    fig = go.Figure()
    for c in range(view.energy_traces.shape[1]):
        fig.add_scatter(x=view.trace_steps, y=view.energy_traces[:, c], mode="lines", line=dict(width=1, color=CHAIN_GREY),
                        name=f"chain {c}", showlegend=False)
    fig.add_scatter(x=view.trace_steps, y=view.energy_mean, mode="lines", line=dict(width=3, color=MEAN_RED),
                    name=f"mean of {widgets.plural(view.num_chains, 'chain')}")
    fig.update_layout(title="Energy per chain", xaxis_title="step", yaxis_title="E(z)", height=320,
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(x=1, xanchor="right", y=1))
    st.plotly_chart(fig, key="energy_traces")
with accept:
    if SAMPLERS[settings.sampler].adjusted:
        st.metric(f"Mean {SAMPLERS[settings.sampler].label} acceptance", f"{view.mean_acceptance:.1%}",
                  help="The share of proposals the Metropolis-Hastings test accepts; far below half means ε is too large")
        fig = go.Figure(go.Scatter(x=view.trace_steps, y=view.acceptance_mean, mode="lines"))
        fig.update_layout(title="Acceptance (mean over chains)", xaxis_title="step",
                          yaxis=dict(range=[0, 1.02]), height=250, margin=dict(l=10, r=10, t=40, b=10))
        st.plotly_chart(fig, key="acceptance")
    else:
        st.metric("Acceptance", "100%", help="ULA takes every step; switch to MALA to see the Metropolis test at work")
        st.caption("ULA is biased for finite ε: large steps blur the landscape. MALA corrects this exactly.")
st.caption("The URL holds these settings: copy it to share this exact sample.")
