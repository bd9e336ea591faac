# The app as a Hugging Face Space (README front matter: sdk: docker, app_port: 8501), after
# Hugging Face's Streamlit Docker template. Also runs anywhere else:
#   docker build -t mnist-ebm . && docker run -p 8501:8501 mnist-ebm
FROM python:3.11-slim

# Spaces run the container as uid 1000; everything the app writes (downloaded MNIST under
# data/, trained runs under runs/) goes into this user's home.
RUN useradd --create-home --uid 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false
WORKDIR /home/user/app

# requirements.txt is the only list of versions. torch and torchvision are installed first, at
# exactly the versions it pins, from PyTorch's CPU-only index: PyPI's torch wheel for Linux is
# the CUDA build, several GB with its nvidia-* dependencies, and a Space's free hardware has no
# GPU. The CPU wheel carries a local label (2.14.1+cpu), which still satisfies `torch==2.14.1`,
# so the second install takes everything else from PyPI and keeps the CPU torch.
COPY --chown=user requirements.txt .
RUN grep -E '^(torch|torchvision)==' requirements.txt > /tmp/torch-pins.txt \
 && pip install --no-cache-dir --user --index-url https://download.pytorch.org/whl/cpu -r /tmp/torch-pins.txt \
 && pip install --no-cache-dir --user -r requirements.txt

COPY --chown=user . .

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=4)"

# XSRF protection off: inside the Spaces iframe it rejects file uploads (the weights uploader).
ENTRYPOINT ["streamlit", "run", "app.py", "--server.port=8501", "--server.address=0.0.0.0", "--server.enableXsrfProtection=false"]
