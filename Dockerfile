# syntax=docker/dockerfile:1
#
# cxrflow images. One Dockerfile, two targets:
#
#   docker build --target cpu -t "$(scripts/image_tag.sh cpu REGISTRY)" .
#   docker build --target gpu -t "$(scripts/image_tag.sh gpu REGISTRY)" .
#
# The tag comes from pyproject.toml's version (scripts/image_tag.sh == cxrflow.version.image_uri);
# nothing here repeats the version.
#
# GPU choice: the GPU target is the same python:3.11-slim-bookworm base plus the NVIDIA pip
# wheels (CUDA runtime, cuDNN, cuBLAS, NCCL, ptxas) that TensorFlow 2.21's `and-cuda` extra asks for,
# pinned in requirements-gpu.lock. TensorFlow finds them in site-packages by itself. A
# nvidia/cuda:12.x-cudnn-runtime-ubuntu22.04 base would instead need Python 3.11 from the deadsnakes
# PPA, a second, system-wide CUDA, and hand-matching of cuDNN to TF's build. The host (GKE GPU node,
# Vertex AI, `docker run --gpus all`) provides only the driver, as it does for any CUDA image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# Shared base: interpreter, no bytecode litter, no pip cache, one virtualenv on PATH.
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------------------------------------
# Dependencies as pinned in requirements.lock (a layer that changes only with the lock). Not
# --no-deps: the lock is a `pip freeze`, which leaves out wheel/setuptools that tensorflow and
# astunparse require, so pip adds those; `pip check` proves the result is consistent.
FROM base AS deps-cpu
RUN python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
RUN pip install -r /tmp/requirements.lock \
    && pip check

# GPU dependencies: the pinned CUDA wheels; nothing from requirements.lock moves.
FROM deps-cpu AS deps-gpu
COPY requirements-gpu.lock /tmp/requirements-gpu.lock
RUN pip install --no-deps -r /tmp/requirements-gpu.lock \
    && pip check

# ---------------------------------------------------------------------------------------------
# The package itself, on top of the dependencies (no resolver run: the lock already has them).
FROM deps-cpu AS build-cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps . \
    && cxrflow --help > /dev/null

FROM deps-gpu AS build-gpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps . \
    && cxrflow --help > /dev/null

# ---------------------------------------------------------------------------------------------
# Runtime: only the virtualenv is copied in, owned by root and read-only to the runtime user.
FROM base AS runtime
RUN groupadd --system --gid 10001 cxrflow \
    && useradd --system --uid 10001 --gid cxrflow --create-home --home-dir /home/cxrflow cxrflow
WORKDIR /home/cxrflow
ENV HOME=/home/cxrflow

FROM runtime AS gpu
COPY --from=build-gpu /opt/venv /opt/venv
# A numeric user, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
ENTRYPOINT ["cxrflow"]
CMD ["--help"]

# The CPU image is the last stage, so a plain `docker build .` produces it.
FROM runtime AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
USER 10001:10001
ENTRYPOINT ["cxrflow"]
CMD ["--help"]
