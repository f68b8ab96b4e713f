"""``runtime.json``: what the local runtime chose once and must choose the same way after a restart.

The file lives in the state directory and remembers, per pool, the Triton
ports of each replica, the shm prefix, the initial HAProxy weight and the
admin key of its running tritonservers (a secret: the file is mode 0600),
plus the proxy's bind address. It is what lets a restarted control plane recognise (and adopt) the
tritonserver and haproxy processes a killed one left running, and lets
clients keep using the same ports::

    {
      "format": 1,
      "proxy": {"host": "127.0.0.1", "grpc_port": 8001, "http_port": 8002},
      "pools": {
        "blue":  {"http_port": 40001, "grpc_port": 40002, "metrics_port": 40003,
                  "shm_prefix": "cp1a2b3c4d_blue_", "initial_weight": 1,
                  "admin_key": "<43 random URL-safe characters>"},
        "green": {"http_port": 40004, "grpc_port": 40005, "metrics_port": 40006,
                  "shm_prefix": "cp1a2b3c4d_green_", "initial_weight": 0,
                  "admin_key": "<another one>"}
      }
    }

A pool of N > 1 replicas (``pool_replicas``) keeps replica 1's ports at the
top of its entry, as above, and the others' in ``"extra_replicas"``
(``[{"http_port": .., "grpc_port": .., "metrics_port": ..}, ...]`` for
replicas 2..N). A one-replica pool has no such key, so a file written before
replicas existed reads as one replica per pool, and such a pool writes the
same bytes as then. All replicas of a pool share its admin key; replica i
of N > 1 uses the shm prefix ``<shm_prefix>r<i>_`` (``PoolState.replica_shm_prefix``),
so cleaning up after one replica never touches another's regions or stubs.

Invariants:

* Written only whole: a temporary file in the same directory, fsync, then
  ``os.replace``; a reader sees the old or the new content, never a mix.
* A pool's entry, once written, changes only when the caller asks for it
  (``ports_base`` set to other ports, or explicit ``initial_weights``);
  entries of pools a run did not ask for are kept, so their ports stay
  reserved for when they come back.
* No two replicas (of any pools) share a port, and no pool's shm prefix is a
  prefix of another pool's (orphan cleanup matches by prefix).
* A pool's admin key is made when its tritonserver starts fresh (not when
  one is adopted) and written here before that process starts, so a
  restarted control plane can talk to (and adopt) the Triton a killed one
  left running. "" means none yet (an entry written before keys existed).

Concurrency: only the one ``LocalStack`` holding the state directory's lock
writes it; planning (``plan_runtime``) is pure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from controlplane.errors import RuntimeStateError
from controlplane.files import write_atomically
from controlplane.triton.server_command import validate_admin_key, validate_shm_prefix

FORMAT = 1
FILE_NAME = "runtime.json"
DEFAULT_WEIGHT = 1
MAX_WEIGHT = 256
MAX_REPLICAS = 64


@dataclass(frozen=True)
class ReplicaPorts:
    """The ports of one tritonserver of a pool."""

    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def ports(self) -> tuple[int, int, int]:
        """(http, grpc, metrics)."""
        return (self.http_port, self.grpc_port, self.metrics_port)


@dataclass(frozen=True)
class PoolState:
    """What is remembered of one pool: replica 1's ports, then the other replicas' (``extra_replicas``)."""

    http_port: int
    grpc_port: int
    metrics_port: int
    shm_prefix: str
    initial_weight: int = DEFAULT_WEIGHT
    admin_key: str = field(default="", repr=False)
    extra_replicas: tuple[ReplicaPorts, ...] = ()

    @property
    def replicas(self) -> tuple[ReplicaPorts, ...]:
        """Every replica's ports, replica 1 first."""
        return (ReplicaPorts(self.http_port, self.grpc_port, self.metrics_port), *self.extra_replicas)

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port of every replica: (http, grpc, metrics) of replica 1, then of replica 2, ..."""
        return tuple(port for replica in self.replicas for port in replica.ports)

    def replica_shm_prefix(self, index: int) -> str:
        """The shm prefix of replica ``index`` (1-based): the pool's own when it has one replica."""
        if len(self.replicas) == 1:
            return self.shm_prefix
        return validate_shm_prefix(f"{self.shm_prefix}r{index}_")

    def with_replicas(self, replicas: Sequence[ReplicaPorts]) -> PoolState:
        """The same pool with these replicas' ports (at least one)."""
        first, *rest = replicas
        return replace(
            self,
            http_port=first.http_port,
            grpc_port=first.grpc_port,
            metrics_port=first.metrics_port,
            extra_replicas=tuple(rest),
        )


@dataclass(frozen=True)
class ProxyState:
    """Where the proxy listens (recorded for operators; the rendered config is what adoption compares)."""

    host: str
    grpc_port: int
    http_port: int


