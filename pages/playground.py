"""Playground: draw or upload a digit, score it with exact likelihoods, repair it, inpaint it, compose energies."""

from itertools import combinations

import streamlit as st

import figures
import widgets
from ebm.conditioning import DEFAULT_CLASS_WEIGHT, NUM_CLASSES, ClassSettings, parse_digits
from ebm.energies import HIDDEN_HALVES
from ebm.landscape import energy_slice
from ebm.limits import RequestTooLarge
from ebm.playground import RepairSettings
from ebm.preprocess import ImageError
from ebm.scoring import OUTLIER, OUTLIER_PERCENTILE, score_image

widgets.ensure_router()

TOOLS = {"score": "Score", "repair": "Repair", "inpaint": "Inpaint", "compose": "Compose"}
SOURCES = {"draw": "Draw", "upload": "Upload", "test": "Test digit"}
TEST_DIGITS = 10_000
OUTLIER_IMAGES = 1000  # Fashion-MNIST test images the histogram shows: ~8 s to score, once per model
EXTENT, RESOLUTION = 4.0, 81  # the slice through the digit's code
REPAIR = RepairSettings()
PARAMS = [
    widgets.Param("tool", "p_tool", "score", choices=tuple(TOOLS)),
    widgets.Param("source", "p_source", "draw", choices=tuple(SOURCES)),
    widgets.Param("digit", "p_test", 0, 0, TEST_DIGITS - 1),
    widgets.Param("steps", "p_steps", REPAIR.num_steps, 1, 2000),
    widgets.Param("T", "p_temperature", REPAIR.temperature, 0.1, 5.0),
    widgets.Param("hide", "p_hide", "bottom", choices=HIDDEN_HALVES),
    widgets.Param("classes", "p_classes", [], parse=lambda raw: list(parse_digits("classes", raw))),
    widgets.Param("not", "p_not", [], parse=lambda raw: list(parse_digits("excluded classes", raw))),
    widgets.Param("lambda", "p_lambda", DEFAULT_CLASS_WEIGHT, 0.0, 20.0),
    widgets.Param("seed", "p_seed", 0, 0, widgets.MAX_UI_SEED),
]
P = {p.name: p for p in PARAMS}

loaded = widgets.model_picker()
url_messages = widgets.url_to_state(PARAMS, "playground")
st.title("Playground")
st.caption("An energy is a score you can add to. Draw a digit and see how likely the model finds it; let the chains "
           "repair it; hide half of it and sample what is missing; or add a classifier's energy and sample only the "
           "digits you ask for.")
widgets.show_url_messages(url_messages)
if loaded.dataset != "mnist":  # its classifiers, outlier set and drawing canvas are for digits
    st.info(f"The Playground is made for digits, and this model was trained on "
            f"{widgets.DATASET_LABELS.get(loaded.dataset, loaded.dataset)}: pick an MNIST model in the sidebar.",
            icon=":material/info:")
    st.stop()
s = st.session_state

source_col, tool_col = st.columns([1.3, 2], gap="medium")
image = test = None
with source_col:
    widgets.param_select(P["source"], "Your digit", format_func=SOURCES.get,
                         disabled=s.p_tool == "compose")
    try:
        if s.p_tool == "compose":
            st.caption("Compose draws new digits from the energy: it needs none of yours.")
        elif s.p_source == "draw":
            image = widgets.drawn_digit(loaded.threshold)
        elif s.p_source == "upload":
            image = widgets.uploaded_digit(loaded.threshold)
        else:
            test = widgets.data_codes(loaded, "test", TEST_DIGITS)
            if test is not None:
                widgets.param_number(P["digit"], "Test digit #", step=1)
                image = test[2][int(s.p_test)]
                st.caption(f"Label {int(test[1][int(s.p_test)])}")
    except ImageError as e:
        st.error(f"That picture cannot be used: {widgets.server_message(e)}")
    if image is not None:
        st.image(widgets.digit_picture(image, scale=6), width=168, output_format="PNG",
                 caption="What the model sees: 28×28, centred like MNIST's digits, binarized")

