"""HAProxy configuration for Triton pools: validated inputs, rendered text, no I/O.

The rendered configuration puts every Triton pool ("blue", "green", ...) behind
two frontends:

* a gRPC frontend (h2c) whose backend ``triton_grpc`` speaks HTTP/2 to each
  pool's gRPC port, and
* an HTTP frontend whose backend ``triton_http`` speaks HTTP/1.1 to each pool's
  HTTP port.

A server keeps the pool's name in both backends, so one runtime command per
backend moves a pool's traffic (see ``haproxy_runtime.HAProxyRuntime``).

Invariants the rendered text keeps (unit tests assert each one):

* The proxy forwards an allowlist and nothing else: health, server and model
  metadata, model readiness and inference (``GRPC_ALLOWED_METHODS`` and the
  ``HTTP_ALLOWED_*`` patterns). Everything else (model control, shared memory,
  logging, trace, statistics, model config, any other gRPC service, any path
  the patterns do not match exactly) gets a gRPC ``PERMISSION_DENIED`` or an
  HTTP 403 in Triton's error shape. Only the control plane, talking to Triton
  directly, reaches the rest of Triton's API.
* Each pool has a second server in each backend, ``<pool>_standby``: a
  ``backup`` that tracks the pool's server (same health, same admin state) with
  a fixed weight. HAProxy turns to backups only when no weighted server is
  usable, and a server at weight 0 is not usable, so when the pools with
  traffic die the warm pools at weight 0 take it. ``observe layer4`` marks a
  server DOWN at its first connection error instead of after ``fall`` checks,
  and the retry goes to a server that is still up. Calls already in flight on
  a killed server's HTTP/2 connection are not retried by HAProxy 2.6: it
  answers them RST_STREAM(REFUSED_STREAM), which tells the client the call was
  never processed (measured: at most one per client connection, 7 of 18,743).
* Health is judged by ``GET /v2/health/ready`` (or ``/live``, see
  ``ProxyConfig.health_path``) on the pool's HTTP port for both backends, so a
  pool that is alive but not ready takes no traffic. Triton is "not ready"
  while it loads or unloads any model: a pool changing its models is DOWN.
* Client-visible gRPC errors are counted per server name in the stick table
  ``grpc_errors`` (Triton sends a failed call as a Trailers-Only response, so
  ``grpc-status`` shows up in the response headers only when a call failed).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

GRPC_FRONTEND = "grpc_in"
HTTP_FRONTEND = "http_in"
STATS_FRONTEND = "stats"
GRPC_BACKEND = "triton_grpc"
HTTP_BACKEND = "triton_http"
GRPC_ERROR_TABLE = "grpc_errors"
POOL_BACKENDS: tuple[str, str] = (GRPC_BACKEND, HTTP_BACKEND)

HEALTH_READY: Final = "/v2/health/ready"
HEALTH_LIVE: Final = "/v2/health/live"
GRPC_SERVICE = "/inference.GRPCInferenceService/"
GRPC_ALLOWED_METHODS: tuple[str, ...] = (
    *(
        GRPC_SERVICE + method
        for method in (
            "ServerLive",
            "ServerReady",
            "ModelReady",
            "ServerMetadata",
            "ModelMetadata",
            "ModelInfer",
            "ModelStreamInfer",
        )
    ),
    # The standard gRPC health service; tritonserver 2.51 implements it.
    "/grpc.health.v1.Health/Check",
)
# Model names as Triton sees them in a URL segment, minus the pure-dot names
# ("." and "..") that a normaliser somewhere downstream could turn into a
# different path.
_HTTP_MODEL = r"[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*"
_HTTP_MODEL_PREFIX = rf"/v2/models/{_HTTP_MODEL}(/versions/[0-9]+)?"
# PCRE2 patterns. They end in \z, not $: PCRE2's $ also matches before a
# final newline, and HAProxy compiles without PCRE2_DOLLAR_ENDONLY.
HTTP_ALLOWED_GET: tuple[str, ...] = (
    r"^/v2/health/(live|ready)\z",
    r"^/v2\z",
    rf"^{_HTTP_MODEL_PREFIX}(/ready)?\z",
)
HTTP_ALLOWED_POST: tuple[str, ...] = (rf"^{_HTTP_MODEL_PREFIX}/(infer|generate|generate_stream)\z",)
# Triton routes this exact path to the statistics of every model before it
# tries the model patterns, so a model named "stats" must not open it.
HTTP_ALL_MODEL_STATS = "/v2/models/stats"
PROXY_DENIED_GRPC_MESSAGE = "this method is not available through the proxy"
PROXY_DENIED_HTTP_MESSAGE = "this endpoint is not available through the proxy"
PROXY_CHUNKED_MESSAGE = "chunked request bodies are not accepted through the proxy; send Content-Length"
# gRPC status code PERMISSION_DENIED.
GRPC_PERMISSION_DENIED = 7

STANDBY_SUFFIX = "_standby"
# A backup server takes traffic only while no weighted server is usable; its
# weight shares that traffic among the standbys (option allbackups).
STANDBY_WEIGHT = 1
# One connection error to a server marks it DOWN at once (its health checks
# bring it back after ``rise`` passes); waiting for ``fall`` failed checks
# instead cost about a second of failed requests when a pool was killed.
OBSERVE_ERROR_LIMIT = 1

MAX_WEIGHT = 256
MAX_NAME_LEN = 32
# Server names: a pool's name or its standby's.
MAX_SERVER_NAME_LEN = MAX_NAME_LEN + len(STANDBY_SUFFIX)
# The stick table stores server names; keep room above MAX_NAME_LEN.
_TABLE_KEY_LEN = 64
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_UNIX_SOCKET_PATH = 107

_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
# Characters that would need quoting or would end a token in haproxy's config
# syntax; refusing them is simpler and safer than quoting.
_UNSAFE_PATH_CHARS = re.compile(r"[\s\"'#\\$]")
_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_MAX_HEADER_NAME_LEN = 128


def validate_name(value: object, what: str = "name", *, max_len: int = MAX_NAME_LEN) -> str:
    """Return ``value`` if it is a valid backend/server/pool name, else raise ValueError.

    The same rule serves config rendering and runtime commands: a name that
    passes can be written into the config and into an admin-socket command
    without quoting. Server names may be longer (``max_len``) than pool
    names: a standby's name is its pool's plus ``STANDBY_SUFFIX``.
    """
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(f"{what} must match [A-Za-z0-9_-]+, got {value!r}")
    if len(value) > max_len:
        raise ValueError(f"{what} must be at most {max_len} characters, got {value!r}")
    return value


def standby_name(pool: str) -> str:
    """Return the name of ``pool``'s standby (backup) server in each pool backend."""
    return validate_name(pool, "pool") + STANDBY_SUFFIX