@dataclass(frozen=True)
class RuntimeState:
    """The whole content of ``runtime.json``."""

    pools: Mapping[str, PoolState] = field(default_factory=dict)
    proxy: ProxyState | None = None

    def to_json(self) -> str:
        """Serialise (stable key order, so an unchanged state writes identical bytes)."""
        doc: dict[str, object] = {
            "format": FORMAT,
            "proxy": None if self.proxy is None else dataclasses.asdict(self.proxy),
            "pools": {name: _pool_doc(p) for name, p in sorted(self.pools.items())},
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RuntimeState:
        """Parse and check; RuntimeStateError naming the problem."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RuntimeStateError(f"not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise RuntimeStateError(f"unknown format {doc.get('format') if isinstance(doc, dict) else doc!r}")
        try:
            pools = {
                str(name): PoolState(
                    http_port=_port(entry["http_port"]),
                    grpc_port=_port(entry["grpc_port"]),
                    metrics_port=_port(entry["metrics_port"]),
                    shm_prefix=validate_shm_prefix(str(entry["shm_prefix"])),
                    initial_weight=_weight(entry.get("initial_weight", DEFAULT_WEIGHT)),
                    admin_key=_admin_key(entry.get("admin_key", "")),
                    extra_replicas=_extra_replicas(entry.get("extra_replicas", [])),
                )
                for name, entry in dict(doc.get("pools") or {}).items()
            }
            proxy_doc = doc.get("proxy")
            proxy = (
                None
                if proxy_doc is None
                else ProxyState(
                    host=str(proxy_doc["host"]),
                    grpc_port=_port(proxy_doc["grpc_port"]),
                    http_port=_port(proxy_doc["http_port"]),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RuntimeStateError(f"bad entry: {exc!r}") from None
        state = cls(pools=pools, proxy=proxy)
        check_consistent(state.pools)
        return state


def _pool_doc(pool: PoolState) -> dict[str, object]:
    doc = dataclasses.asdict(pool)
    if not pool.admin_key:
        del doc["admin_key"]  # none yet: the file reads as before keys existed
    if not pool.extra_replicas:
        del doc["extra_replicas"]  # one replica: the file reads as before replicas existed
    return doc


def _extra_replicas(value: object) -> tuple[ReplicaPorts, ...]:
    if not isinstance(value, list) or len(value) >= MAX_REPLICAS:
        raise ValueError(f"extra_replicas must be a list of fewer than {MAX_REPLICAS} entries")
    return tuple(
        ReplicaPorts(
            http_port=_port(entry["http_port"]),
            grpc_port=_port(entry["grpc_port"]),
            metrics_port=_port(entry["metrics_port"]),
        )
        for entry in value
    )


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"port out of range: {value!r}")
    return value


def _admin_key(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("admin_key must be a string")
    return validate_admin_key(value) if value else ""


def _weight(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WEIGHT:
        raise ValueError(f"weight must be an integer in 0..{MAX_WEIGHT}, got {value!r}")
    return value


def check_consistent(pools: Mapping[str, PoolState]) -> None:
    """RuntimeStateError if two replicas share a port or one pool's shm prefix starts another's."""
    seen: dict[int, str] = {}
    for name, pool in pools.items():
        for port in pool.ports:
            if port in seen:
                where = f"pools {seen[port]} and {name}"
                if seen[port] == name:
                    where = f"two replicas of pool {name}"
                raise RuntimeStateError(f"port {port} is used by {where}")
            seen[port] = name
        try:
            for index in range(1, len(pool.replicas) + 1):
                pool.replica_shm_prefix(index)
        except ValueError as exc:
            raise RuntimeStateError(f"pool {name}: {exc}") from None
    prefixes = sorted((p.shm_prefix, name) for name, p in pools.items())
    for (a, name_a), (b, name_b) in itertools.pairwise(prefixes):
        if b.startswith(a):
            raise RuntimeStateError(f"shm prefix of pool {name_a} ({a}) is a prefix of pool {name_b}'s ({b})")


def load_state(path: Path) -> RuntimeState | None:
    """The state in ``path``, None when the file does not exist; RuntimeStateError when unusable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return RuntimeState.from_json(text)
    except RuntimeStateError as exc:
        raise RuntimeStateError(f"{path}: {exc}") from None


def save_state(path: Path, state: RuntimeState) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same directory, fsync, rename), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # It holds the pools' admin keys: 0600, and durable, since adoption after a crash reads it.
    write_atomically(path, state.to_json(), mode=0o600, durable=True)


def state_tag(state_dir: Path) -> str:
    """Short stable tag of a state directory: tells this directory's processes from others'."""
    return hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]


