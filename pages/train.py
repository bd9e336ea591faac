"""Train: both stages in a background worker, watched live; the result is saved as a new run."""

import math
import time
from dataclasses import fields

import plotly.graph_objects as go
import streamlit as st

import widgets
from ebm import calibration, jobs, runs
from ebm.images import image_grid
from ebm.limits import frame_indices
from ebm.training import TrainConfig, too_short_for_digits
from ebm.validation import spec

widgets.ensure_router()

DEFAULTS = TrainConfig(negatives_every=50)
CHART_POINTS = 200  # per series; the whole run's 1,600 events took 45 ms per chart, 4 charts a refresh
REFRESH_S = 2.0  # the live panel's period

# the fields of each part of the form; labels, ranges and help are TrainConfig's (`spec`), defaults DEFAULTS'
STAGE1 = ("ae_epochs", "ae_hidden_dim", "latent_dim", "ae_batch_size", "ae_lr", "ae_latent_noise", "ae_code_penalty",
          "ae_conv_channels")  # and ae_architecture, a choice (`choice_field`)
STAGE2 = ("ebm_iterations", "ebm_hidden_dim", "ebm_layers", "ebm_tilt_sigma", "ebm_batch_size", "ebm_lr", "mcmc_steps",
          "mcmc_step_size", "target_acceptance", "buffer_size", "reinit_prob", "energy_reg", "grad_clip",
          "ebm_likelihood_iterations", "likelihood_proposals")


def number_field(name: str) -> float | int:
    """A number input for TrainConfig field `name`, within the range the config declares for a form."""
    s = spec(TrainConfig, name)
    low, high = s.form_range
    default = getattr(DEFAULTS, name)
    help_ = s.help or None
    if s.kind == "int":
        return st.number_input(s.label, int(low), int(high), int(default), int(s.step or 1), key=f"t_{name}",
                               help=help_)
    return st.number_input(s.label, float(low), float(high), float(default), format="%g", key=f"t_{name}", help=help_,
                           step=s.step or (float(10 ** math.floor(math.log10(default))) / 10 if default > 0 else 0.01))


def choice_field(name: str) -> str:
    """A segmented control for TrainConfig choice field `name` (the sampler, the autoencoder's architecture)."""
    s = spec(TrainConfig, name)
    return st.segmented_control(s.label, s.choices, default=getattr(DEFAULTS, name), key=f"t_{name}", required=True,
                                format_func=str.upper, help=s.help or None)


def stage_fields(names: tuple[str, ...], ncols: int) -> dict:
    """One number field per hyperparameter of a stage, `ncols` a row (rows of columns, so that a
    phone, which stacks the columns, keeps the fields in their order)."""
    values = {}
    for start in range(0, len(names), ncols):
        for col, name in zip(st.columns(ncols), names[start:start + ncols]):
            with col:
                values[name] = number_field(name)
    return values


def config_fields() -> TrainConfig:
    """The hyperparameter fields and the config they make; no form, so that the cost shown
    next to Start follows every change."""
    with st.container(border=True):
        top = st.columns(4)
        dataset = spec(TrainConfig, "dataset")
        values = {
            "dataset": top[0].selectbox(dataset.label, dataset.choices, key="t_dataset",
                                        format_func=widgets.DATASET_LABELS.get),
            "seed": None,
        }
        with top[1]:
            values["seed"] = number_field("seed")
        with top[2]:
            values["negatives_every"] = number_field("negatives_every")
        with top[3]:
            values["device"] = widgets.device_picker("t_device")
        # one stage under the other, four fields a row: side by side, the fields were too narrow at 1200 px
        with st.container(key="stage_1"):
            st.markdown("**Stage 1 · autoencoder** (binary cross-entropy, noisy codes)")
            values["ae_architecture"] = choice_field("ae_architecture")
            values.update(stage_fields(STAGE1, 4))
        with st.container(key="stage_2"):
            st.markdown("**Stage 2 · energy net** (persistent contrastive divergence; "
                        "then the exact likelihood for the last iterations)")
            values.update(stage_fields(STAGE2, 4))
            values["sampler"] = choice_field("sampler")
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in known})


