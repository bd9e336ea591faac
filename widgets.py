"""Widgets and cached loaders shared by the app's pages.

Pages stay thin: they lay out widgets and plots, and everything they compute goes through
the cached functions here into the `ebm` package. Torch objects are not hashable, so cached
functions take them as leading-underscore arguments next to an explicit hashable key
(a model's key is its file path + mtime, or an upload's sha256).

Query parameters: settings that define a result live in the URL (`st.query_params`) so a
view can be shared. `url_to_state` reads them once per page and session, clamping or
ignoring bad values with a message; `state_to_url` writes the current values back.

Text from outside that a page shows back (URL values, file and run names) goes through
`echo`, and the core's error messages through `server_message`: cut short, escaped for
Markdown, and without the server's paths.
"""

from __future__ import annotations

import gc
import hashlib
import math
import random
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from ebm import jobs
from ebm import runs as runs_mod
from ebm.checkpoint import SHIPPED_MODELS, WeightsError, load_model, model_from_bytes
from ebm.classifier import MnistClassifier, load_classifier
from ebm.compare import CompareSettings, Comparison, compare_samplers
from ebm.compare import table as compare_table
from ebm.conditioning import (
    ClassSettings,
    LatentClassifier,
    latent_classifier_path,
    load_latent_classifier,
    train_latent_classifier,
)
from ebm.data import DatasetError, default_data_dir, load_binarized
from ebm.energies import INPAINTING
from ebm.generate import SampleSettings, sampling_problem
from ebm.images import image_grid
from ebm.landscape import Marginals, grid_resolution, marginal_densities
from ebm.limits import check_app_architecture, check_request_size, energy_step_macs
from ebm.models import LatentEBM
from ebm.playground import (
    COMPOSE_SAMPLE,
    ComposeView,
    InpaintView,
    RepairSettings,
    compose_view,
    inpaint_view,
    repair_view,
)
from ebm.preprocess import preprocess_array, preprocess_bytes
from ebm.render import BirthSettings, BirthView, LiveFrame, SampleView, birth_view, sample_view
from ebm.samplers import SAMPLERS
from ebm.scheduler import QUEUED, Progress, Scheduler, Ticket, Work
from ebm.scoring import ScoreReference, build_reference, prior_log_z, score_images
from ebm.threads import limit_blas_threads, limit_torch_threads, serving_slots, set_chain_threads, sync_torch_threads

try:  # what Streamlit raises in a script thread whose session asked for a rerun
    from streamlit.runtime.scriptrunner_utils.exceptions import RerunException
except ImportError:  # pragma: no cover -- older layout
    from streamlit.runtime.scriptrunner import RerunException