def pool_of_server(server: str) -> str:
    """Return the pool a server belongs to: its own name, or the pool whose standby it is."""
    return server.removesuffix(STANDBY_SUFFIX)


def is_standby(server: str) -> bool:
    """Whether ``server`` is a pool's standby rather than the pool's weighted server."""
    return server.endswith(STANDBY_SUFFIX)


def validate_header_name(value: object) -> str:
    """Return ``value`` if it is an HTTP header name safe to write into the config, else raise ValueError."""
    if (
        not isinstance(value, str)
        or not _HEADER_NAME_RE.fullmatch(value)
        or len(value) > _MAX_HEADER_NAME_LEN
    ):
        raise ValueError(
            "header name must match [A-Za-z0-9][A-Za-z0-9_-]*"
            f" (at most {_MAX_HEADER_NAME_LEN} characters), got {value!r}"
        )
    return value


def validate_port(value: object, what: str = "port") -> int:
    """Return ``value`` if it is an int in 1..65535, else raise ValueError."""
    # bool is an int subclass; True as a port is a bug, not port 1.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{what} must be an integer in 1..65535, got {value!r}")
    return value


def validate_weight(value: object) -> int:
    """Return ``value`` if it is an int in 0..256 (HAProxy's range), else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WEIGHT:
        raise ValueError(f"weight must be an integer in 0..{MAX_WEIGHT}, got {value!r}")
    return value


def validate_host(value: object, what: str = "host") -> str:
    """Return ``value`` if it is an IPv4/IPv6 literal or a hostname, else raise ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME_RE.fullmatch(value) or len(value) > 253:
            raise ValueError(f"{what} is neither an IP address nor a hostname: {value!r}") from None
    return value


