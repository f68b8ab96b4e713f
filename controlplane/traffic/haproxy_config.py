"""HAProxy configuration for Triton pools: validated inputs, rendered text, no I/O.

The rendered configuration puts every Triton pool ("blue", "green", ...) behind
two frontends:

* a gRPC frontend (h2c) whose backend ``triton_grpc`` speaks HTTP/2 to each
  pool's gRPC port, and
* an HTTP frontend whose backend ``triton_http`` speaks HTTP/1.1 to each pool's
  HTTP port.

A pool is one or more Triton replicas (``PoolEndpoint.replicas``), each a
server in both backends with its own health check. A one-replica pool's
server is named after the pool (``blue``), so a proxy rendered before pools
had replicas reads the same; in a pool of N > 1 replicas they are
``<pool>_r1`` .. ``<pool>_rN``. ``pool_of_server`` maps every server name
(replica or standby) back to its pool, which is why pool names ending in
``_r<digits>`` or ``_standby`` are refused. Runtime commands find a pool's
servers by that mapping (see ``haproxy_runtime.HAProxyRuntime``).

HAProxy balances by server weight, so a pool of N replicas at weight W
draws N*W: the pools' weights keep their meaning (a share of the traffic)
only when every pool has the same number of replicas, which ``ProxyConfig``
requires. Within a pool every replica gets the pool's weight (round robin
among them).

Invariants the rendered text keeps (unit tests assert each one):

* The proxy forwards an allowlist and nothing else: health, server and model
  metadata, model readiness and inference (``GRPC_ALLOWED_METHODS`` and the
  ``HTTP_ALLOWED_*`` patterns). Everything else (model control, shared memory,
  logging, trace, statistics, model config, any other gRPC service, any path
  the patterns do not match exactly) gets a gRPC ``PERMISSION_DENIED`` or an
  HTTP 403 in Triton's error shape. Only the control plane, talking to Triton
  directly, reaches the rest of Triton's API.
* Each replica server has a second server in each backend, its standby
  (``blue_standby``, ``blue_r1_standby``): a ``backup`` that tracks it (same
  health, same admin state) with a fixed weight. HAProxy turns to backups only when no weighted server is
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
* gRPC calls of every client share the connections to a replica
  (``http-reuse always``): HTTP/2 multiplexes calls, Triton keeps no state per
  connection, and Triton's gRPC server then reads several calls per wake-up
  instead of one per client connection (measured on 2 cores: 15-30 % less CPU
  per call in HAProxy and in Triton, ``bench/proxy.py``).
* Client-visible gRPC errors are counted per server name in the stick table
  ``grpc_errors`` (Triton sends a failed call as a Trailers-Only response, so
  ``grpc-status`` shows up in the response headers only when a call failed).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
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

DNS_RESOLVERS = "pool_hosts"
STANDBY_SUFFIX = "_standby"
# A backup server takes traffic only while no weighted server is usable; its
# weight shares that traffic among the standbys (option allbackups).
STANDBY_WEIGHT = 1
# One connection error to a server marks it DOWN at once (its health checks
# bring it back after ``rise`` passes); waiting for ``fall`` failed checks
# instead cost about a second of failed requests when a pool was killed.
OBSERVE_ERROR_LIMIT = 1

MAX_WEIGHT = 256
MAX_THREADS = 64
# One proxy thread per this many CPUs. The proxy shares the machine with Triton, which has work
# for every core: on 2 cores one thread against two cost 25-30 % less proxy CPU per gRPC call and
# raised throughput through the proxy from 0.72-0.81x to 0.82-1.01x of direct (bench/proxy.py).
CPUS_PER_PROXY_THREAD = 4
MAX_NAME_LEN = 32
# Replica servers of a pool of several: <pool>_r1 .. <pool>_rN.
REPLICA_INFIX = "_r"
MAX_REPLICAS = 64
# Server names: a pool's name, a replica's, or the standby of either.
MAX_SERVER_NAME_LEN = MAX_NAME_LEN + len(f"{REPLICA_INFIX}{MAX_REPLICAS}") + len(STANDBY_SUFFIX)
_REPLICA_SUFFIX_RE = re.compile(rf"{REPLICA_INFIX}[0-9]+\Z")
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


def standby_name(server: str) -> str:
    """Return the name of the standby (backup) server of ``server`` (a one-replica pool's: the pool's)."""
    return validate_name(server, "server", max_len=MAX_SERVER_NAME_LEN - len(STANDBY_SUFFIX)) + STANDBY_SUFFIX


def replica_server_names(pool: str, replicas: int) -> tuple[str, ...]:
    """The server names of ``pool``'s replicas: ``(pool,)`` for one, else ``pool_r1 .. pool_rN``."""
    validate_name(pool, "pool")
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"a pool has 1..{MAX_REPLICAS} replicas, got {replicas}")
    if replicas == 1:
        return (pool,)
    return tuple(f"{pool}{REPLICA_INFIX}{i}" for i in range(1, replicas + 1))


