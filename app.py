"""mnist-ebm in the browser: `streamlit run app.py`.

This file only routes; each page lives in pages/ and computes through the `ebm` package.
"""

import streamlit as st

import widgets

# One native thread per worker, requests side by side: see widgets.configure_process. The background
# training shares the setting. Pages call it again (widgets.ensure_router): every script run
# has its own thread, and OpenMP keeps the limit per thread.
widgets.configure_process()

st.set_page_config(
    page_title="mnist-ebm · digits from an energy landscape", page_icon=":material/blur_on:", layout="wide"
)

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/sample.py", title="Sample", icon=":material/auto_awesome:", url_path="sample"),
    st.Page("pages/explorer.py", title="Latent explorer", icon=":material/explore:", url_path="explorer"),
    st.Page("pages/playground.py", title="Playground", icon=":material/draw:", url_path="playground"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:", url_path="train"),
]
# Digit grids are drawn at one screen pixel per pixel and scaled by the browser: keep them crisp.
st.html("<style>[data-testid='stImage'] img { image-rendering: pixelated; }"
        ".st-key-p_canvas { padding-top: 2.25rem; }</style>")  # room for the drawing canvas's toolbar above it
st.navigation(pages).run()