MAX_UI_SEED = 2**31 - 1  # browsers keep integers exact only up to 2**53; 2**31 is plenty of seeds
SHIPPED = "shipped"  # the picker's choice (and `model=` in the URL) for the shipped MNIST model
SHIPPED_CHOICES = {(SHIPPED if dataset == "mnist" else f"shipped-{dataset}"): dataset for dataset in SHIPPED_MODELS}
UPLOAD_PREFIX = "upload:"
DATASET_LABELS = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
ECHO_LIMIT = 40  # characters of a URL value or a name shown back
MAX_SESSION_UPLOADS = 3  # uploaded models a session keeps (each up to server.maxUploadSize); older ones are dropped
MESSAGE_LIMIT = 400  # characters of an error message that quotes one
_ASCII_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
_ADDRESS_START = re.compile(r"(?i)(https?(?=:)|www(?=\.)|(?=@))")  # where GFM starts a link in plain text
WORD_JOINER = "\u2060"


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """Text from outside (a URL value, a file or run name, a message quoting one) made safe for
    Markdown, which st.warning, st.error and the others render.

    Runs of whitespace and control characters become one space, the text is cut to `limit`
    characters (with an ellipsis), and every ASCII punctuation character is backslash-escaped,
    which CommonMark allows for all of them. Streamlit still links web and mail addresses in
    escaped text (GFM's literal autolinks look at the text after parsing), so an invisible
    word joiner goes after "http", "https" and "www" and before "@". The text shows as written,
    with no link, image, emphasis, code span, coloured text or maths made from it.
    """
    text = " ".join("".join(c if c.isprintable() else " " for c in str(value)).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _ASCII_PUNCTUATION.sub(r"\\\1", _ADDRESS_START.sub(rf"\1{WORD_JOINER}", text))


def server_message(error: object) -> str:
    """An error from the core, for a page: the data and runs folders by name, never by server
    path, and the rest shown as written (see `echo`)."""
    text = str(error)
    for folder in (default_data_dir().resolve(), runs_mod.default_runs_dir().resolve()):
        if folder.name:  # not the file system's root
            text = text.replace(str(folder), folder.name)
    return echo(text, MESSAGE_LIMIT)


# ---- routing -------------------------------------------------------------------------------------
def configure_process() -> int:
    """Per script run: one native thread per worker, chains unsplit. This server uses its cores by
    running requests side by side (`ebm.scheduler`), which stays fair when other work shares the
    machine (`ebm.threads`). Streamlit runs each script run in its own thread, and OpenMP keeps
    its limit per thread, so this is called on every run; it is idempotent and cheap.
    Returns torch's thread count.
    """
    _configure_once()
    set_chain_threads(1)
    return limit_torch_threads()


@st.cache_resource(show_spinner=False)
def _configure_once() -> None:
    """Once per process: BLAS to one thread (`ebm.kernels` does it again for the BLAS it loads),
    and hide what the imports made (about 500k objects) from the garbage collector, whose full
    passes would otherwise scan it all again, holding the GIL."""
    limit_blas_threads()
    gc.freeze()


def ensure_router() -> None:
    """Make sure this page runs under app.py's `st.navigation`; call it first thing on every page.

    Streamlit keeps a legacy mode for apps with a `pages/` folder next to the main script: on a
    fresh server whose first visitor opens a page URL directly (e.g. a shared /sample?... link),
    it runs that page file alone, without app.py's page config, thread setting and navigation
    menu, until some session runs app.py. Switching that mode off and rerunning lets app.py
    route the same URL (page url_paths equal the file names, so the page is found again).
    Only a session's first run is rerun: that is a page load, so no button click is lost
    (AppTest re-enables the mode before every run, clicks included).
    """
    configure_process()
    first_run = not st.session_state.get("_router_checked")
    st.session_state["_router_checked"] = True
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without the legacy mode
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        if first_run:
            st.rerun()


# ---- query parameters ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """A setting kept in the URL: name in the URL, widget key, default, and what values are valid."""

    name: str
    key: str
    default: Any
    lo: float | None = None  # numbers: inclusive range
    hi: float | None = None
    choices: tuple | None = None  # choices: valid values
    parse: Callable[[str], Any] | None = None  # any other value: the core's validator (ValueError when invalid)

    @property
    def kind(self) -> str:
        """'choice', 'parsed', 'int' or 'float': how a URL value is parsed."""
        if self.choices is not None:
            return "choice"
        if self.parse is not None:
            return "parsed"
        return "int" if isinstance(self.default, int) else "float"


def parse_param(param: Param, raw: str) -> tuple[Any, str | None]:
    """Turn a URL value into a valid setting: (value, None), (clamped value, message) or (None, message)."""
    raw = str(raw).strip()
    shown = echo(raw)
    if param.kind == "choice":
        lookup = {str(c).lower(): c for c in param.choices}
        if raw.lower() in lookup:
            return lookup[raw.lower()], None
        return None, f"{param.name}={shown} in the URL is not one of {', '.join(map(str, param.choices))}; ignored"
    if param.kind == "parsed":
        try:
            return param.parse(raw), None
        except ValueError as e:
            return None, f"{param.name}={shown} in the URL is not valid ({server_message(e)}); ignored"
    try:
        number = float(raw)
    except ValueError:
        return None, f"{param.name}={shown} in the URL is not a number; ignored"
    if not math.isfinite(number):
        return None, f"{param.name}={shown} in the URL is not a finite number; ignored"
    if param.kind == "int":
        if number != int(number):
            return None, f"{param.name}={shown} in the URL is not a whole number; ignored"
        number = int(number)
    if param.lo is not None and number < param.lo:
        return type(param.default)(param.lo), f"{param.name}={shown} in the URL is below the minimum; using {param.lo}"
    if param.hi is not None and number > param.hi:
        return type(param.default)(param.hi), f"{param.name}={shown} in the URL is above the maximum; using {param.hi}"
    return number, None


def url_to_state(params: Sequence[Param], page: str) -> list[str]:
    """On a page's first run in this session, copy valid URL values into the widgets' state.

    Every param's widget key gets its default if it has no value yet. Returns the messages
    about URL values that were clamped or ignored, until the user changes one of the settings.
    """
    flag = f"_url_loaded_{page}"
    if not st.session_state.get(flag):
        messages = []
        for p in params:
            if p.name in st.query_params:
                value, message = parse_param(p, st.query_params[p.name])
                if message:
                    messages.append(message)
                if value is not None:
                    st.session_state[p.key] = value
        st.session_state[flag] = True
        st.session_state[f"_url_messages_{page}"] = messages
    for p in params:
        if p.key not in st.session_state:
            st.session_state[p.key] = p.default
    # the messages stay until the user changes one of these settings
    current = tuple(st.session_state[p.key] for p in params)
    snapshot = st.session_state.setdefault(f"_url_snapshot_{page}", current)
    if current != snapshot:
        st.session_state[f"_url_messages_{page}"] = []
    return st.session_state.get(f"_url_messages_{page}", [])


def state_to_url(params: Sequence[Param], keep: Sequence[str] = ("model",)) -> None:
    """Write the widgets' current values into the URL; drop parameters that belong to other pages."""
    names = {p.name for p in params} | set(keep)
    for stale in [k for k in st.query_params if k not in names]:
        del st.query_params[stale]
    for p in params:
        value = st.session_state.get(p.key, p.default)
        if isinstance(value, (list, tuple)):
            text = ",".join(map(str, value))
        else:
            text = f"{value:g}" if isinstance(value, float) else str(value)
        if st.query_params.get(p.name) != text:
            st.query_params[p.name] = text


def show_url_messages(messages: Sequence[str]) -> None:
    """One warning listing the URL values that were clamped or ignored."""
    if messages:
        st.warning("Some settings in the link could not be used:\n\n" + "\n".join(f"- {m}" for m in messages))


def param_slider(param: Param, label: str, **kwargs) -> Any:
    """A slider whose range is the param's range, so URL values and the widget agree."""
    return st.slider(label, param.lo, param.hi, key=param.key, persist_state="session", **kwargs)


def param_select(param: Param, label: str, **kwargs) -> Any:
    """A segmented control for a choice kept in the URL."""
    return st.segmented_control(label, param.choices, key=param.key, required=True, persist_state="session", **kwargs)


def param_number(param: Param, label: str, **kwargs) -> Any:
    """A number input for a setting kept in the URL, within its bounds."""
    return st.number_input(label, param.lo, param.hi, key=param.key, persist_state="session", **kwargs)


def seed_input(param: Param, label: str = "Seed", resample_label: str = "Resample") -> int:
    """A seed box with a button that draws a new seed (and so a new sample)."""

    def new_seed() -> None:
        st.session_state[param.key] = random.randint(int(param.lo), int(param.hi))

    # the button keeps its whole label; it wraps below if need be
    with st.container(horizontal=True, vertical_alignment="bottom"):
        seed = param_number(param, label, step=1, width="stretch")
        st.button(resample_label, icon=":material/casino:", on_click=new_seed, help="Draw again with a new random seed")
    return seed


def device_picker(key: str = "device") -> str:
    """CPU, or CUDA when this server has a GPU."""
    options = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return st.selectbox("Device", options, key=key,
                        help="Training runs on this device; CUDA is listed only when available")


def plural(n: int, word: str) -> str:
    """'1 chain', '64 chains', '1,024 chains'."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def run_summary(run: runs_mod.RunInfo) -> str:
    """'MNIST · 12 epochs, 1,550 of 5,000 iterations · stopped early': what a run was trained for."""
    parts = []
    for word, (done, planned) in run.trained().items():
        if planned is None:
            parts.append(f"? {word}")
        elif done == planned:
            parts.append(plural(planned, word[:-1]))
        else:
            parts.append(f"{'?' if done is None else f'{done:,}'} of {plural(planned, word[:-1])}")
    stopped = " · stopped early" if run.extra.get("stopped_early") else ""
    return f"{echo(DATASET_LABELS.get(run.dataset, run.dataset))} · {', '.join(parts)}{stopped}"


# ---- models -------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A model as the pages use it: the net, its metadata, a cache key and a label."""
    model: LatentEBM
    meta: dict
    key: tuple  # hashable cache key: ("file", path, mtime_ns) or ("upload", sha256)
    label: str
    choice: str  # "shipped", a run name, or "upload:<sha256>"

    @property
    def dataset(self) -> str:
        """The dataset the model was trained on."""
        return str(self.meta.get("dataset", "mnist"))

    @property
    def threshold(self) -> float:
        """The binarization threshold of its training data."""
        return float(self.meta.get("threshold", 0.5))


@st.cache_resource(max_entries=8, show_spinner="Loading model…")
def _load_file_model(path: str, mtime_ns: int, name: str) -> tuple[LatentEBM, dict]:
    return load_model(path, name=name, check_architecture=check_app_architecture)


@st.cache_resource(max_entries=8, show_spinner="Loading model…")
def _load_upload_model(digest: str, _data: bytes, name: str) -> tuple[LatentEBM, dict]:
    return model_from_bytes(_data, name=name, check_architecture=check_app_architecture)


@st.cache_resource(max_entries=16, show_spinner="Checking the model…")
def _sampling_problem(key: tuple, _model: LatentEBM) -> str | None:
    return sampling_problem(_model)


def load_file_model(path: str | Path, name: str | None = None) -> LoadedModel:
    """A weights file, cached by path and mtime; its errors call it `name` (default: the file name), not its path."""
    path = Path(path)
    mtime = path.stat().st_mtime_ns
    model, meta = _load_file_model(str(path.resolve()), mtime, name or path.name)
    return LoadedModel(model, meta, ("file", str(path.resolve()), mtime), path.name, SHIPPED)


def shipped_model(dataset: str = "mnist") -> LoadedModel:
    """The weights that ship with the app for a dataset (`ebm.checkpoint.SHIPPED_MODELS`)."""
    path = SHIPPED_MODELS[dataset]
    loaded = load_file_model(path)
    loaded.label = f"shipped ({path.name})"
    loaded.choice = next(choice for choice, d in SHIPPED_CHOICES.items() if d == dataset)
    return loaded


def _on_upload() -> None:
    """Check an uploaded weights file; a good one is selected, a bad one leaves the model as it was."""
    file = st.session_state.get("model_upload")
    if file is None:
        st.session_state.pop("upload_error", None)
        return
    data = file.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    try:
        _load_upload_model(digest, data, file.name)  # checked once, and cached for the pages that use it
    except WeightsError as e:
        st.session_state["upload_error"] = str(e)
        return
    st.session_state.pop("upload_error", None)
    uploads = st.session_state.setdefault("uploads", {})
    uploads.pop(digest, None)
    uploads[digest] = (file.name, data)  # the newest last
    while len(uploads) > MAX_SESSION_UPLOADS:
        del uploads[next(iter(uploads))]
    st.session_state["model_choice"] = UPLOAD_PREFIX + digest


def model_picker() -> LoadedModel:
    """Sidebar: pick shipped weights (MNIST or Fashion-MNIST), a saved run, or an uploaded file; returns the model.

    The choice is kept across pages and, for the shipped model and runs, in the URL (`model=`).
    A choice that cannot be loaded falls back to the shipped model with a message.
    """
    runs = {r.name: r for r in runs_mod.list_runs()}
    uploads: dict = st.session_state.setdefault("uploads", {})
    shipped = [choice for choice, dataset in SHIPPED_CHOICES.items() if SHIPPED_MODELS[dataset].is_file()]
    options = shipped + list(runs) + [UPLOAD_PREFIX + d for d in uploads]

    if not st.session_state.get("_url_loaded_model"):
        st.session_state["_url_loaded_model"] = True
        wanted = st.query_params.get("model")
        if wanted is not None:
            if wanted in options and not wanted.startswith(UPLOAD_PREFIX):
                st.session_state["model_choice"] = wanted
            else:
                st.session_state["_model_message"] = (f"The model {echo(wanted)} from the link was not found; "
                                                      "using the shipped model")
    if st.session_state.get("model_choice") not in options:
        st.session_state["model_choice"] = SHIPPED

    def label(choice: str) -> str:
        if choice in SHIPPED_CHOICES:
            return f"Shipped ({DATASET_LABELS[SHIPPED_CHOICES[choice]]}, 4-D)"
        if choice.startswith(UPLOAD_PREFIX):
            return f"Uploaded: {uploads[choice[len(UPLOAD_PREFIX):]][0]}"
        return f"Run {choice}"

    with st.sidebar:
        choice = st.selectbox("Model", options, format_func=label, key="model_choice", persist_state="session",
                              help="The shipped weights (MNIST digits or Fashion-MNIST clothes), runs trained on the "
                                   "Train page (saved under runs/), or your own file")
        if choice in runs:
            st.caption(run_summary(runs[choice]))
        with st.expander("Use your own weights"):
            st.file_uploader("Weights file (.safetensors)", type=["safetensors"], key="model_upload",
                             on_change=_on_upload,
                             help="A file saved by this app or `python -m ebm train`")
        if st.session_state.get("upload_error"):
            reason = server_message(st.session_state["upload_error"])
            st.error(f"That file cannot be used: {reason}. Keeping the previous model.")
        message = st.session_state.pop("_model_message", None)
        if message:
            st.warning(message)

    problem = None
    try:
        if choice in SHIPPED_CHOICES:
            loaded = shipped_model(SHIPPED_CHOICES[choice])
        elif choice.startswith(UPLOAD_PREFIX):
            digest = choice[len(UPLOAD_PREFIX):]
            name, data = uploads[digest]
            model, meta = _load_upload_model(digest, data, name)
            loaded = LoadedModel(model, meta, ("upload", digest), name, choice)
        else:
            loaded = load_file_model(runs[choice].path, name=choice)
            loaded.label, loaded.choice = choice, choice
    except WeightsError as e:  # it names the run or file, never a server path
        problem = str(e)
    except OSError as e:  # its message would hold the server path
        problem = e.strerror or type(e).__name__
    if problem is not None:
        st.sidebar.error(f"Could not load {echo(label(choice), MESSAGE_LIMIT)}: {server_message(problem)}. "
                         "Using the shipped model.")
        loaded = shipped_model()
    unusable = _sampling_problem(loaded.key, loaded.model)
    if unusable is not None:
        st.sidebar.warning(f"This model loads, but {unusable}: try another.", icon=":material/warning:")
    if loaded.choice.startswith(UPLOAD_PREFIX):
        st.query_params.pop("model", None)
    elif st.query_params.get("model") != loaded.choice:
        if loaded.choice == SHIPPED:
            st.query_params.pop("model", None)
        else:
            st.query_params["model"] = loaded.choice
    return loaded


# ---- data ---------------------------------------------------------------------------------------
@st.cache_resource(max_entries=4, show_spinner="Loading the dataset…")
def _load_dataset(name: str, split: str, threshold: float, download: bool,
                  data_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    return load_binarized(name, split, data_dir=data_dir, threshold=threshold, download=download)


def _dataset(name: str, split: str, threshold: float, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A split from the data directory ($EBM_DATA_DIR or data/), cached per directory."""
    return _load_dataset(name, split, threshold, download, str(default_data_dir().resolve()))


def dataset_or_message(name: str, split: str, threshold: float = 0.5,
                       key: str = "fetch") -> tuple[torch.Tensor, torch.Tensor] | None:
    """The binarized split if it is on disk, else None after showing why, with a button to download it."""
    try:
        return _dataset(name, split, threshold, False)
    except DatasetError as e:
        label = DATASET_LABELS.get(name, name)
        box = st.empty()  # the message and its button, cleared once the download has worked
        with box.container():
            st.info(f"This part needs the {label} {split} set, which is not on this server yet: "
                    "download it (about a minute), or skip this part.", icon=":material/download:")
            with st.expander("Details"):
                st.caption(server_message(e))
            download = st.button(f"Download {label}", key=f"{key}_{name}_{split}")
        if download:
            try:
                with st.spinner("Downloading…"):
                    data = _dataset(name, split, threshold, True)
            except DatasetError as e2:
                st.error(f"Download failed: {server_message(e2)}")
            else:
                box.empty()
                return data
        return None


@st.cache_resource(max_entries=8, show_spinner="Encoding the data…")
def _codes(model_key: tuple, _model: LatentEBM, name: str, split: str, threshold: float, limit: int,
           data_dir: str) -> torch.Tensor:
    images, _ = _load_dataset(name, split, threshold, False, data_dir)
    return _model.encode(images[:limit])


def data_codes(loaded: LoadedModel, split: str, limit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(codes, labels, images) of the first `limit` images of a split of the model's dataset.

    None (after showing why, with a download button) when the dataset is not on disk.
    """
    data = dataset_or_message(loaded.dataset, split, loaded.threshold, key=f"fetch_{split}")
    if data is None:
        return None
    images, labels = data
    data_dir = str(default_data_dir().resolve())
    codes = _codes(loaded.key, loaded.model, loaded.dataset, split, loaded.threshold, limit, data_dir)
    return codes, labels[:limit], images[:limit]


# ---- sampling and landscape: heavy work goes through the server's scheduler ---------------------------
def session_id() -> str:
    """A random id for this browser session (the scheduler's and the Train page's notion of "who")."""
    return st.session_state.setdefault("session_owner", uuid.uuid4().hex)


@st.cache_resource
def scheduler() -> Scheduler:
    """The server's one scheduler: a slot per core ($EBM_SERVING_SLOTS), less one while a training runs."""
    return Scheduler(capacity=lambda: serving_slots() - jobs.trainings_running())


class Stopped(Exception):
    """The visitor pressed Stop: `snapshot` is the last live view of the run (None if it had shown none)."""

    def __init__(self, snapshot: Any = None):
        super().__init__("stopped")
        self.snapshot = snapshot


STOPPED = "_stopped"  # session state: (key, last snapshot) of the run that was stopped


def scheduled(key: tuple, work: Work, total: int, what: str, live: Callable[[Any], None] | None = None) -> Any:
    """Run `work` through the scheduler for this session and return its result.

    While it waits, the page says how many requests are ahead; while it runs (past a moment),
    how far it is. A rerun (the user moved a slider) leaves the job to the next run, which
    takes it over or replaces it; anything else ending this run (the session closed) cancels it.

    With `live`, each new snapshot that the running job publishes is drawn by `live(snapshot)`
    (every session waiting on a shared job sees the same ones), and a Stop button ends this
    session's claim on it: `Stopped` is raised then, and on later runs for the same key, until
    `run_again` or a run for another key.
    """
    if live is not None and STOPPED in st.session_state:
        if st.session_state[STOPPED][0] == key:
            raise Stopped(st.session_state[STOPPED][1])  # a rerun of the stopped page: nothing runs until Run again
        del st.session_state[STOPPED]  # other settings: a stop is forgotten once they change
    ticket = scheduler().submit(key, session_id(), work, total)
    if ticket.wait(0.2):
        return ticket.result()
    status = st.empty()
    frame = st.empty()
    stop = st.empty()
    if live is not None:
        stop.button("Stop", key="live_stop", icon=":material/stop_circle:", on_click=stop_run,
                    args=(st.session_state, key, ticket), help="Stop these chains here; their last picture stays")
    drawn = None
    try:
        while not ticket.wait(0.25):  # every update also lets Streamlit stop or rerun this script
            if ticket.state == QUEUED:
                slots = scheduler().stats()["capacity"]
                status.info(f"Queued, {ticket.ahead} ahead: this server runs {slots} request{'s' * (slots != 1)} "
                            "at a time, in the order they came", icon=":material/hourglass_top:")
                continue
            status.progress(ticket.progress, text=f"{what}: {ticket.progress:.0%}")
            snapshot = ticket.snapshot
            if live is not None and snapshot is not None and snapshot is not drawn:
                with frame.container():
                    live(snapshot)
                drawn = snapshot
        return ticket.result()
    except RerunException:
        raise
    except BaseException:
        ticket.cancel()
        raise
    finally:
        status.empty()
        frame.empty()
        stop.empty()


def stop_run(state: Any, key: tuple, ticket: Ticket) -> None:
    """The Stop button's on_click, so it acts before the page runs again: end this session's claim on the job
    (it goes on while another session waits on it) and keep, in session `state`, where it got to. A job that
    has finished meanwhile is left alone: its result shows."""
    if not ticket.wait(0):
        state[STOPPED] = (key, ticket.snapshot)
        ticket.cancel()


def run_again() -> None:
    """Forget a stopped run, so that its settings run again (a button's on_click)."""
    st.session_state.pop(STOPPED, None)


def sample_key(loaded: LoadedModel, settings: SampleSettings, data_codes: torch.Tensor | None = None) -> tuple:
    """What a sampling request's result depends on: the scheduler's key for it."""
    from_data = settings.start == "data" and data_codes is not None
    data_key = str(default_data_dir().resolve()) if from_data else None  # the start codes come from there
    return ("sample", loaded.key, tuple(sorted(settings.as_dict().items())), data_key)


def cached_sample_view(loaded: LoadedModel, settings: SampleSettings, data_codes: torch.Tensor | None = None,
                       live: bool = False) -> SampleView:
    """Run (or fetch from the scheduler's cache) a sampling request, showing its place in the queue.

    `live`: show the chains as they go (`live_sample`) with a Stop button; raises `Stopped` when stopped.
    Raises `ebm.limits.RequestTooLarge` / ValueError for requests that cannot run.
    """
    s = settings
    # refused before it is queued; a step costs as many gradients as the sampler takes (HMC: L)
    check_request_size(s.num_chains, s.num_steps, energy_step_macs(loaded.model.energy.config) * s.gradients_per_step())
    codes = data_codes if s.start == "data" else None

    def work(progress: Progress) -> SampleView:
        return sample_view(loaded.model, s, codes, progress, progress.publish)

    return scheduled(sample_key(loaded, s, codes), work, s.num_steps, "Sampling", live=live_sample if live else None)


def cached_marginals(loaded: LoadedModel, extent: float = 5.0) -> Marginals:
    """The model's marginal densities and log Z by grid quadrature (about a second), through the scheduler."""
    return scheduled(("marginals", loaded.key, extent),
                     lambda should_stop: marginal_densities(loaded.model, extent=extent, should_stop=should_stop),
                     grid_resolution(loaded.model.latent_dim), "Integrating exp(-E) over the grid")


def cached_comparison(loaded: LoadedModel, settings: CompareSettings) -> Comparison:
    """Every sampler scored against the exact marginals (`ebm.compare`), through the scheduler like any heavy work."""
    marginals = cached_marginals(loaded)
    return scheduled(("compare", loaded.key, settings, marginals.extent, marginals.resolution),
                     lambda should_stop: compare_samplers(loaded.model, marginals, settings, should_stop),
                     len(SAMPLERS) * settings.num_steps, "Running every sampler")


def cached_birth_view(loaded: LoadedModel, settings: BirthSettings = BirthSettings()) -> BirthView:
    """The Home page's animation of chains settling into digits, made once per model through the scheduler."""
    return scheduled(("birth", loaded.key, settings),
                     lambda should_stop: birth_view(loaded.model, settings, should_stop),
                     settings.num_steps, "Letting the chains settle")


# ---- sampling views -------------------------------------------------------------------------------
CHAIN_GREY = "rgba(128, 128, 128, 0.4)"  # the energy chart reads on light and dark themes alike
MEAN_RED = "#e0303b"


def energy_chart(steps: np.ndarray, traces: np.ndarray, mean: np.ndarray, num_chains: int, height: int = 320):
    """Energy per chain (grey, the first chains, drawn as one trace with gaps: cheap to redraw live) and the mean
    over all `num_chains` (red), against the step."""
    gaps = np.full((1, traces.shape[1]), np.nan)
    xs = np.concatenate([np.broadcast_to(np.asarray(steps, dtype=float)[:, None], traces.shape), gaps]).T.ravel()
    ys = np.concatenate([traces, gaps]).T.ravel()
    fig = go.Figure()
    fig.add_scatter(x=xs, y=ys, mode="lines", line=dict(width=1, color=CHAIN_GREY), connectgaps=False,
                    name=f"first {plural(traces.shape[1], 'chain')}", showlegend=False)
    fig.add_scatter(x=steps, y=mean, mode="lines", line=dict(width=3, color=MEAN_RED),
                    name=f"mean of {plural(num_chains, 'chain')}")
    fig.update_layout(title="Energy per chain", xaxis_title="step", yaxis_title="E(z)", height=height,
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(x=1, xanchor="right", y=1))
    return fig


def live_sample(frame: LiveFrame, now: str = "Live") -> None:
    """A running sample: its shown chains' digits at `frame.steps_done`, and the energies so far. Laid out like the
    finished view's pictures, so the final one takes its place without a jump.

    The energy chart is Vega-Lite, not Plotly like the finished one: Streamlit remounts a Plotly chart whenever its
    figure changes (its element id hashes the figure), and a remount every frame would keep it blank on a slow
    browser, while a Vega-Lite chart without selections keeps its place and takes the new data.
    """
    digits, energy = st.columns(2)
    shown = plural(frame.shown, "chain") if frame.shown == frame.num_chains else f"the first {frame.shown} chains"
    digits.image(frame.png, caption=f"{now}: {shown} at step {frame.steps_done:,} of {frame.num_steps:,}",
                 width="stretch", output_format="PNG")
    n = frame.energy_traces.shape[1]
    chains, mean = f"first {plural(n, 'chain')}", f"mean of {plural(frame.num_chains, 'chain')}"
    series = np.repeat(np.arange(n + 1), len(frame.trace_steps))  # the chains', then the mean's points
    data = {"step": np.tile(frame.trace_steps, n + 1), "series": series, "line": np.where(series < n, chains, mean),
            "energy": np.concatenate([frame.energy_traces.T.ravel(), frame.energy_mean])}
    line = {"field": "line", "type": "nominal", "legend": None,  # the subtitle says which is which
            "scale": {"domain": [chains, mean], "range": [CHAIN_GREY, MEAN_RED]}}
    energy.vega_lite_chart(data, height=320, spec={
        "title": {"text": "Energy per chain", "anchor": "start", "subtitle": f"grey: {n} chains, red: the mean",
                  "subtitleColor": "#888888"},  # Vega's default subtitle grey is unreadable on the dark theme
        "encoding": {"x": {"field": "step", "type": "quantitative", "scale": {"domain": [0, frame.num_steps]}},
                     "y": {"field": "energy", "type": "quantitative", "title": "E(z)"},
                     "detail": {"field": "series"}, "color": line},
        "layer": [{"mark": {"type": "line", "strokeWidth": width},
                   "transform": [{"filter": {"field": "line", "equal": name}}]}
                  for name, width in ((chains, 1), (mean, 3))],  # the mean on top
    })


def stopped_sample(stop: Stopped) -> None:
    """Where a stopped sample got to, with a button to run it again."""
    frame = stop.snapshot
    where = f" at step {frame.steps_done:,} of {frame.num_steps:,}" if frame is not None else ""
    with st.container(horizontal=True, vertical_alignment="center"):
        st.info(f"Stopped{where}. Change a setting, or run these settings again.", icon=":material/stop_circle:",
                width="stretch")
        st.button("Run again", icon=":material/play_arrow:", on_click=run_again, key="live_run_again")
    if frame is not None:
        live_sample(frame, now="Stopped")


def comparison_view(comparison: Comparison) -> None:
    """The samplers' scores as a table, and each dim's exact marginal with every sampler's histogram over it."""
    rows = compare_table(comparison)
    number = st.column_config.NumberColumn
    w1_help = "Wasserstein-1 distance of this dim's draws to its exact marginal: ∫ |F_draws − F_exact| dz"
    st.dataframe(rows, hide_index=True, key="compare_table", column_config={
        "sampler": st.column_config.TextColumn("Sampler"),
        "min ESS": number("min ESS", format="%.0f", help="Effective sample size of the worst dim (bulk, arviz-stats)"),
        "ESS / s": number("ESS / s", format="%.0f", help="min ESS per second of sampling"),
        "max R-hat": number("max R-hat", format="%.3f", help="Rank R-hat of the worst dim: near 1 if the chains agree"),
        "acceptance": number("Acceptance", format="percent"),
        "seconds": number("Seconds", format="%.2f", help="Wall clock of the chains"),
        **{c: number(c, format="%.3f", help=w1_help) for c in rows[0] if c.startswith("W1 z")},
        "W1 noise floor": number("W1 noise floor", format="%.3f", help="What as many exact draws as the ESS would "
                                 "give (largest over dims): a W1 well above it is the sampler's bias"),
    })
    d = len(comparison.exact)
    for first in range(0, d, 4):
        for k, column in zip(range(first, min(d, first + 4)), st.columns(4)):
            fig = go.Figure()
            fig.add_scatter(x=comparison.grid, y=comparison.exact[k], mode="lines", name="exact", fill="tozeroy",
                            line=dict(color=CHAIN_GREY, width=0), fillcolor=CHAIN_GREY)
            for score in comparison.scores:
                fig.add_scatter(x=comparison.grid, y=score.histogram[k], mode="lines", line_shape="hvh",
                                name=f"{score.sampler.upper()} (W1 {score.w1[k]:.3f})")
            fig.update_layout(title=f"Marginal of z{k}", height=300, margin=dict(l=10, r=10, t=40, b=10),
                              legend=dict(orientation="h", y=-0.15))
            column.plotly_chart(fig, key=f"compare_marginal_{k}")


# ---- pictures -----------------------------------------------------------------------------------
def digit_picture(pixels: np.ndarray | torch.Tensor, scale: int = 4) -> np.ndarray:
    """One (784,) digit as a uint8 picture, scaled up."""
    return image_grid(np.asarray(pixels).reshape(1, 784), ncols=1, pad=0, scale=scale)


def strip_picture(images: np.ndarray | torch.Tensor, scale: int = 2) -> np.ndarray:
    """A row of digits as one picture."""
    images = np.asarray(images).reshape(-1, 784)
    return image_grid(images, ncols=len(images), scale=scale)


def download_run_button(path: Path, label: str = "Download weights", key: str | None = None) -> None:
    """A download button for a weights file, read only when clicked."""
    st.download_button(label, data=lambda: Path(path).read_bytes(), file_name=f"{Path(path).parent.name}.safetensors",
                       mime="application/octet-stream", key=key, on_click="ignore",
                       icon=":material/download:")


# ---- picking digits ---------------------------------------------------------------------------------
GALLERY_PER_CLASS = 1


def gallery_indices(labels: np.ndarray, draw: int, per_class: int = GALLERY_PER_CLASS) -> np.ndarray:
    """Indices of `per_class` test digits of each class present, in class order: the first ones for draw 0
    (so the default endpoints #0 and #1 are among them), a seeded random pick for each later draw."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(draw)
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = min(per_class, len(members))
        picked.extend(members[:take] if draw == 0 else np.sort(rng.choice(members, take, replace=False)))
    return np.asarray(picked, dtype=int)


def digit_gallery(title: str, images: np.ndarray, labels: np.ndarray, indices: Sequence[int], key: str) -> None:
    """A wrapping row of small test digits, each with a button that sets `st.session_state[key]` to its index.

    The chosen digit's button is highlighted. Pictures cannot be buttons in Streamlit, so each picture
    has its label as a button under it; the row wraps on narrow screens instead of stacking like columns.
    """

    def choose(index: int) -> None:
        st.session_state[key] = index

    st.markdown(f"**{title}**")
    with st.container(horizontal=True, gap="xsmall", key=f"{key}_gallery"):
        for index in indices:
            index = int(index)
            with st.container(width=56, gap="xxsmall"):
                st.image(digit_picture(images[index], scale=2), width=56, output_format="PNG")
                chosen = st.session_state.get(key) == index
                st.button(str(int(labels[index])), key=f"{key}_pick_{index}", on_click=choose, args=(index,),
                          type="primary" if chosen else "secondary", width=56,
                          help=f"test digit #{index}" + (" (chosen)" if chosen else ""))


# ---- the Playground's input: a drawing, an uploaded picture or a test digit ------------------------------
CANVAS_SIDE = 240  # px: fits the Playground's narrow column at 1200 px windows
CANVAS_STROKE = 19  # px: a digit drawn across the canvas, its box shrunk to 20 px, gets about MNIST's 2-3 px strokes


def drawn_digit(threshold: float) -> torch.Tensor | None:
    """A canvas to draw on (white on black, as MNIST); the drawing as the model's (784,) input, None if blank.

    The canvas sends its picture on every mouse-up; the page reruns with it.
    """
    from streamlit_drawable_canvas import st_canvas  # a v2 component: it registers itself on import, in the runtime

    st.caption("Draw a digit with the mouse: one stroke is enough. The toolbar undoes a stroke or clears the canvas.")
    with st.container(key="p_canvas"):
        drawing = st_canvas(stroke_width=CANVAS_STROKE, stroke_color="#ffffff", background_color="#000000",
                            width=CANVAS_SIDE, height=CANVAS_SIDE, drawing_mode="freedraw", key="p_drawing",
                            return_image_data=True)
    if drawing.json_data is None or not drawing.json_data.get("objects"):
        return None
    return preprocess_array(drawing.image_data, threshold)


def uploaded_digit(threshold: float) -> torch.Tensor | None:
    """A picture file made the model's (784,) input (any size; light or dark background), None until one comes."""
    file = st.file_uploader("A picture of a digit", type=["png", "jpg", "jpeg", "gif", "bmp", "webp"], key="p_upload",
                            help="Cropped to the ink, scaled to 20 px and centred like MNIST's digits, then binarized")
    return None if file is None else preprocess_bytes(file.getvalue(), threshold)


def image_key(image: torch.Tensor) -> str:
    """A binary (784,) image's cache key: the sha256 of its pixels."""
    return hashlib.sha256(image.to(torch.uint8).numpy().tobytes()).hexdigest()


@st.cache_resource(show_spinner="Loading the digit classifier…")
def image_classifier() -> MnistClassifier:
    """The shipped MNIST classifier (`ebm.classifier`), which tells what digit a sample shows."""
    return load_classifier()[0]


def cached_score_reference(loaded: LoadedModel, test_images: torch.Tensor) -> ScoreReference:
    """log Z and the scores of the test digits that a new image is placed among (`ebm.scoring`), once per model."""
    def work(should_stop: Callable[[int], bool]) -> ScoreReference:
        sync_torch_threads()
        log_z = prior_log_z(loaded.model, loaded.model.encode(test_images))
        return build_reference(loaded.model, test_images, log_z)

    data_key = str(default_data_dir().resolve())
    return scheduled(("score_reference", loaded.key, data_key), work, 1, "Scoring the test digits once")


def cached_outlier_scores(loaded: LoadedModel, reference: ScoreReference, images: torch.Tensor,
                          name: str) -> np.ndarray:
    """log p(x) of a reference set of other images (`name`: which), for the histogram a score is shown on."""
    def work(should_stop: Callable[[int], bool]) -> np.ndarray:
        sync_torch_threads()
        return score_images(loaded.model, images, reference.log_z).log_p_x

    return scheduled(("outlier_scores", loaded.key, name, len(images)), work, 1, f"Scoring {name} once")


@st.cache_resource(max_entries=8, show_spinner="Loading the latent classifier…")
def _shipped_latent_classifier(path: str, mtime_ns: int, model_key: tuple, _model: LatentEBM) -> LatentClassifier:
    return load_latent_classifier(path, _model)[0]


def cached_latent_classifier(loaded: LoadedModel) -> LatentClassifier | None:
    """The model's latent classifier: the file beside its weights, else one trained on its training codes
    (seconds, once per model). None, after saying why, when neither can be had."""
    path = latent_classifier_path(loaded.key[1]) if loaded.key[0] == "file" else None
    if path is not None and path.is_file():
        try:
            return _shipped_latent_classifier(str(path), path.stat().st_mtime_ns, loaded.key, loaded.model)
        except WeightsError:
            pass  # made for another model: train one below
    data = dataset_or_message(loaded.dataset, "train", loaded.threshold, key="fetch_compose")
    if data is None:
        return None
    images, labels = data

    def work(should_stop: Callable[[int], bool]) -> LatentClassifier:
        sync_torch_threads()
        return train_latent_classifier(loaded.model, images, labels)

    return scheduled(("latent_classifier", loaded.key), work, 1, "Training a latent classifier")


def cached_repair(loaded: LoadedModel, image: torch.Tensor, settings: RepairSettings) -> SampleView:
    """Chains from the image's code on E/T (`ebm.playground.repair_view`), drawn live, with a Stop button."""
    def work(progress: Progress) -> SampleView:
        return repair_view(loaded.model, image, settings, progress, progress.publish)

    return scheduled(("repair", loaded.key, image_key(image), settings), work, settings.num_steps, "Repairing",
                     live=live_sample)


def cached_inpaint(loaded: LoadedModel, image: torch.Tensor, hidden: str, seed: int) -> InpaintView:
    """Completions of the image's hidden half (`ebm.playground.inpaint_view`)."""
    return scheduled(("inpaint", loaded.key, image_key(image), hidden, seed),
                     lambda should_stop: inpaint_view(loaded.model, image, hidden, seed, should_stop=should_stop),
                     INPAINTING.num_steps, "Inpainting")


def cached_compose(loaded: LoadedModel, latent_classifier: LatentClassifier, classes: ClassSettings,
                   seed: int) -> ComposeView:
    """Samples of E(z) - λ log p(A | z) (`ebm.playground.compose_view`)."""
    return scheduled(("compose", loaded.key, classes, seed),
                     lambda should_stop: compose_view(loaded.model, latent_classifier, image_classifier(), classes,
                                                      seed, should_stop),
                     COMPOSE_SAMPLE.num_steps, "Sampling")
