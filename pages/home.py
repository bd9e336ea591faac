"""Home: chains settling into digits as their energy falls, three first experiments, and the idea in a few equations."""

import plotly.graph_objects as go
import streamlit as st

import widgets
from ebm.render import BirthSettings

widgets.ensure_router()

BIRTH = BirthSettings()
# Three first experiments, each a preset URL of another page.
TRY_THIS = [
    ("pages/sample.py", {"sampler": "ula", "eps": "1.2"}, "Too large a step: ULA, ε = 1.2",
     ":material/blur_on:"),
    ("pages/sample.py", {"chains": "1", "K": "3000", "every": "10"}, "One chain hopping between digits",
     ":material/timeline:"),
    ("pages/explorer.py", {"view": "density"}, "The density e⁻ᴱ, slice by slice",
     ":material/explore:"),
]

st.title("Digits from an energy landscape")
st.caption(
    "An energy-based model of MNIST in the 4-D latent space of a small autoencoder, sampled by Langevin dynamics."
)

demo, idea = st.columns([2, 3], gap="large")

with demo:
    loaded = widgets.shipped_model()
    birth = widgets.cached_birth_view(loaded, BIRTH)
    st.image(birth.gif, width="stretch",
             caption=f"{BIRTH.num_chains} chains started far from the data (codes ~ N(0, {BIRTH.start_scale:g}² I)) "
                     f"settle into digits: {BIRTH.num_steps} MALA steps of ε = {BIRTH.step_size}, "
                     f"{birth.mean_acceptance:.0%} accepted, drawn as the decoder's pixel probabilities")
    energy = go.Figure()
    for chain in birth.energies.T:
        energy.add_trace(go.Scatter(x=birth.record_steps, y=chain, mode="lines", hoverinfo="skip", showlegend=False,
                                    line={"color": "rgba(128, 128, 128, 0.35)", "width": 1}))
    energy.add_trace(go.Scatter(x=birth.record_steps, y=birth.energies.mean(axis=1), mode="lines", name="mean",
                                line={"color": "#e0303b", "width": 2.5}))
    energy.update_layout(height=220, margin={"l": 10, "r": 10, "t": 30, "b": 10}, showlegend=False,
                         title={"text": "Energy of each chain (grey), mean (red)", "font": {"size": 14}},
                         xaxis_title="MALA step", yaxis_title="E(z)")
    st.plotly_chart(energy, width="stretch", config={"displayModeBar": False})

    st.markdown("**Try this**: each link opens a page with its settings in the URL")
    for page, query, label, icon in TRY_THIS:
        st.page_link(page, label=label, icon=icon, query_params=query)
    st.page_link("pages/train.py", label="Train your own model", icon=":material/model_training:")

with idea:
    st.subheader("An energy instead of a density")
    st.markdown(
        "An energy-based model gives every latent code $z$ a scalar energy $E_\\theta(z)$ from a neural net. "
        "Low energy means likely: the model's density is the Gibbs distribution"
    )
    st.latex(r"p_\theta(z) = \frac{e^{-E_\theta(z)}}{Z_\theta}, \qquad Z_\theta = \int e^{-E_\theta(z)}\,dz")
    st.markdown(
        "Any shape of landscape is allowed, but $Z_\\theta$ is an integral over the whole space. "
        "Training by maximum likelihood needs only its gradient, which is an expectation under the model:"
    )
    st.latex(  # two lines: on one, a phone had to scroll it
        r"\begin{gathered}\nabla_\theta \log p_\theta(z_{\text{data}}) = -\nabla_\theta E_\theta(z_{\text{data}})\\"
        r" {} + \mathbb{E}_{\tilde z \sim p_\theta}\!\left[\nabla_\theta E_\theta(\tilde z)\right]\end{gathered}"
    )
    st.markdown(
        "Contrastive divergence estimates the second term with *negative samples* $\\tilde z$ drawn from the "
        "current model: push the energy of data down, push the energy of the model's own samples up."
    )

    st.subheader("Sampling by Langevin dynamics")
    st.markdown(
        "Negatives and new digits come from noisy gradient descent on the energy, with step size $\\varepsilon$:"
    )
    st.latex(r"z \leftarrow z - \frac{\varepsilon^2}{2}\,\nabla_z E_\theta(z) + \varepsilon\,\xi, "
             r"\qquad \xi \sim \mathcal{N}(0, I)")
    st.markdown(
        "This unadjusted Langevin algorithm (ULA) is slightly biased for any finite $\\varepsilon$. "
        "**MALA** makes it exact: the step $z \\to z'$ is a proposal $q$, accepted with the "
        "Metropolis–Hastings probability"
    )
    st.latex(r"\alpha = \min\!\left(1,\; \frac{e^{-E(z')}\, q(z \mid z')}{e^{-E(z)}\, q(z' \mid z)}\right)")
    st.latex(
        r"q(z' \mid z) = \mathcal{N}\!\left(z';\; z - \tfrac{\varepsilon^2}{2}\nabla E(z),\; \varepsilon^2 I\right)"
    )
    st.markdown(
        "so that $p_\\theta$ is exactly invariant; the acceptance rate tells you whether $\\varepsilon$ is too large."
    )

    st.subheader("Why a 4-D latent space")
    st.markdown(
        "- Binary pixels are discrete, but Langevin dynamics needs a continuous space with gradients. "
        "An autoencoder maps each digit to a code $z \\in \\mathbb{R}^4$ and decodes codes back to pixels, "
        "so the energy lives on the codes and every point of the landscape is a picture.\n"
        "- In four dimensions $Z_\\theta$ is computable: a grid of $32^4 \\approx 10^6$ points covers the "
        "(standardized) code space, and a log-sum-exp of $-E$ over it gives $\\log Z_\\theta$, exact likelihoods, "
        "and every 1-D marginal density — see the Latent explorer.\n"
        "- A Gaussian tilt $\\lVert z\\rVert^2 / 2\\sigma^2$ added to the network keeps $e^{-E}$ integrable."
    )