def shm_prefix_for(tag: str, pool: str, taken: Iterable[str]) -> str:
    """``cp<tag>_<pool>_``, or a hashed form if that would clash by prefix with one in ``taken``.

    (Pool "a" and pool "a_b" would give ``cpT_a_`` and ``cpT_a_b_``: cleaning
    up after "a" would kill the stubs of "a_b".)
    """
    taken = list(taken)
    readable = f"cp{tag}_{pool}_"
    if len(readable) <= 64 and not any(t.startswith(readable) or readable.startswith(t) for t in taken):
        return validate_shm_prefix(readable)
    digest = hashlib.sha256(pool.encode()).hexdigest()
    for size in range(8, 65, 4):
        hashed = f"cp{tag}_h{digest[:size]}_"
        if not any(t.startswith(hashed) or hashed.startswith(t) for t in taken):
            return validate_shm_prefix(hashed)
    raise RuntimeStateError(f"no free shm prefix for pool {pool}")


def plan_runtime(
    previous: RuntimeState | None,
    *,
    pool_names: tuple[str, ...],
    tag: str,
    proxy: ProxyState,
    ports_base: int = 0,
    initial_weights: Mapping[str, int] | None = None,
    recovered: Mapping[str, PoolState] | None = None,
    free_ports: Callable[[int, frozenset[int]], list[int]],
    replicas: int = 1,
) -> RuntimeState:
    """The state to run with: ``previous`` kept where possible, the rest filled in (pure).

    Every requested pool gets ``replicas`` replicas. Per replica, ports come
    from (first that applies): ``ports_base`` (``ports_base + 3*(i*R + j) ..
    +2`` for replica j (from 0) of the i-th pool with R replicas each: an
    explicit setting wins), the previous entry's replica j, ``recovered``
    (read from live processes of ours whose entry was lost), or
    ``free_ports(n, exclude)``. A previous entry with more replicas loses
    the extra ones (their ports are free again). The shm prefix is kept from
    the previous (or recovered) entry. The initial weight is
    ``initial_weights[pool]`` when given, else the previous one, else 1, so a
    caller that never passes weights renders the same proxy config on every
    start.
    """
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"replicas must be in 1..{MAX_REPLICAS}, got {replicas}")
    previous = previous or RuntimeState()
    recovered = recovered or {}
    if initial_weights is not None:
        unknown = sorted(set(initial_weights) - set(pool_names))
        if unknown:
            raise ValueError(f"initial_weights names unknown pools: {unknown}")
        for weight in initial_weights.values():
            _weight(weight)
    pools: dict[str, PoolState] = {n: p for n, p in previous.pools.items() if n not in pool_names}
    # Per pool: its kept entry (or None) and the ports of each replica (None: to be chosen).
    kept: dict[str, PoolState | None] = {}
    chosen: dict[str, list[ReplicaPorts | None]] = {}
    for i, name in enumerate(pool_names):
        entry = previous.pools.get(name) or recovered.get(name)
        known: list[ReplicaPorts | None] = list(entry.replicas[:replicas]) if entry else []
        known += [None] * (replicas - len(known))
        if ports_base:
            first = ports_base + 3 * i * replicas
            known = [ReplicaPorts(*range(first + 3 * j, first + 3 * j + 3)) for j in range(replicas)]
            if entry is not None and list(entry.replicas) != known:
                # Other ports: what ran there is replaced, with a key of its own.
                entry = PoolState(1, 1, 1, shm_prefix=entry.shm_prefix, initial_weight=entry.initial_weight)
        kept[name] = entry
        chosen[name] = known
    in_use = {port for p in pools.values() for port in p.ports} | {
        port for ports in chosen.values() for r in ports if r is not None for port in r.ports
    }
    missing = sum(1 for ports in chosen.values() for r in ports if r is None)
    fresh = iter(free_ports(3 * missing, frozenset(in_use)) if missing else [])
    planned: dict[str, PoolState] = {}
    for name in pool_names:
        ports = [r or ReplicaPorts(next(fresh), next(fresh), next(fresh)) for r in chosen[name]]
        entry = kept[name]
        base = entry or PoolState(http_port=1, grpc_port=1, metrics_port=1, shm_prefix="")
        planned[name] = base.with_replicas(ports)
    prefixes = [p.shm_prefix for p in [*pools.values(), *planned.values()] if p.shm_prefix]
    for name in pool_names:
        entry = planned[name]
        if not entry.shm_prefix:
            prefix = shm_prefix_for(tag, name, prefixes)
            prefixes.append(prefix)
            entry = replace(entry, shm_prefix=prefix)
        if initial_weights is not None and name in initial_weights:
            entry = replace(entry, initial_weight=initial_weights[name])
        pools[name] = entry
    check_consistent(pools)
    return RuntimeState(pools=pools, proxy=proxy)
