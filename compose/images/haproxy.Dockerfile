# HAProxy in front of the Triton pools: Debian's haproxy 2.6, run as uid 10001 (the control
# plane's uid, so the admin socket it creates in the shared /run/haproxy volume is the control
# plane's to use). It starts once the control plane has rendered /run/haproxy/haproxy.cfg
# (compose/haproxy/entrypoint.sh). Build context: the repository root.
#
#   DOCKER_BUILDKIT=1 docker build -f compose/images/haproxy.Dockerfile -t controlplane/haproxy:dev .
#
# BASE_IMAGE: debian:bookworm-slim, or local/debian:bookworm where no registry answers.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

RUN --mount=type=cache,id=controlplane-apt-cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,id=controlplane-apt-lists,target=/var/lib/apt/lists,sharing=locked \
    set -eu; \
    mv /etc/apt/apt.conf.d/docker-clean /tmp/ 2>/dev/null || true; \
    apt-get update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null; \
    mv /tmp/docker-clean /etc/apt/apt.conf.d/ 2>/dev/null || true; \
    haproxy -v | head -n 1 | grep -q 'version 2\.6\.'

RUN groupadd --gid 10001 controlplane \
    && useradd --uid 10001 --gid 10001 --home-dir /run/haproxy --no-create-home \
        --shell /usr/sbin/nologin controlplane \
    && rm -rf /run/haproxy \
    && install -d -o 10001 -g 10001 -m 0755 /run/haproxy

COPY --chmod=0755 compose/haproxy/entrypoint.sh /opt/controlplane/haproxy-entrypoint.sh

# As the official haproxy image: a soft stop (open streams end, bounded by hard-stop-after).
STOPSIGNAL SIGUSR1
ENV HAPROXY_CONFIG=/run/haproxy/haproxy.cfg
USER 10001:10001
EXPOSE 8001 8002
ENTRYPOINT ["/opt/controlplane/haproxy-entrypoint.sh"]