def _validate_bind(value: object, what: str) -> tuple[str, int]:
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValueError(f"{what} must be a (host, port) tuple, got {value!r}")
    host, port = value
    return validate_host(host, f"{what} host"), validate_port(port, f"{what} port")


def _validate_path(value: object, what: str, *, unix_socket: bool = False) -> Path:
    if not isinstance(value, Path):
        raise ValueError(f"{what} must be a pathlib.Path, got {value!r}")
    text = str(value)
    if _UNSAFE_PATH_CHARS.search(text):
        raise ValueError(f"{what} must not contain whitespace, quotes, '#', '$' or '\\': {text!r}")
    if unix_socket and len(text.encode()) > _MAX_UNIX_SOCKET_PATH:
        raise ValueError(
            f"{what} is {len(text.encode())} bytes; a Unix socket path must be at most "
            f"{_MAX_UNIX_SOCKET_PATH}: {text!r}"
        )
    return value


def format_address(host: str, port: int) -> str:
    """Return ``host:port`` as HAProxy wants it (IPv6 literals in brackets)."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


@dataclass(frozen=True)
class PoolEndpoint:
    """One Triton pool as seen by the proxy: where its gRPC and HTTP ports are, and its weight."""

    name: str
    host: str
    grpc_port: int
    http_port: int
    weight: int

    def __post_init__(self) -> None:
        validate_name(self.name, "pool name")
        if is_standby(self.name):
            # Its standby's name would collide with another pool's server names.
            raise ValueError(f"pool name must not end with {STANDBY_SUFFIX!r}, got {self.name!r}")
        validate_host(self.host, f"pool {self.name} host")
        validate_port(self.grpc_port, f"pool {self.name} grpc_port")
        validate_port(self.http_port, f"pool {self.name} http_port")
        validate_weight(self.weight)


@dataclass(frozen=True)
class ProxyConfig:
    """Everything ``render_config`` needs; validated on construction."""

    grpc_bind: tuple[str, int]
    http_bind: tuple[str, int]
    admin_socket: Path
    pools: tuple[PoolEndpoint, ...]
    pid_file: Path | None = None
    stats_bind: tuple[str, int] | None = None
    health_path: Literal["/v2/health/ready", "/v2/health/live"] = HEALTH_READY
    """What the health checks ask each pool's HTTP port.

    ``/v2/health/ready`` (the default) also answers 400 while that Triton loads
    or unloads *any* model (measured: ~1.4 s for a Python-backend load, ~1.1 s
    for an unload), so HAProxy marks the whole pool DOWN for that long plus
    ``rise`` checks. Fine when models change only on a pool at weight 0 and
    the rollout waits for the pool to be UP again before giving it weight;
    ``/v2/health/live`` only catches dead servers, leaving model readiness to
    the control plane's weights.
    """
    strip_request_headers: tuple[str, ...] = ()
    """Request headers removed on both frontends before anything reaches Triton.

    For headers only the control plane may present to Triton directly (an
    admin key, for example): a client of the proxy can never send them.
    """

    def __post_init__(self) -> None:
        _validate_bind(self.grpc_bind, "grpc_bind")
        _validate_bind(self.http_bind, "http_bind")
        binds = [self.grpc_bind, self.http_bind]
        if self.stats_bind is not None:
            _validate_bind(self.stats_bind, "stats_bind")
            binds.append(self.stats_bind)
        if len(set(binds)) != len(binds):
            raise ValueError(f"grpc_bind, http_bind and stats_bind must differ, got {binds}")
        _validate_path(self.admin_socket, "admin_socket", unix_socket=True)
        if self.pid_file is not None:
            _validate_path(self.pid_file, "pid_file")
        if self.health_path not in (HEALTH_READY, HEALTH_LIVE):
            raise ValueError(f"health_path must be {HEALTH_READY} or {HEALTH_LIVE}, got {self.health_path!r}")
        if isinstance(self.pools, list):
            # Accept a list for convenience but keep the dataclass hashable and immutable.
            object.__setattr__(self, "pools", tuple(self.pools))
        if not isinstance(self.pools, tuple) or not self.pools:
            raise ValueError("pools must be a non-empty tuple of PoolEndpoint")
        for pool in self.pools:
            if not isinstance(pool, PoolEndpoint):
                raise ValueError(f"pools must hold PoolEndpoint objects, got {pool!r}")
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        if isinstance(self.strip_request_headers, list):
            object.__setattr__(self, "strip_request_headers", tuple(self.strip_request_headers))
        if not isinstance(self.strip_request_headers, tuple):
            raise ValueError(
                f"strip_request_headers must be a tuple of header names, got {self.strip_request_headers!r}"
            )
        for header in self.strip_request_headers:
            validate_header_name(header)


_CHECK = "check inter 500 fall 2 rise 2"
_OBSERVE = f"observe layer4 error-limit {OBSERVE_ERROR_LIMIT} on-error mark-down"


def _grpc_server_lines(pool: PoolEndpoint) -> list[str]:
    address = format_address(pool.host, pool.grpc_port)
    # check-proto h1 matters: without it the check inherits "proto h2" from the
    # server and speaks HTTP/2 to Triton's HTTP/1.1-only port, which fails every
    # check (seen here as "Layer7 timeout", the whole backend DOWN).
    return [
        f"    server {pool.name} {address} proto h2 weight {pool.weight}"
        f" check check-proto h1 port {pool.http_port} inter 500 fall 2 rise 2 {_OBSERVE}",
        f"    server {standby_name(pool.name)} {address} proto h2 weight {STANDBY_WEIGHT}"
        f" backup track {GRPC_BACKEND}/{pool.name}",
    ]


def _http_server_lines(pool: PoolEndpoint) -> list[str]:
    address = format_address(pool.host, pool.http_port)
    return [
        f"    server {pool.name} {address} weight {pool.weight} {_CHECK} {_OBSERVE}",
        f"    server {standby_name(pool.name)} {address} weight {STANDBY_WEIGHT}"
        f" backup track {HTTP_BACKEND}/{pool.name}",
    ]


def _grpc_allowlist(cfg: ProxyConfig) -> list[str]:
    return [
        "    acl grpc_call method POST",
        # pathq: the exact :path, query included; nothing is decoded or
        # normalised, so an encoded or re-cased method name is simply unknown.
        f"    acl grpc_allowed pathq -m str {' '.join(GRPC_ALLOWED_METHODS)}",
        # Answer as gRPC (HTTP 200 + grpc-status) so clients get a readable
        # PERMISSION_DENIED instead of "Received http2 header with status: 403".
        f"    http-request return status 200 hdr grpc-status {GRPC_PERMISSION_DENIED}"
        f' hdr grpc-message "{PROXY_DENIED_GRPC_MESSAGE}" unless grpc_call grpc_allowed',
        *(f"    http-request del-header {name}" for name in cfg.strip_request_headers),
    ]


def _config_words(patterns: tuple[str, ...]) -> str:
    # HAProxy's config parser turns "\\" into one backslash; a lone backslash
    # before another letter is not an escape it promises to keep.
    return " ".join(pattern.replace("\\", "\\\\") for pattern in patterns)


def _http_allowlist(cfg: ProxyConfig) -> list[str]:
    # A JSON body in Triton's own error shape, so tritonclient.http reports the
    # reason instead of a JSON parse error on HAProxy's HTML page.
    deny = (
        "    http-request return status 403 content-type application/json"
        f' string \'{{"error":"{PROXY_DENIED_HTTP_MESSAGE}"}}\''
    )
    return [
        "    acl get_request method GET",
        "    acl post_request method POST",
        # path: the raw path without the query, never decoded; Triton matches
        # paths exactly and case-sensitively, so anything these anchored
        # patterns miss (%2F, //, a trailing slash, upper case) is refused.
        f"    acl get_allowed path -m reg {_config_words(HTTP_ALLOWED_GET)}",
        f"    acl post_allowed path -m reg {_config_words(HTTP_ALLOWED_POST)}",
        f"    acl all_model_stats path -m str {HTTP_ALL_MODEL_STATS}",
        f"{deny} if all_model_stats",
        f"{deny} unless get_request get_allowed || post_request post_allowed",
        # Triton before 25.07 overflows its stack on many small chunks
        # (CVE-2025-23310/23311); Triton clients send Content-Length.
        "    http-request return status 411 content-type application/json"
        f" string '{{\"error\":\"{PROXY_CHUNKED_MESSAGE}\"}}' if {{ req.hdr(transfer-encoding) -m found }}",
        *(f"    http-request del-header {name}" for name in cfg.strip_request_headers),
    ]


def render_config(cfg: ProxyConfig) -> str:
    """Render the complete haproxy.cfg text for ``cfg``.

    Pure: writes nothing. Run ``haproxy -c -f FILE`` on the written file before
    (re)starting a proxy with it.
    """
    grpc_addr = format_address(*cfg.grpc_bind)
    http_addr = format_address(*cfg.http_bind)
    lines: list[str] = [
        "# Rendered by controlplane.traffic.haproxy_config; edits are overwritten.",
        "global",
        "    maxconn 4096",
        f"    stats socket {cfg.admin_socket} mode 600 level admin",
        "    stats timeout 30s",
        # A soft stop (SIGUSR1) waits for open streams; a gRPC stream can stay
        # open indefinitely, so bound the wait.
        "    hard-stop-after 30s",
    ]
    if cfg.pid_file is not None:
        lines.append(f"    pidfile {cfg.pid_file}")
    lines += [
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        # Long enough for slow inferences and streaming calls; an idle gRPC
        # client connection closed after this just reconnects.
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-request 10s",
        # Together with the fast health checks these made kill -9 of a pool
        # under load invisible to clients (0 failed of 25,125 requests, measured).
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout",
        "",
        f"frontend {GRPC_FRONTEND}",
        f"    bind {grpc_addr} proto h2",
        *_grpc_allowlist(cfg),
        f"    default_backend {GRPC_BACKEND}",
        "",
        f"frontend {HTTP_FRONTEND}",
        f"    bind {http_addr}",
        *_http_allowlist(cfg),
        f"    default_backend {HTTP_BACKEND}",
        "",
        f"backend {GRPC_BACKEND}",
        "    balance roundrobin",
        # Every usable standby shares the traffic, not only the first one.
        "    option allbackups",
        f"    option httpchk GET {cfg.health_path}",
        "    http-check expect status 200",
        # Triton puts grpc-status in the response headers only for a failed call
        # (Trailers-Only); a success carries it in trailers. Tracking increments
        # http_req_cnt of the entry keyed by the server that answered.
        f"    http-response track-sc0 srv_name table {GRPC_ERROR_TABLE}"
        " if { res.hdr(grpc-status) -m found } !{ res.hdr(grpc-status) -m str 0 }",
    ]
    lines += [line for p in cfg.pools for line in _grpc_server_lines(p)]
    lines += [
        "",
        f"backend {HTTP_BACKEND}",
        "    balance roundrobin",
        "    option allbackups",
        f"    option httpchk GET {cfg.health_path}",
        "    http-check expect status 200",
    ]
    lines += [line for p in cfg.pools for line in _http_server_lines(p)]
    lines += [
        "",
        f"backend {GRPC_ERROR_TABLE}",
        # No expire: counters live as long as the process, so readers diff them.
        f"    stick-table type string len {_TABLE_KEY_LEN} size 1k store http_req_cnt",
    ]
    if cfg.stats_bind is not None:
        lines += [
            "",
            f"frontend {STATS_FRONTEND}",
            f"    bind {format_address(*cfg.stats_bind)}",
            "    http-request use-service prometheus-exporter if { path /metrics }",
            "    stats enable",
            "    stats uri /stats",
            "    stats refresh 5s",
        ]
    return "\n".join(lines) + "\n"