with tool_col:
    widgets.param_select(P["tool"], "What to do", format_func=TOOLS.get)
    try:
        if s.p_tool == "score":
            if image is None:
                st.info("Draw, upload or pick a digit to see its score.", icon=":material/draw:")
            elif (test := test or widgets.data_codes(loaded, "test", TEST_DIGITS)) is not None:
                reference = widgets.cached_score_reference(loaded, test[2])
                score = score_image(loaded.model, image, reference)
                energy, log_p_z, log_p_x = st.columns(3)
                energy.metric("Energy E(z)", f"{score.energy:.2f}", help="Of the digit's code z = encode(x)")
                log_p_z.metric("log p(z)", f"{score.log_p_z:.2f}",
                               help="Exact: −E(z) − log Z, with log Z by quadrature over the 4-D code space")
                log_p_z.caption(f"above {score.log_p_z_percentile:.0f}% of test digits")
                log_p_x.metric("log p(x)", f"{score.log_p_x:.1f}",
                               help="The picture's own likelihood, ∫ p(x | z) p(z) dz, by importance sampling "
                                    "around the posterior mode: it also counts what the decoder cannot draw")
                log_p_x.caption(f"± {score.log_p_x_standard_error:.2f}; above {score.log_p_x_percentile:.0f}% of "
                                "test digits")
                if score.verdict == OUTLIER:
                    st.warning(f"**Unlike anything in training**: log p(x) is below that of "
                               f"{100 - OUTLIER_PERCENTILE:.0f}% of the test digits.", icon=":material/help:")
                else:
                    st.success("**Like the training digits**: log p(x) is above the "
                               f"{OUTLIER_PERCENTILE:g}st percentile of the test digits.", icon=":material/check:")
                sets = {"MNIST test digits": reference.log_p_x}
                fashion = widgets.dataset_or_message("fashion-mnist", "test", loaded.threshold, key="fetch_ood")
                if fashion is not None:
                    sets["Fashion-MNIST test images"] = widgets.cached_outlier_scores(
                        loaded, reference, fashion[0][:OUTLIER_IMAGES], "Fashion-MNIST")
                st.plotly_chart(figures.score_histograms(sets, score.log_p_x, reference.outlier_log_p_x),
                                key="p_histogram")
                st.caption("Clothes land in typical codes (their log p(z) is like a digit's), but the decoder "
                           "cannot draw them: their log p(x) is far lower. `python -m ebm evaluate` reports "
                           "the AUROC of both scores.")
                code = loaded.model.encode(image.reshape(1, -1))[0].numpy()
                pairs = list(combinations(range(loaded.model.latent_dim), 2))
                i, j = st.selectbox("Slice through dims", pairs, key="p_pair",
                                    format_func=lambda p: f"z{p[0]} × z{p[1]}",
                                    help="The energy on a plane through your digit's code: the other dims stay at "
                                         "its values")
                sl = energy_slice(loaded.model, (i, j), code, EXTENT, RESOLUTION)
                fig = figures.slice_map(sl, "energy", test[0].numpy(), test[1].numpy(), max_codes=2000).figure
                fig.update_layout(height=480, title=f"Your digit's code (★) on the slice z{i} × z{j}")
                st.plotly_chart(figures.mark_code(fig, code, (i, j)), key="p_slice")
        elif s.p_tool == "repair":
            widgets.param_slider(P["steps"], "Steps", step=10, help="How far the chains go from your digit")
            widgets.param_slider(P["T"], "Temperature T", step=0.1,
                                 help="The chains sample e^(−E/T): below 1 they settle, above 1 they wander")
            widgets.seed_input(P["seed"])
            if image is None:
                st.info("Draw, upload or pick a digit to repair it.", icon=":material/draw:")
            else:
                settings = RepairSettings(num_steps=int(s.p_steps), temperature=float(s.p_temperature),
                                          seed=int(s.p_seed))
                view = widgets.cached_repair(loaded, image, settings)
                anim, final = st.columns(2)
                anim.image(view.gif, width="stretch",
                           caption=f"{view.num_chains} MALA chains from your digit's code, "
                                   f"{view.steps_done} steps at T = {settings.temperature:g}")
                final.image(view.png, width="stretch", output_format="PNG",
                            caption=f"Where they are after step {view.steps_done} "
                                    f"({view.mean_acceptance:.0%} of steps accepted)")
                st.plotly_chart(widgets.energy_chart(view.trace_steps, view.energy_traces, view.energy_mean,
                                                     view.num_chains, height=260), key="p_repair_energy")
        elif s.p_tool == "inpaint":
            widgets.param_select(P["hide"], "Hide", format_func=lambda h: f"{h} half")
            widgets.seed_input(P["seed"])
            if image is None:
                st.info("Draw, upload or pick a digit to inpaint it.", icon=":material/draw:")
            else:
                view = widgets.cached_inpaint(loaded, image, s.p_hide, int(s.p_seed))
                masked, anim, final = st.columns([1, 2, 2])
                masked.image(view.masked_png, width="stretch", output_format="PNG",
                             caption=f"What the chains see: the {s.p_hide} half hidden (grey)")
                anim.image(view.gif, width="stretch",
                           caption=f"{view.num_chains} chains sampling p(z | visible pixels), {view.num_steps} steps")
                final.image(view.png, width="stretch", output_format="PNG",
                            caption=f"{view.num_chains} completions (ε = {view.step_size:.3f}, "
                                    f"{view.mean_acceptance:.0%} accepted)")
                st.caption("The posterior is the prior times the visible pixels' Bernoulli likelihood under the "
                           "decoder: E(z) − Σ log p(xᵢ | z) over the visible pixels, sampled by MALA. Where the "
                           "visible half allows several digits, different chains find different ones.")
        else:
            digits = tuple(range(NUM_CLASSES))
            choose, exclude = st.columns(2)
            choose.multiselect("Digits (any of them)", digits, key=P["classes"].key, persist_state="session",
                               help="E(z) − λ log p(A | z), A the chosen classes: OR. None chosen means all ten")
            exclude.multiselect("Not these", digits, key=P["not"].key, persist_state="session",
                                help="Removed from A: NOT")
            widgets.param_slider(P["lambda"], "Class weight λ", step=0.5,
                                 help="How strongly the latent classifier's energy pulls; 0 is the plain model")
            widgets.seed_input(P["seed"])
            classes = ClassSettings(digits=tuple(s.p_classes), exclude=tuple(s.p_not), class_weight=float(s.p_lambda))
            latent_classifier = widgets.cached_latent_classifier(loaded)
            if latent_classifier is not None:
                view = widgets.cached_compose(loaded, latent_classifier, classes, int(s.p_seed))
                grid, bars = st.columns([3, 2])
                grid.image(view.samples.png, width="stretch", output_format="PNG",
                           caption=f"{view.samples.num_chains} samples of E(z) − {classes.class_weight:g} "
                                   f"log p({{{', '.join(map(str, classes.allowed))}}} | z)")
                bars.metric("In the chosen classes", f"{view.share_in_allowed:.0%}",
                            help="Of the samples, as the image classifier (99% accurate on test digits) reads them")
                bars.plotly_chart(figures.class_bars(view.histogram, classes.allowed), key="p_classes_chart")
    except widgets.Stopped as stop:
        widgets.stopped_sample(stop)
    except RequestTooLarge as e:
        st.warning(f"That request is too large for the app: {e}.")
    except ValueError as e:  # a setting the core refuses, in one sentence
        st.error(f"Cannot do that: {widgets.server_message(e)}")
# the URL keeps what defines this view: the tool's own settings, and which test digit
IN_URL = {"score": (), "repair": ("steps", "T", "seed"), "inpaint": ("hide", "seed"),
          "compose": ("classes", "not", "lambda", "seed")}
kept = ("tool", "source", *(("digit",) if s.p_source == "test" else ()), *IN_URL[s.p_tool])
widgets.state_to_url([p for p in PARAMS if p.name in kept])