def start_row(cfg: TrainConfig, running: bool) -> bool:
    """Start, with what `cfg` costs next to it: its time on this server, or why the server refuses it
    (then Start is disabled); then a warning when it is too short to give digits. True when pressed."""
    try:
        jobs.check_app_training(cfg)
        refusal = None
    except ValueError as e:
        refusal = widgets.server_message(e)
    button, cost = st.columns([1, 3], vertical_alignment="center")
    pressed = button.button("Start training", icon=":material/play_arrow:", type="primary", key="start_training",
                            disabled=running or refusal is not None)
    if refusal is not None:
        cost.error(f"Cannot start: {refusal}")
    elif not running:  # timing the settings next to a running training would slow it and mismeasure both
        with cost, st.spinner("Timing these settings on this server…"):
            seconds = calibration.estimate_seconds(cfg)
        cost.caption(f"About {fmt_duration(seconds)} on this server", help="Timed from a few batches and "
                     "iterations of these widths on this server, scaled to the whole training")
    short = too_short_for_digits(cfg)
    if short:
        st.warning(f"These settings are too short to give digits: {'; '.join(short)}.")
    return pressed


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


def fmt_duration(seconds: float) -> str:
    """'40 s', '4 min', '1.5 h': a rough duration, as an estimate deserves."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def loss_chart(events: list[dict], keys: dict[str, str], title: str, key: str) -> None:
    """A plotly chart of the named losses over steps; sparse series (one point per epoch) get markers."""
    fig = go.Figure()
    for k, label in keys.items():
        points = [(e["step"], e["losses"][k]) for e in events if k in e["losses"]]
        if points:  # thinned: building a plotly figure costs the training thread GIL time per point
            x, y = zip(*(points[i] for i in frame_indices(len(points), CHART_POINTS)))
            fig.add_scatter(x=x, y=y, name=label, mode="lines+markers" if len(points) <= 30 else "lines")
    fig.update_layout(title=dict(text=title, font=dict(size=13)), height=230, margin=dict(l=10, r=10, t=35, b=10),
                      xaxis_title="step", showlegend=len(keys) > 1,
                      legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    st.plotly_chart(fig, key=key)


def state_line(snap: jobs.JobSnapshot) -> str:
    """What the job is doing, or how and when (server time) it ended."""
    if snap.active:
        return f":material/hourglass_top: {snap.state}"
    label = {"finished": ":material/check_circle: finished", "stopped": ":material/stop_circle: stopped",
             "failed": ":material/error: failed"}[snap.state]
    saved = " (what was trained is saved)" if snap.state == "stopped" and snap.run_path is not None else ""
    return f"{label} at {time.strftime('%H:%M:%S %Z', time.localtime(snap.ended_at))}{saved}"


def remaining_label(snap: jobs.JobSnapshot) -> str:
    if not snap.active:
        return "—"
    return "estimating…" if snap.stage_remaining is None else fmt_seconds(snap.stage_remaining)


def show_live(snap: jobs.JobSnapshot, me: str) -> None:
    """The job's state, clocks, progress and charts; Stop only for the session that started it."""
    cfg = snap.config
    head = st.columns([2, 1, 1, 1])
    dataset = widgets.DATASET_LABELS.get(cfg["dataset"], cfg["dataset"])
    head[0].markdown(f"**Training on {dataset}** · {state_line(snap)}")
    head[1].metric("Elapsed" if snap.active else "Ran for", fmt_seconds(snap.elapsed))
    head[2].metric("Stage remaining", remaining_label(snap),
                   help="Estimated from this stage's pace, once a few percent of it or half a minute has run")
    with head[3]:
        if snap.active and snap.owner != me:
            st.caption("Started by another visitor: you can watch it here, and only they can stop it.")
        elif snap.active and st.button("Stop", icon=":material/stop:", key="stop_training",
                                       disabled=snap.state in ("stopping", "saving"),
                                       help="Stop now (within a batch or a few Langevin steps) "
                                            "and save what was trained as a new run"):
            jobs.get_job(snap.id).stop(by=me)
            st.rerun(scope="fragment")

    p1 = snap.progress.get("autoencoder", 0.0)
    p2 = snap.progress.get("energy", 0.0)
    stage1 = "skipped (0 epochs)" if cfg["ae_epochs"] == 0 else f"{p1:.0%}"
    st.progress(min(p1, 1.0), text=f"Stage 1 · autoencoder: {stage1}")
    st.progress(min(p2, 1.0), text=f"Stage 2 · energy net: {p2:.0%}")

    if snap.error:
        st.error(widgets.server_message(snap.error))
    if snap.unsaved_model is not None:
        st.download_button("Download the trained model", snap.unsaved_model, file_name=f"{snap.id}.safetensors",
                           mime="application/octet-stream", key=f"dl_unsaved_{snap.id}", on_click="ignore",
                           icon=":material/download:", type="primary",
                           help="It is only in this server's memory: download it before the server restarts")
    for message in snap.messages[-3:]:
        st.warning(message)

    ae = snap.series("autoencoder")
    en = snap.series("energy")
    charts, negs = st.columns([3, 1])
    with charts:
        c1, c2 = st.columns(2)
        with c1:
            loss_chart(ae, {"train_bce": "train", "test_bce": "test"}, "Autoencoder BCE per image (nats)", "chart_ae")
        with c2:
            loss_chart(en, {"cd_loss": "E(data) − E(negatives)"}, "Contrastive loss", "chart_cd")
        c3, c4 = st.columns(2)
        with c3:
            loss_chart(en, {"energy_data": "data", "energy_negatives": "negatives"}, "Mean energy: data vs negatives",
                       "chart_energy")
        with c4:
            loss_chart(en, {"acceptance": "acceptance"}, "Acceptance of the negatives' Langevin steps", "chart_acc")
    with negs:
        st.caption("Decoded negatives")
        if snap.negatives is not None:
            st.image(image_grid(snap.negatives > 0.5, ncols=4, scale=2), output_format="PNG",
                     caption=f"iteration {snap.negatives_step}", width="stretch")
        else:
            st.caption("(appear during stage 2)")

    if snap.run_path is not None:
        st.success(f"Saved as run **{widgets.echo(snap.run_path.parent.name)}**. "
                   "Pick it in the sidebar's Model menu on the Sample and Explorer pages.")
        b1, b2 = st.columns([1, 3])
        with b1:
            widgets.download_run_button(snap.run_path, key=f"dl_{snap.id}")
        with b2:
            if st.button("Sample from it", icon=":material/auto_awesome:", key=f"use_{snap.id}"):
                st.session_state["model_choice"] = snap.run_path.parent.name
                st.switch_page("pages/sample.py")


