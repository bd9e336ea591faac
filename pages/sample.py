"""Sample: run Langevin chains on the chosen model and watch digits form; compare the samplers."""

import plotly.graph_objects as go
import streamlit as st

import widgets
from ebm.compare import CompareSettings
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
    widgets.Param("compare", "s_compare", False, choices=(False, True)),
]
# each sampler's own parameters (HMC's leapfrog_steps): in the URL and on the page only while it is chosen
OWN_PARAMS = {name: [(widgets.Param(param, f"s_{param}", default, spec.low, spec.high), spec)
                     for param, (default, spec) in param_specs(name).items()] for name in SAMPLERS}
OWN_NAMES = {p.name: p for own in OWN_PARAMS.values() for p, _ in own}
PARAMS += list(OWN_NAMES.values())
P = {p.name: p for p in PARAMS}
DATA_CODES_LIMIT = 10_000
COMPARE = CompareSettings()



def use_sampler_step_size() -> None:
    """A newly chosen sampler starts from its own ε (HMC's 0.3 accepts ~70% where MALA's 0.5 gives it ~20%)."""
    st.session_state["s_eps"] = SAMPLERS[st.session_state["s_sampler"]].step_size


loaded = widgets.model_picker()
url_messages = widgets.url_to_state(PARAMS, "sample")

st.title("Sample digits" if loaded.dataset == "mnist" else "Sample clothes")  # the two shipped datasets
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
                         help="; ".join(f"{info.label} {info.help}" for info in SAMPLERS.values()),
                         on_change=use_sampler_step_size)
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
                                  num_chains=int(s.s_chains), record_every=int(s.s_every), start=s.s_start,
                                  seed=int(s.s_seed),
                                  sampler_params={p.name: s[p.key] for p in own})
        view = widgets.cached_sample_view(loaded, settings, data_codes, live=True)  # frames and a Stop button meanwhile
    except widgets.Stopped as stop:
        widgets.stopped_sample(stop)
        st.stop()
    except RequestTooLarge as e:
        st.warning(f"That request is too large for the app: {e}.")
        st.stop()
    except ValueError as e:
        st.error(f"Cannot sample with these settings: {e}")
        st.stop()

    anim, final = st.columns(2)
    with anim:
        shown = (widgets.plural(view.gif_chains, "chain") if view.gif_chains == view.num_chains
                 else f"the first {view.gif_chains} chains")
        steps, frames = widgets.plural(view.steps_done, "step"), widgets.plural(view.gif_frames, "frame")
        st.image(view.gif, caption=f"{shown} over {steps} ({frames})", width="stretch")
        st.download_button("GIF", view.gif, icon=":material/download:", file_name="chains.gif", mime="image/gif",
                           on_click="ignore")
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
    fig = widgets.energy_chart(view.trace_steps, view.energy_traces, view.energy_mean, view.num_chains)
    st.plotly_chart(fig, key="energy_traces")
with accept:
    if SAMPLERS[settings.sampler].adjusted:
        st.metric(f"Mean {SAMPLERS[settings.sampler].label} acceptance", f"{view.mean_acceptance:.1%}",
                  help="The share of proposals the Metropolis-Hastings test accepts; "
                       "far below half means ε is too large")
        fig = go.Figure(go.Scatter(x=view.trace_steps, y=view.acceptance_mean, mode="lines"))
        fig.update_layout(title="Acceptance (mean over chains)", xaxis_title="step",
                          yaxis=dict(range=[0, 1.02]), height=250, margin=dict(l=10, r=10, t=40, b=10))
        st.plotly_chart(fig, key="acceptance")
    else:
        st.metric("Acceptance", "100%", help="ULA takes every step; switch to MALA to see the Metropolis test at work")
        st.caption("ULA is biased for finite ε: large steps blur the landscape. MALA corrects this exactly.")

st.subheader("Compare the samplers")
st.caption(f"Every sampler from the same {COMPARE.num_chains} noise starts and seed, {COMPARE.num_steps} steps at this "
           f"step size ε, the first {COMPARE.burn_in} dropped: how well each mixes (the effective sample size of its "
           "worst latent dim, per second) and how close it gets to the exact marginals, which the grid quadrature "
           "gives (the Wasserstein-1 distance of each dim).")
if st.toggle("Run every sampler", key="s_compare", persist_state="session",
             help="Runs every sampler for a few seconds; the result is kept for these settings"):
    widgets.comparison_view(widgets.cached_comparison(loaded, CompareSettings(step_size=settings.step_size,
                                                                              seed=settings.seed)))
st.caption("The URL holds these settings: copy it to share this exact sample.")
