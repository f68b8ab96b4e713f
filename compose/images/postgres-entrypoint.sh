#!/usr/bin/env bash
# PostgreSQL as the official image starts it, for what the stack and tests use:
# POSTGRES_USER (default postgres), POSTGRES_PASSWORD (required unless
# POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_DB (default POSTGRES_USER), POSTGRES_INITDB_ARGS,
# POSTGRES_HOST_AUTH_METHOD (default scram-sha-256), data in PGDATA, *.sql and *.sh in
# /docker-entrypoint-initdb.d run once on a new data directory. Listens on 5432 on every address.
set -Eeuo pipefail

if [ "${1:-postgres}" != postgres ] && [ "${1:0:1}" != - ]; then
    exec "$@"
fi
[ "${1:-}" = postgres ] && shift

if [ "$(id -u)" = 0 ]; then
    # A bind mount or an old volume may belong to someone else: make it the server's.
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" postgres "$@"
fi

say() {
    echo "postgres-entrypoint: $*" >&2
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    POSTGRES_USER="${POSTGRES_USER:-postgres}"
    POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
    auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
        say "POSTGRES_PASSWORD is not set: set it, or POSTGRES_HOST_AUTH_METHOD=trust to allow every connection"
        exit 1
    fi
    pwfile="$(mktemp)"
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    # shellcheck disable=SC2086
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=trust \
        ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA"
    rm -f "$pwfile"
    printf '\nlisten_addresses = '"'"'*'"'"'\n' >>"$PGDATA/postgresql.conf"
    printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

    # Set up on a private socket only: no client (nor pg_isready) sees the server until it is done.
    socket_dir="$(mktemp -d)"
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories='$socket_dir'" start
    export PGHOST="$socket_dir" PGUSER="$POSTGRES_USER"
    if [ "$POSTGRES_DB" != postgres ]; then
        # From stdin: psql interpolates :"db" (a quoted identifier) there, not in -c.
        echo 'CREATE DATABASE :"db";' \
            | psql -v ON_ERROR_STOP=1 --no-password --dbname postgres --set db="$POSTGRES_DB"
    fi
    for file in /docker-entrypoint-initdb.d/*; do
        case "$file" in
            *.sql) say "running $file"; psql -v ON_ERROR_STOP=1 --no-password --dbname "$POSTGRES_DB" -f "$file" ;;
            *.sh) say "running $file"; . "$file" ;;
            *) ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    unset PGHOST PGUSER
    rm -rf "$socket_dir"
    say "PostgreSQL init process complete; ready for start up."
fi

exec postgres "$@"