st.title("Train your own model")
me = widgets.session_id()
job = jobs.latest_job()
active = job is not None and job.active

if active and job.owner != me:
    st.info("A training is already running (started in another session or tab). You can watch it below; "
            "a new training can start when it ends.")


@st.fragment(run_every=REFRESH_S if active else None)
def live_panel() -> None:
    current = jobs.latest_job()
    if current is None:
        st.caption("No training yet in this server session. Set the hyperparameters below and press Start; "
                   "the training runs in the background, so you can switch pages and come back.")
        return
    snap = current.snapshot()
    show_live(snap, me)
    if active and not snap.active:  # it just ended: rerun the page to enable Start and list the new run
        st.rerun()


live_panel()


st.subheader("New training")
if active:
    st.caption("Start is disabled while a training runs: one training at a time per server.")
cfg = config_fields()
if start_row(cfg, running=active):
    try:
        jobs.start_training(cfg, owner=me)
    except jobs.JobAlreadyRunning as e:
        st.warning(str(e).capitalize())
    except runs.RunsDirError as e:
        st.error(f"Cannot start: the runs folder {widgets.server_message(e.reason)}, so the trained model could not "
                 "be saved; set the server's `EBM_RUNS_DIR` to a writable folder with free space.")
    except ValueError as e:
        st.error(f"Cannot start: {widgets.server_message(e)}")
    else:
        st.rerun()

st.divider()
saved = runs.list_runs()
with st.expander(f"Saved runs ({len(saved)})", expanded=False):
    if not saved:
        st.caption("None yet.")
    for r in saved[:20]:
        c1, c2 = st.columns([4, 1], vertical_alignment="center")
        c1.markdown(f"**{widgets.echo(r.label, 80)}** · {widgets.run_summary(r)} · "
                    f"{r.size / 1e6:.1f} MB · {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.mtime))}")
        with c2:
            widgets.download_run_button(r.path, label="Download", key=f"dl_run_{r.name}")
