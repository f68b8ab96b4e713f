#!/bin/sh
# Start tritonserver the way the control plane's embedded runtime does
# (controlplane.triton.server_command.tritonserver_argv, load_all_models=True), once the admin
# key the control plane writes exists. Used by the CPU image and, mounted in, by NVIDIA's image;
# tests/unit/test_compose_entrypoint.py keeps the two flag lists equal.
#
# Environment (defaults in brackets):
#   TRITON_ADMIN_KEY_FILE      file holding the key of the restricted admin APIs
#                              [/run/controlplane-secrets/triton-admin-key]
#   TRITON_MODEL_REPOSITORY    the pool's live repository [/pool/repository]
#   TRITON_BACKEND_DIRECTORY   --backend-directory; empty or unset: Triton's default
#                              (/opt/tritonserver/backends, where NVIDIA's image keeps them)
#   TRITON_ADDRESS             address of the HTTP, gRPC and metrics ports [0.0.0.0: only the
#                              stack's private network reaches the container]
#   TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT   [8000, 8001, 8002]
#   TRITON_SHM_PREFIX          name prefix of the Python backend's /dev/shm regions [cp_triton_]
#   TRITON_EXIT_TIMEOUT_SECS   [5]
#   TRITON_WAIT_SECS           how long to wait for the key file and the repository [300]
# Arguments are appended to tritonserver's (after every flag above).
set -eu

key_file="${TRITON_ADMIN_KEY_FILE:-/run/controlplane-secrets/triton-admin-key}"
repository="${TRITON_MODEL_REPOSITORY:-/pool/repository}"
backend_directory="${TRITON_BACKEND_DIRECTORY:-}"
address="${TRITON_ADDRESS:-0.0.0.0}"
http_port="${TRITON_HTTP_PORT:-8000}"
grpc_port="${TRITON_GRPC_PORT:-8001}"
metrics_port="${TRITON_METRICS_PORT:-8002}"
shm_prefix="${TRITON_SHM_PREFIX:-cp_triton_}"
exit_timeout="${TRITON_EXIT_TIMEOUT_SECS:-5}"
wait_secs="${TRITON_WAIT_SECS:-300}"

# Kept equal to controlplane.triton.server_command (RESTRICTED_APIS, ADMIN_KEY_HEADER, METRICS_CONFIG).
restricted_apis="model-repository,model-config,shared-memory,statistics,trace,logging"
admin_key_header="x-controlplane-admin-key"

fail() {
    echo "triton-entrypoint: $*" >&2
    exit 1
}

is_port() {
    case "$1" in '' | *[!0-9]*) return 1 ;; esac
    [ "$1" -gt 0 ] && [ "$1" -lt 65536 ]
}

for port in "$http_port" "$grpc_port" "$metrics_port"; do
    is_port "$port" || fail "not a port: $port"
done
case "$exit_timeout" in '' | *[!0-9]*) fail "TRITON_EXIT_TIMEOUT_SECS is not a number of seconds: $exit_timeout" ;; esac
case "$wait_secs" in '' | *[!0-9]*) fail "TRITON_WAIT_SECS is not a number of seconds: $wait_secs" ;; esac
# A /dev/shm file name and a --backend-config value: no '/', no ',', no leading '.'.
if ! printf '%s' "$shm_prefix" | grep -Eqx '[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}'; then
    fail "invalid TRITON_SHM_PREFIX: use 1-64 characters of [A-Za-z0-9_.-], not starting with '.'"
fi

# The control plane writes the key (and the repository) at its first start; Triton starts after.
# As PID 1 the shell would ignore the stop signal while it waits; exec drops these traps.
trap 'exit 0' INT TERM
waited=0
while [ ! -s "$key_file" ] || [ ! -d "$repository" ]; do
    if [ "$waited" -ge "$wait_secs" ]; then
        [ -s "$key_file" ] || fail "no admin key in $key_file after ${wait_secs} s"
        fail "no model repository $repository after ${wait_secs} s"
    fi
    if [ "$waited" -eq 0 ]; then
        echo "triton-entrypoint: waiting for $key_file and $repository" >&2
    fi
    sleep 1
    waited=$((waited + 1))
done
[ -r "$key_file" ] || fail "cannot read $key_file as uid $(id -u)"
# Surrounding white space aside, the whole file is the key (as the control plane reads it).
key="$(sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$key_file")"
case "$key" in
    *[!A-Za-z0-9_-]*) valid=0 ;;
    *) valid=1 ;;
esac
if [ "$valid" -eq 0 ] || [ "${#key}" -lt 16 ] || [ "${#key}" -gt 128 ]; then
    fail "$key_file does not hold a valid admin key (16-128 characters of [A-Za-z0-9_-])"
fi

# Regions of a previous run of this container (a crash leaves them; its stubs died with it).
# This container's /dev/shm is its own, and the prefix names this server's regions only.
for region in /dev/shm/"$shm_prefix"*; do
    [ -e "$region" ] && rm -f "$region"
done

set -- \
    "--model-repository=$repository" \
    ${backend_directory:+"--backend-directory=$backend_directory"} \
    --model-control-mode=explicit \
    "--http-address=$address" \
    "--grpc-address=$address" \
    "--metrics-address=$address" \
    "--http-port=$http_port" \
    "--grpc-port=$grpc_port" \
    "--metrics-port=$metrics_port" \
    "--backend-config=python,shm-region-prefix-name=$shm_prefix" \
    "--exit-timeout-secs=$exit_timeout" \
    --strict-readiness=false \
    --metrics-config=summary_latencies=true \
    --metrics-config=summary_quantiles=0.5:0.05,0.9:0.01,0.99:0.001 \
    "--http-restricted-api=$restricted_apis:$admin_key_header=$key" \
    "--grpc-restricted-protocol=$restricted_apis:$admin_key_header=$key" \
    "--load-model=*" \
    --exit-on-error=false \
    "$@"
exec tritonserver "$@"
