# syntax=docker/dockerfile:1
# The one container image of dino-mlops: KFP components, the retraining CronJob and the PyTorchJob
# pretraining pods all run it. Its name and tag are one setting, components/_image.py IMAGE
# (ghcr.io/dino-mlops/dino-mlops:0.1.0, and its registry digest once `scripts/image.sh pin` wrote one),
# which the kustomize `images:` entry repeats (tests/k8s check both):
#   docker build -t "$(python -c 'from components._image import DEFAULT_IMAGE; print(DEFAULT_IMAGE)')" .
#
# Base: NVIDIA's CUDA 13.0 runtime on Ubuntu 24.04, pinned. PyTorch's wheels (torch 2.14, CUDA 13.0;
# every package's version and sha256 from requirements/image-py3*.lock) bring their own cuDNN, NCCL
# and cuBLAS, so the plain runtime flavour is enough; the node needs an NVIDIA driver that supports
# CUDA 13.0 (R580 or newer). Triton runs from NVIDIA's own image.
# Any Debian/Ubuntu base with Python >= 3.11 works: scripts/image.sh builds on a Debian bookworm
# base made with mmdebstrap, with no registry involved (BASE_IMAGE=dino-mlops-base:bookworm).
ARG BASE_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="dino-mlops" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="DINO self-supervised vision models: DVC data, KFP training, ONNX export, Triton serving" \
      org.opencontainers.image.licenses="Apache-2.0"

ARG DEBIAN_FRONTEND=noninteractive
# An imported base has no ENV at all: PATH is spelled out.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The distribution's Python with venv, its shared libpython (which Triton's Python backend stub links
# against), and git for DVC repositories; skipped when the base has them all.
RUN has_libpython() { python3 -c 'import os, sys, sysconfig as s; \
      sys.exit(not os.path.exists(os.path.join(s.get_config_var("LIBDIR"), s.get_config_var("INSTSONAME"))))'; }; \
    if ! command -v git >/dev/null || ! python3 -c 'import ensurepip' 2>/dev/null || ! has_libpython; then \
      apt-get update \
      && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \
      && apt-get install -y --no-install-recommends "libpython$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
      && rm -rf /var/lib/apt/lists/* \
      && has_libpython; \
    fi

ENV VIRTUAL_ENV=/opt/venv \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1 \
    DVC_SITE_CACHE_DIR=/tmp/dvc-site-cache
# Login shells reset PATH from /etc/profile: keep the venv first there too (the Kubeflow SDK's container
# runner starts each TrainJob node with `bash -lc`).
RUN python3 -m venv "$VIRTUAL_ENV" \
 && echo 'PATH=/opt/venv/bin:$PATH' > /etc/profile.d/dino-venv.sh

WORKDIR /opt/dino-mlops
# Dependencies first, from the lock of the base's Python (scripts/lock.sh writes one per supported
# Python): exact versions, every downloaded file checked against its sha256, nothing resolved here. pip
# and setuptools come from the lock too; the project is then built with them, without build isolation
# and without an index, so no file enters the image unhashed. A layer that changes only with the locks.
COPY requirements/image-py311.lock requirements/image-py312.lock ./requirements/
RUN lock="requirements/image-py$(python3 -c 'import sys; print("%d%d" % sys.version_info[:2])').lock"; \
    if [ ! -f "$lock" ]; then echo "no dependency lock for this base's Python: $lock (bash scripts/lock.sh)" >&2; exit 1; fi; \
    pip install --quiet --require-hashes --no-deps -r "$lock"
COPY pyproject.toml README.md ./
COPY dino_model ./dino_model
COPY components ./components
COPY pipelines ./pipelines
RUN pip install --quiet --no-deps --no-build-isolation --no-index ".[s3,cluster,gpu-aug]" && rm -rf build ./*.egg-info
# the kustomize tree, for launchers that read the PyTorchJob template (k8s/jobs/pretrain)
COPY k8s ./k8s

# DVC repositories are cloned or mounted under other owners' uids: trust them for git
# (CVE-2022-24765 "dubious ownership"). System scope, because pods run with a read-only root
# filesystem and HOME on an emptyDir.
RUN git config --system --add safe.directory '*'

# Non-root, numeric so Kubernetes can verify runAsNonRoot; the manifests use the same uid/gid.
RUN groupadd --gid 10001 dino \
 && useradd --uid 10001 --gid 10001 --home-dir /home/dino --create-home --shell /usr/sbin/nologin dino
USER 10001:10001
WORKDIR /home/dino

CMD ["dino-mlops", "--help"]
