# The control plane: this repository installed into /opt/venv (Python 3.11), run as uid 10001.
# Build context: the repository root.
#
#   DOCKER_BUILDKIT=1 docker build -f compose/images/controlplane.Dockerfile -t controlplane/controlplane:dev .
#
# BASE_IMAGE: python:3.11-slim-bookworm, or a plain Debian bookworm (local/debian:bookworm,
# made by scripts/ensure-docker where no registry answers), which gets Debian's python3.
# pip takes an optional CA bundle (e.g. behind a TLS-inspecting proxy) as a BuildKit secret:
#   --secret id=pipca,src=/etc/ssl/certs/ca-certificates.crt
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS python
# Debian's Python 3.11 when the base has none (python:*-slim brings its own in /usr/local).
# docker-clean is set aside while apt runs so the cache mounts keep the packages.
RUN --mount=type=cache,id=controlplane-apt-cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,id=controlplane-apt-lists,target=/var/lib/apt/lists,sharing=locked \
    set -eu; \
    if ! command -v python3 >/dev/null; then \
        mv /etc/apt/apt.conf.d/docker-clean /tmp/ 2>/dev/null || true; \
        apt-get update -qq; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null; \
        mv /tmp/docker-clean /etc/apt/apt.conf.d/ 2>/dev/null || true; \
    fi; \
    python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), "need Python 3.11, got " + sys.version'

# The dependency list alone, so that the layer installing it is rebuilt only when it changes.
FROM python AS requirements
RUN --mount=type=bind,source=pyproject.toml,target=/tmp/pyproject.toml \
    --mount=type=bind,source=compose/images/requirements.py,target=/tmp/requirements.py \
    python3 /tmp/requirements.py /tmp/pyproject.toml > /requirements.txt

FROM python
RUN --mount=type=bind,from=requirements,source=/requirements.txt,target=/tmp/requirements.txt \
    --mount=type=secret,id=pipca,required=false \
    --mount=type=cache,id=controlplane-pip,target=/root/.cache/pip \
    set -eu; \
    if [ -s /run/secrets/pipca ]; then export PIP_CERT=/run/secrets/pipca; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install -q --disable-pip-version-check --only-binary=:all: -r /tmp/requirements.txt

RUN groupadd --gid 10001 controlplane \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/controlplane --no-create-home \
        --shell /usr/sbin/nologin controlplane \
    && install -d -o 10001 -g 10001 -m 0755 /var/lib/controlplane /var/lib/controlplane/pools \
        /var/lib/controlplane/pools/blue /var/lib/controlplane/pools/green \
        /run/controlplane-secrets /run/haproxy

# The project itself, from what its package is built of only (an edit of the tests rebuilds
# nothing); bound, then built in a scratch copy, so nothing of the build stays in the image.
RUN --mount=type=bind,source=pyproject.toml,target=/tmp/src/pyproject.toml \
    --mount=type=bind,source=README.md,target=/tmp/src/README.md \
    --mount=type=bind,source=controlplane,target=/tmp/src/controlplane \
    --mount=type=bind,source=migrations,target=/tmp/src/migrations \
    --mount=type=secret,id=pipca,required=false \
    --mount=type=cache,id=controlplane-pip,target=/root/.cache/pip \
    set -eu; \
    if [ -s /run/secrets/pipca ]; then export PIP_CERT=/run/secrets/pipca; fi; \
    cp -a /tmp/src /tmp/build; \
    /opt/venv/bin/pip install -q --disable-pip-version-check --no-deps /tmp/build; \
    rm -rf /tmp/build; \
    /opt/venv/bin/pip check; \
    /opt/venv/bin/controlplane --help >/dev/null

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    CONTROLPLANE_STATE_DIR=/var/lib/controlplane
WORKDIR /var/lib/controlplane
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["controlplane"]
CMD ["up"]
