"""mnist-ebm in the browser: `streamlit run app.py`.

This file only routes; each page lives in pages/ and computes through the `ebm` package.
"""

import os

import streamlit as st
import torch

# The samplers push small batches through small matrices: one thread is the fastest, and it
# keeps a page responsive on a busy machine (more threads spin-wait for each other when the
# cores are shared, which made 64 chains × 1000 steps take seconds instead of 0.2 s).
# The background training shares this setting. EBM_TORCH_THREADS overrides it.
torch.set_num_threads(max(1, int(os.environ.get("EBM_TORCH_THREADS", "1"))))

st.set_page_config(page_title="mnist-ebm · digits from an energy landscape", page_icon=":material/blur_on:", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/sample.py", title="Sample", icon=":material/auto_awesome:", url_path="sample"),
    st.Page("pages/explorer.py", title="Latent explorer", icon=":material/explore:", url_path="explorer"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:", url_path="train"),
]
st.navigation(pages).run()
