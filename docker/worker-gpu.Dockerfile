# genqueue GPU worker: CUDA torch + DeepSpeed. One container serves one model on all the
# GPUs it is given, one model process per GPU (see compose.yaml).
#
# Build from the repository root:
#   docker build -f docker/worker-gpu.Dockerfile -t genqueue-worker-gpu .
#
# A *devel* base because DeepSpeed JIT-compiles its inference kernels (nvcc, headers) the
# first time a worker injects them. No cuDNN variant: the torch wheel ships its own cuDNN,
# and DeepSpeed's inference kernels do not use it.
#
# Versions move together: the CUDA toolkit here must have the same major.minor as the torch
# wheel's index (cu128 <-> 12.8), or DeepSpeed refuses to build its kernels. torch must stay
# inside pyproject's bound (<=2.14.1) and at or above what transformers needs (>=2.6).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu22.04
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.8.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# Same uid as docker/Dockerfile: both images share the model-cache volumes.
ARG GENQUEUE_UID=10001

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CUDA_HOME=/usr/local/cuda \
    HF_HOME=/models/hf \
    GENQUEUE_HOME=/var/lib/genqueue \
    TORCH_EXTENSIONS_DIR=/models/torch_extensions

# Ubuntu 22.04 ships Python 3.10; the deadsnakes PPA has 3.11. python3.11-dev and a C++
# compiler are for DeepSpeed's JIT kernel builds (ninja comes with deepspeed from PyPI).
# Unpinned apt versions on purpose: the archive drops old ones, and security fixes matter.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
        python3.11 python3.11-dev python3.11-venv build-essential \
 && apt-get purge -y --auto-remove software-properties-common gpg-agent \
 && rm -rf /var/lib/apt/lists/*

# CUDA torch first, pinned for every later pip call by the constraints file: the project's
# install then keeps this build instead of resolving its own.
RUN python3.11 -m venv /opt/venv \
 && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && echo "torch==${TORCH_VERSION}" > /opt/venv/constraints.txt

WORKDIR /src

# Dependencies in their own layer (read from pyproject.toml) so code edits rebuild fast.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['deepspeed']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt -c /opt/venv/constraints.txt \
 && rm /tmp/requirements.txt

COPY . .
RUN pip install ".[deepspeed]" -c /opt/venv/constraints.txt \
 && rm -rf build ./*.egg-info \
 && genqueue --help > /dev/null

# Non-root. The cache directories exist (owned by that user) before the volumes mount, so
# fresh named volumes inherit the ownership. TORCH_EXTENSIONS_DIR sits in the model volume:
# DeepSpeed's compiled kernels survive restarts instead of rebuilding (minutes) each start.
RUN groupadd --system --gid "${GENQUEUE_UID}" genqueue \
 && useradd --system --uid "${GENQUEUE_UID}" --gid genqueue --create-home \
        --home-dir /home/genqueue genqueue \
 && mkdir -p "${HF_HOME}" "${TORCH_EXTENSIONS_DIR}" "${GENQUEUE_HOME}" \
 && chown -R genqueue:genqueue /models "${GENQUEUE_HOME}"
VOLUME ["/models", "/var/lib/genqueue"]

# Numeric, so orchestrators can check it is not root without reading /etc/passwd.
USER ${GENQUEUE_UID}:${GENQUEUE_UID}
WORKDIR /home/genqueue
ENTRYPOINT ["genqueue", "worker"]
CMD ["--help"]
