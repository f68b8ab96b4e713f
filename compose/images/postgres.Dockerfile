# PostgreSQL 15 from Debian for the offline form of the stack (compose/docker-compose.local.yml),
# where the official postgres image cannot be pulled. It behaves like the official image for
# what the stack and its tests use: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, data in
# /var/lib/postgresql/data, port 5432, pg_isready and psql on PATH, uid 999.
# Build context: the repository root.
#
#   DOCKER_BUILDKIT=1 docker build -f compose/images/postgres.Dockerfile \
#       --build-arg BASE_IMAGE=local/debian:bookworm -t controlplane/postgres:dev .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# The official image's uid and gid, so a data volume moves between the two.
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/bash postgres \
    && install -d -o postgres -g postgres -m 0755 /var/lib/postgresql

# No cluster of Debian's own (/etc/postgresql/15/main): the entrypoint makes one in PGDATA.
RUN --mount=type=cache,id=controlplane-apt-cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,id=controlplane-apt-lists,target=/var/lib/apt/lists,sharing=locked \
    set -eu; \
    mv /etc/apt/apt.conf.d/docker-clean /tmp/ 2>/dev/null || true; \
    apt-get update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null; \
    sed -ri 's/#(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null; \
    mv /tmp/docker-clean /etc/apt/apt.conf.d/ 2>/dev/null || true; \
    test ! -e /etc/postgresql/15/main; \
    install -d -o postgres -g postgres -m 3777 /var/run/postgresql; \
    install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data; \
    install -d -m 0755 /docker-entrypoint-initdb.d

COPY --chmod=0755 compose/images/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh

ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
VOLUME /var/lib/postgresql/data
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
