"""Home: the idea in a few equations, and digits being born from noise."""

import streamlit as st

import widgets
from ebm.generate import SampleSettings

widgets.ensure_router()

st.title("Digits from an energy landscape")
st.caption("An energy-based model of MNIST in the 4-D latent space of a small autoencoder, sampled by Langevin dynamics.")

demo, idea = st.columns([2, 3], gap="large")

with demo:
    loaded = widgets.shipped_model()
    settings = SampleSettings()  # the shared defaults: MALA, ε = 0.5, K = 500, 64 chains, from noise
    view = widgets.cached_sample_view(loaded, settings)
    st.image(view.gif, caption=f"{view.num_chains} chains started from noise, {view.steps_done} MALA steps "
                               f"(ε = {settings.step_size}), decoded every {settings.record_every} steps",
             width="stretch")
    with st.expander("Final grid"):
        st.image(view.png, caption="The same chains after the last step", width="stretch", output_format="PNG")
    st.page_link("pages/sample.py", label="Make your own on the Sample page", icon=":material/auto_awesome:")
    st.page_link("pages/explorer.py", label="Walk the landscape in the Latent explorer", icon=":material/explore:")
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
    st.latex(
        r"\nabla_\theta \log p_\theta(z_{\text{data}}) = -\nabla_\theta E_\theta(z_{\text{data}})"
        r" + \mathbb{E}_{\tilde z \sim p_\theta}\!\left[\nabla_\theta E_\theta(\tilde z)\right]"
    )
    st.markdown(
        "Contrastive divergence estimates the second term with *negative samples* $\\tilde z$ drawn from the "
        "current model: push the energy of data down, push the energy of the model's own samples up."
    )

    st.subheader("Sampling by Langevin dynamics")
    st.markdown("Negatives and new digits come from noisy gradient descent on the energy, with step size $\\varepsilon$:")
    st.latex(r"z \leftarrow z - \frac{\varepsilon^2}{2}\,\nabla_z E_\theta(z) + \varepsilon\,\xi, \qquad \xi \sim \mathcal{N}(0, I)")
    st.markdown(
        "This unadjusted Langevin algorithm (ULA) is slightly biased for any finite $\\varepsilon$. "
        "**MALA** makes it exact: the step $z \\to z'$ is a proposal $q$, accepted with the Metropolis–Hastings probability"
    )
    st.latex(r"\alpha = \min\!\left(1,\; \frac{e^{-E(z')}\, q(z \mid z')}{e^{-E(z)}\, q(z' \mid z)}\right)")
    st.latex(r"q(z' \mid z) = \mathcal{N}\!\left(z';\; z - \tfrac{\varepsilon^2}{2}\nabla E(z),\; \varepsilon^2 I\right)")
    st.markdown("so that $p_\\theta$ is exactly invariant; the acceptance rate tells you whether $\\varepsilon$ is too large.")

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