def pool_of_server(server: str) -> str:
    """Return the pool a server belongs to: a replica's pool, or the pool of the replica a standby tracks."""
    return _REPLICA_SUFFIX_RE.sub("", server.removesuffix(STANDBY_SUFFIX))


def validate_pool_name(value: object) -> str:
    """A pool name whose servers' names map back to it alone (``pool_of_server``); ValueError otherwise."""
    name = validate_name(value, "pool name")
    if is_standby(name):
        # Its standby's name would collide with another pool's server names.
        raise ValueError(f"pool name must not end with {STANDBY_SUFFIX!r}, got {name!r}")
    if _REPLICA_SUFFIX_RE.search(name):
        # "blue_r1" would be replica 1 of pool "blue".
        raise ValueError(f"pool name must not end with {REPLICA_INFIX!r} and digits, got {name!r}")
    return name


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


def proxy_threads_for(cpus: int) -> int:
    """HAProxy threads on a machine of ``cpus`` usable CPUs shared with Triton: one per four, at least one."""
    return max(1, min(MAX_THREADS, cpus // CPUS_PER_PROXY_THREAD))


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
class ReplicaEndpoint:
    """One Triton replica of a pool: where its gRPC and HTTP ports are."""

    host: str
    grpc_port: int
    http_port: int

    def __post_init__(self) -> None:
        validate_host(self.host, "replica host")
        validate_port(self.grpc_port, f"replica {self.host} grpc_port")
        validate_port(self.http_port, f"replica {self.host} http_port")


@dataclass(frozen=True)
class PoolEndpoint:
    """One Triton pool as seen by the proxy: its replicas' gRPC and HTTP ports, and its weight.

    ``host``, ``grpc_port`` and ``http_port`` are the first replica's;
    ``replicas`` lists every replica, that one first, and defaults to it
    alone, so ``PoolEndpoint(name, host, grpc_port, http_port, weight)`` is
    a one-replica pool (``PoolEndpoint.of_replicas`` builds one of several).
    Every replica server gets the pool's ``weight``.
    """

    name: str
    host: str
    grpc_port: int
    http_port: int
    weight: int
    replicas: tuple[ReplicaEndpoint, ...] = ()

    def __post_init__(self) -> None:
        validate_pool_name(self.name)
        validate_host(self.host, f"pool {self.name} host")
        validate_port(self.grpc_port, f"pool {self.name} grpc_port")
        validate_port(self.http_port, f"pool {self.name} http_port")
        validate_weight(self.weight)
        first = ReplicaEndpoint(self.host, self.grpc_port, self.http_port)
        replicas = tuple(self.replicas) if isinstance(self.replicas, (list, tuple)) else self.replicas
        if not isinstance(replicas, tuple) or not all(isinstance(r, ReplicaEndpoint) for r in replicas):
            raise ValueError(f"pool {self.name} replicas must be ReplicaEndpoint objects, got {replicas!r}")
        if not replicas:
            replicas = (first,)
        if replicas[0] != first:
            raise ValueError(f"pool {self.name}: host and ports must be the first replica's, {replicas[0]}")
        if len(replicas) > MAX_REPLICAS:
            raise ValueError(f"pool {self.name} has {len(replicas)} replicas, at most {MAX_REPLICAS}")
        for kind in ("grpc_port", "http_port"):
            addresses = [(r.host, getattr(r, kind)) for r in replicas]
            if len(set(addresses)) != len(addresses):
                raise ValueError(f"pool {self.name}: two replicas share a {kind.split('_')[0]} address")
        object.__setattr__(self, "replicas", replicas)

    @classmethod
    def of_replicas(cls, name: str, replicas: tuple[ReplicaEndpoint, ...], weight: int) -> PoolEndpoint:
        """A pool of ``replicas`` (at least one), each at ``weight``."""
        if not replicas:
            raise ValueError(f"pool {name} needs at least one replica")
        first = replicas[0]
        return cls(name, first.host, first.grpc_port, first.http_port, weight, tuple(replicas))

    @classmethod
    def of_hosts(
        cls, name: str, hosts: Sequence[str], grpc_port: int, http_port: int, weight: int
    ) -> PoolEndpoint:
        """A pool whose replicas all listen on the same ports, one per host (containers, say)."""
        return cls.of_replicas(name, tuple(ReplicaEndpoint(h, grpc_port, http_port) for h in hosts), weight)

    @property
    def servers(self) -> tuple[tuple[str, ReplicaEndpoint], ...]:
        """(server name, replica) for each replica, in order."""
        return tuple(zip(replica_server_names(self.name, len(self.replicas)), self.replicas, strict=True))


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
    dns_resolver: tuple[str, int] | None = None
    """A DNS server that names the pools' hosts (a container engine's, 127.0.0.11:53).

    Set, the proxy starts even while a pool's host does not resolve yet (that
    server stays down until it does) and follows a host's new address when
    its container is recreated; unset, every host must resolve at start.
    """
    threads: int | None = None
    """HAProxy's ``nbthread`` (None: HAProxy's own default, a thread per CPU it may run on)."""
    grpc_connection_reuse: Literal["always", "safe"] = "always"
    """Which gRPC calls may share a connection to Triton (HAProxy's ``http-reuse``).

    ``always``: any call, whichever client sent it, on any connection with a
    free stream; ``safe`` (HAProxy's default): a client connection's first call
    opens a connection of its own, which roughly gives each client connection
    its own connection to Triton.
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
        if self.dns_resolver is not None:
            _validate_bind(self.dns_resolver, "dns_resolver")
        if len(set(binds)) != len(binds):
            raise ValueError(f"grpc_bind, http_bind and stats_bind must differ, got {binds}")
        _validate_path(self.admin_socket, "admin_socket", unix_socket=True)
        if self.pid_file is not None:
            _validate_path(self.pid_file, "pid_file")
        threads = self.threads
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS
        ):
            raise ValueError(f"threads must be an integer in 1..{MAX_THREADS}, got {self.threads!r}")
        if self.grpc_connection_reuse not in ("always", "safe"):
            raise ValueError(
                f"grpc_connection_reuse must be always or safe, got {self.grpc_connection_reuse!r}"
            )
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
        counts = {p.name: len(p.replicas) for p in self.pools}
        if len(set(counts.values())) != 1:
            # HAProxy shares traffic by server weight: a pool of N servers draws N times its weight.
            raise ValueError(f"every pool must have the same number of replicas, got {counts}")
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
    lines: list[str] = []
    for server, replica in pool.servers:
        address = format_address(replica.host, replica.grpc_port)
        # The check goes to the HTTP port of the replica's own address (``addr`` stays the server's).
        # check-proto h1 matters: without it the check inherits "proto h2" from the
        # server and speaks HTTP/2 to Triton's HTTP/1.1-only port, which fails every
        # check (seen here as "Layer7 timeout", the whole backend DOWN).
        lines += [
            f"    server {server} {address} proto h2 weight {pool.weight}"
            f" check check-proto h1 port {replica.http_port} inter 500 fall 2 rise 2 {_OBSERVE}",
            f"    server {standby_name(server)} {address} proto h2 weight {STANDBY_WEIGHT}"
            f" backup track {GRPC_BACKEND}/{server}",
        ]
    return lines


def _http_server_lines(pool: PoolEndpoint) -> list[str]:
    lines: list[str] = []
    for server, replica in pool.servers:
        address = format_address(replica.host, replica.http_port)
        lines += [
            f"    server {server} {address} weight {pool.weight} {_CHECK} {_OBSERVE}",
            f"    server {standby_name(server)} {address} weight {STANDBY_WEIGHT}"
            f" backup track {HTTP_BACKEND}/{server}",
        ]
    return lines


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
        f' string \'{{"error":"{PROXY_CHUNKED_MESSAGE}"}}\' if {{ req.hdr(transfer-encoding) -m found }}',
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
        *([f"    nbthread {cfg.threads}"] if cfg.threads is not None else []),
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
        *(
            [f"    default-server init-addr last,libc,none resolvers {DNS_RESOLVERS} resolve-prefer ipv4"]
            if cfg.dns_resolver is not None
            else []
        ),
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
        f"    http-reuse {cfg.grpc_connection_reuse}",
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
    if cfg.dns_resolver is not None:
        lines += [
            "",
            f"resolvers {DNS_RESOLVERS}",
            f"    nameserver dns1 {format_address(*cfg.dns_resolver)}",
            "    hold valid 5s",
            "    resolve_retries 3",
            "    timeout retry 1s",
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
