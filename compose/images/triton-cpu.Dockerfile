# A CPU Triton pool: the genuine tritonserver from the nvidia-pytriton wheel (the version
# pyproject.toml pins), with the project's backend directory: Triton's Python backend and the
# Python-based stand-in for the onnxruntime backend, so standard model folders
# (backend "onnxruntime", <version>/model.onnx) load as on NVIDIA's GPU image.
# Runs as uid 10002; starts through compose/triton/entrypoint.sh. Build context: the repository root.
#
#   DOCKER_BUILDKIT=1 docker build -f compose/images/triton-cpu.Dockerfile -t controlplane/triton-cpu:dev .
#
# BASE_IMAGE: python:3.11-slim-bookworm, or a plain Debian bookworm (local/debian:bookworm).
# pip's optional CA bundle: --secret id=pipca,src=/etc/ssl/certs/ca-certificates.crt
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS python
# The backend stub embeds libpython3.11: Debian's comes in libpython3.11 (python:*-slim has its own).
RUN --mount=type=cache,id=controlplane-apt-cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,id=controlplane-apt-lists,target=/var/lib/apt/lists,sharing=locked \
    set -eu; \
    if ! command -v python3 >/dev/null; then \
        mv /etc/apt/apt.conf.d/docker-clean /tmp/ 2>/dev/null || true; \
        apt-get update -qq; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3 python3-venv libpython3.11 >/dev/null; \
        mv /tmp/docker-clean /etc/apt/apt.conf.d/ 2>/dev/null || true; \
    fi; \
    python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), "need Python 3.11, got " + sys.version'

# What the server needs, with the versions pyproject.toml asks for.
FROM python AS requirements
RUN --mount=type=bind,source=pyproject.toml,target=/tmp/pyproject.toml \
    --mount=type=bind,source=compose/images/requirements.py,target=/tmp/requirements.py \
    python3 /tmp/requirements.py /tmp/pyproject.toml nvidia-pytriton numpy onnxruntime > /requirements.txt

FROM python
RUN --mount=type=bind,from=requirements,source=/requirements.txt,target=/tmp/requirements.txt \
    --mount=type=secret,id=pipca,required=false \
    --mount=type=cache,id=controlplane-pip,target=/root/.cache/pip \
    set -eu; \
    if [ -s /run/secrets/pipca ]; then export PIP_CERT=/run/secrets/pipca; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install -q --disable-pip-version-check --only-binary=:all: -r /tmp/requirements.txt

RUN groupadd --gid 10002 triton \
    && useradd --uid 10002 --gid 10002 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin triton

# The backend directory, built by the same code the embedded runtime uses (copies, never
# symlinks: Triton refuses a backend library that escapes its directory); the server binary and
# its libraries under stable paths.
RUN --mount=type=bind,source=controlplane,target=/src/controlplane \
    set -eu; \
    PYTHONPATH=/src /opt/venv/bin/python -c 'from pathlib import Path; from controlplane.triton.backend_dir import build_backend_directory; build_backend_directory(Path("/opt/tritonserver/backends"))'; \
    find /opt/tritonserver/backends -name __pycache__ -prune -exec rm -rf {} +; \
    site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"; \
    ln -s "$site/pytriton/tritonserver/bin" /opt/tritonserver/bin; \
    ln -s "$site/nvidia_pytriton.libs" /opt/tritonserver/lib; \
    for binary in /opt/tritonserver/bin/tritonserver /opt/tritonserver/backends/python/triton_python_backend_stub; do \
        if LD_LIBRARY_PATH=/opt/tritonserver/lib ldd "$binary" | grep 'not found'; then \
            echo "$binary misses libraries" >&2; exit 1; \
        fi; \
    done

COPY --chmod=0755 compose/triton/entrypoint.sh /opt/controlplane/triton-entrypoint.sh

# The stub finds numpy and onnxruntime through the python3 first on PATH (it ignores PYTHONPATH).
ENV PATH=/opt/venv/bin:/opt/tritonserver/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    LD_LIBRARY_PATH=/opt/tritonserver/lib \
    TRITON_BACKEND_DIRECTORY=/opt/tritonserver/backends \
    TRITON_MODEL_REPOSITORY=/pool/repository \
    TRITON_ADMIN_KEY_FILE=/run/controlplane-secrets/triton-admin-key \
    HOME=/tmp
USER 10002:10002
EXPOSE 8000 8001 8002
ENTRYPOINT ["/opt/controlplane/triton-entrypoint.sh"]
