#!/bin/sh
# Run HAProxy in the foreground with the configuration the control plane renders into the
# volume both containers share, once it exists.
#
# Environment (defaults in brackets):
#   HAPROXY_CONFIG      [/run/haproxy/haproxy.cfg]
#   HAPROXY_WAIT_SECS   how long to wait for it [300]
# Arguments are appended to haproxy's.
set -eu

config="${HAPROXY_CONFIG:-/run/haproxy/haproxy.cfg}"
wait_secs="${HAPROXY_WAIT_SECS:-300}"
case "$wait_secs" in '' | *[!0-9]*) echo "haproxy-entrypoint: HAPROXY_WAIT_SECS is not a number: $wait_secs" >&2; exit 1 ;; esac

# As PID 1 the shell would ignore the stop signal while it waits; exec drops these traps.
trap 'exit 0' INT TERM USR1
waited=0
while [ ! -s "$config" ]; do
    if [ "$waited" -ge "$wait_secs" ]; then
        echo "haproxy-entrypoint: no configuration in $config after ${wait_secs} s" >&2
        exit 1
    fi
    [ "$waited" -eq 0 ] && echo "haproxy-entrypoint: waiting for $config" >&2
    sleep 1
    waited=$((waited + 1))
done
[ -r "$config" ] || { echo "haproxy-entrypoint: cannot read $config as uid $(id -u)" >&2; exit 1; }
# -db: foreground, no daemon, logs to stderr.
exec haproxy -db -f "$config" "$@"
