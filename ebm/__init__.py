"""mnist-ebm core: an energy-based model of MNIST digits in a small autoencoder latent space.

Free of Streamlit: the app pages, the CLI and the tests all call into this package.
"""

__version__ = "0.1.0"
