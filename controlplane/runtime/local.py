"""Runtime "local": tritonserver and haproxy as supervised processes of the control plane.

Everything lives under the state directory::

    runtime.json              ports, shm prefixes, initial weights, admin keys (see ``runtime.state``)
    runtime.lock              held (flock) by the one LocalStack running on this directory
    backends/                 Triton backend directory (Python backend + onnxruntime stand-in)
    pools/<pool>/repository   the pool's live model repository
    pools/<pool>/triton.log   its server log
    pools/<pool>/tritonserver.pid
    pools/<pool>/triton-r<i>.log, tritonserver-r<i>.pid
                              the same for replica i, when a pool has several
    proxy/haproxy.cfg         generated proxy configuration (admin socket beside it)
    proxy/haproxy.pid

A pool is ``pool_replicas`` tritonservers (default 1), all serving the pool's
one repository with the pool's admin key, each with its own ports, shm
prefix, pid file and log, supervised and adopted one by one; HAProxy has a
server (and a standby) per replica. Changing the number of replicas stops
the servers of the old layout and starts the new one (and the proxy, whose
configuration changes).

Who can reach Triton. Each tritonserver listens on ``triton_address`` only
(loopback by default; HAProxy and the control plane connect there), and its
admin APIs (model repository, config, shared memory, statistics, trace,
logging) answer only requests carrying the pool's admin key
(``LocalTritonPool.admin_headers``), made when the pool's tritonserver
starts fresh and kept in ``runtime.json``. When the control plane runs as
root, tritonserver and so every model's code run as ``triton_user``
(default ``controlplane-triton``, no supplementary groups), and the state
directory's modes (``runtime.permissions``) keep that user away from the
registry, the keys, the artifacts, uploads and the proxy's admin socket.
Each tritonserver starts with ``--load-model=*``: a restarted one loads
every model of its repository before its ports open, so HAProxy's health
check keeps it out of rotation until then.

The data plane outlives the control plane. Triton and HAProxy run in their
own sessions, so a kill -9 of the control plane leaves them serving. The next
start reads ``runtime.json`` (same ports, same shm prefixes, same initial
weights, hence the same command lines and the same rendered HAProxy config)
and, for each pid file naming a live process that is ours and runs exactly
what it would start, adopts that process instead of starting a new one (see
``runtime.adoption``). Clients of the proxy ports never notice the restart.

Invariants:

* A replica's Triton ports and a pool's shm prefix are chosen once and kept in
  ``runtime.json``; a port taken by something that is not ours fails the
  start with ``StartupFailed`` instead of moving the pool elsewhere.
* A process that is not ours (the pid was reused) is never signalled. One
  that is ours but runs something else (other ports, address or admin key)
  is stopped and replaced (logged). "Ours" includes a process of Triton's
  own user.
* An adopted process is supervised like a child: when it dies its leftovers
  (backend stubs, /dev/shm regions of its shm prefix) are removed and it is
  restarted as our child, with ``on_restart`` called.
* ``stop()`` stops everything, adopted processes included: proxy first (no
  new requests), then every Triton at once (its models unloaded, then
  SIGTERM), each one's leftovers removed.
* HAProxy's runtime weights live in its process: an adopted proxy keeps the
  weights it had; a started one begins with the rendered initial weights.
  The caller re-applies desired weights after ``start()``. Any other
  difference between the running proxy's config file and a fresh rendering
  (ports, pools, options) replaces the proxy, and the log says what changed.

Concurrency: one LocalStack per state directory at a time (``runtime.lock``,
taken in ``start()``; the kernel releases it when the holder dies, even by
kill -9). ``start()`` and ``stop()`` are called from one thread; supervision
runs in one monitor thread per process (``runtime.process``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import pwd
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from controlplane.errors import ControlPlaneError, StartupFailed, TritonUnavailable
from controlplane.files import write_atomically
from controlplane.procfs import owner_uid, read_pid_file
from controlplane.runtime.adoption import (
    Action,
    TritonArgs,
    decide_haproxy,
    decide_triton,
    parse_tritonserver_argv,
)
from controlplane.runtime.cleanup import clean_triton_leftovers
from controlplane.runtime.permissions import chmod_if_exists, make_traversable, private_dir, secure_state_dir
from controlplane.runtime.ports import free_ports, port_is_free
from controlplane.runtime.process import AdoptedProcess, SupervisedProcess, terminate
from controlplane.runtime.readiness import stack_readiness
from controlplane.runtime.state import (
    FILE_NAME,
    PoolState,
    ProxyState,
    ReplicaPorts,
    RuntimeState,
    RuntimeStateError,
    load_state,
    plan_runtime,
    save_state,
    state_tag,
)
from controlplane.staging.repository import PoolRepository
from controlplane.traffic.haproxy import (
    HAProxyRuntime,
    PoolEndpoint,
    ProxyConfig,
    ReplicaEndpoint,
    haproxy_command,
    render_config,
)
from controlplane.triton.backend_dir import build_backend_directory, pytriton_layout, tritonserver_binary
from controlplane.triton.client import TritonClient
from controlplane.triton.server_command import (
    ADMIN_KEY_HEADER,
    DEFAULT_ADDRESS,
    GRPC_ADMIN_KEY_HEADER,
    admin_headers,
    new_admin_key,
    tritonserver_command,
)

log = logging.getLogger(__name__)

# AF_UNIX paths are limited to 108 bytes; deep state directories (pytest's) exceed it.
_MAX_SOCKET_PATH = 100
DEFAULT_TRITON_USER = "controlplane-triton"


@dataclass(frozen=True)
class TritonUser:
    """The unprivileged account tritonserver (and so model code) runs as."""

    name: str
    uid: int
    gid: int


def lookup_triton_user(name: str | None) -> TritonUser | None:
    """The account ``name``, or None when ``name`` is empty or no such account exists."""
    if not name:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return TritonUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def inspect_pid_file(
    pid_file: Path, owners: Collection[int] | None = None
) -> tuple[AdoptedProcess | None, list[str] | None]:
    """A handle on the live process ``pid_file`` names and its argv; (None, None) if there is none.

    A process whose uid is not in ``owners`` (default: ours) is reported as
    (None, argv-or-None): it is not ours to adopt or signal.
    """
    allowed = {os.getuid()} if owners is None else set(owners)
    pid = read_pid_file(pid_file)
    if pid is None:
        return None, None
    handle = AdoptedProcess.open(pid)
    if handle is None:
        return None, None
    argv = handle.cmdline()
    if argv is None or owner_uid(pid) not in allowed:
        handle.close()
        return None, argv
    return handle, argv


@dataclass
class LocalTritonReplica:
    """One tritonserver of a pool: its ports, shm prefix, pid file and log.

    A pool of one replica keeps the names it had before pools had replicas
    (``tritonserver.pid``, ``triton.log``, the pool's shm prefix), so its
    running server is adopted after an upgrade; replica i of N > 1 has
    ``tritonserver-r<i>.pid``, ``triton-r<i>.log`` and its own shm prefix.
    """

    pool: str
    index: int
    count: int
    root: Path
    http_port: int
    grpc_port: int
    metrics_port: int
    shm_prefix: str
    address: str = DEFAULT_ADDRESS
    user: TritonUser | None = None
    process: SupervisedProcess | None = None

    @property
    def label(self) -> str:
        """How logs name it: the pool, or the pool and the replica."""
        return self.pool if self.count == 1 else f"{self.pool} replica {self.index}"

    @property
    def _suffix(self) -> str:
        return "" if self.count == 1 else f"-r{self.index}"

    @property
    def pid_file(self) -> Path:
        """Where its current tritonserver's pid is kept, for adoption by the next run."""
        return self.root / f"tritonserver{self._suffix}.pid"

    @property
    def log_path(self) -> Path:
        return self.root / f"triton{self._suffix}.log"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of this replica's own Triton gRPC (not the proxy)."""
        return _host_port(self.address, self.grpc_port)

    @property
    def http_url(self) -> str:
        """Base URL of this replica's own Triton HTTP API (not the proxy): its control calls go there."""
        return f"http://{_host_port(self.address, self.http_port)}"

    @property
    def metrics_url(self) -> str:
        """Base URL of this replica's Triton metrics endpoint."""
        return f"http://{_host_port(self.address, self.metrics_port)}"

    @property
    def owners(self) -> set[int]:
        """Uids its tritonserver may run as: ours, or Triton's own user."""
        return {os.getuid()} | ({self.user.uid} if self.user else set())

    def cleanup(self) -> None:
        """Kill this replica's orphaned backend stubs and remove its /dev/shm regions."""
        killed, removed = clean_triton_leftovers(self.shm_prefix)
        if killed or removed:
            log.info("pool %s: killed %d backend stubs, removed %d shm regions", self.label, killed, removed)

    def supervised(self, backend_dir: Path, repository: Path, admin_key: str) -> SupervisedProcess:
        argv, env = tritonserver_command(
            model_repository=repository,
            backend_directory=backend_dir,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            shm_prefix=self.shm_prefix,
            address=self.address,
            admin_key=admin_key,
            load_all_models=True,
        )
        return SupervisedProcess(
            f"triton-{self.pool}{self._suffix}",
            argv,
            env=env,
            log_path=self.log_path,
            cleanup=self.cleanup,
            pid_file=self.pid_file,
            user=self.user.uid if self.user else None,
            group=self.user.gid if self.user else None,
        )

    def check_ports_free(self) -> None:
        ports = {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}
        for kind, port in ports.items():
            if not port_is_free(port, self.address):
                raise StartupFailed(
                    f"port {port} ({kind} port of Triton pool {self.label}, kept in {FILE_NAME}) is in use "
                    "by a process that is not this pool's tritonserver: stop that process, or remove the "
                    f"pool's entry from {FILE_NAME} (or set other Triton ports) to choose new ports",
                    details={"pool": self.pool, "replica": self.index, "port": port},
                )


@dataclass
class LocalTritonPool:
    """One pool: its tritonserver replicas (``pool_replicas``, at least one) on its one repository.

    Every replica serves the pool's live repository with the pool's admin
    key. ``process`` is replica 1's supervised tritonserver; the others'
    restarts also call its ``on_restart``, so what a caller hooks there
    (the reconcile after a restart) hears of every replica.
    """

    name: str
    root: Path
    replicas: list[LocalTritonReplica]
    shm_prefix: str
    initial_weight: int = 1
    address: str = DEFAULT_ADDRESS
    admin_key: str = ""
    user: TritonUser | None = None

    @property
    def repository(self) -> PoolRepository:
        """The pool's live and staging model folders."""
        return PoolRepository(self.root)

    @property
    def grpc_urls(self) -> list[str]:
        """``host:port`` of each replica's own Triton gRPC (not the proxy), replica 1 first."""
        return [r.grpc_url for r in self.replicas]

    @property
    def http_urls(self) -> list[str]:
        """Base URL of each replica's own Triton HTTP API, replica 1 first."""
        return [r.http_url for r in self.replicas]

    @property
    def metrics_urls(self) -> list[str]:
        """Base URL of each replica's Triton metrics endpoint."""
        return [r.metrics_url for r in self.replicas]

    @property
    def grpc_url(self) -> str:
        """Replica 1's gRPC address."""
        return self.replicas[0].grpc_url

    @property
    def metrics_url(self) -> str:
        """Replica 1's metrics endpoint."""
        return self.replicas[0].metrics_url

    @property
    def http_port(self) -> int:
        return self.replicas[0].http_port

    @property
    def grpc_port(self) -> int:
        return self.replicas[0].grpc_port

    @property
    def metrics_port(self) -> int:
        return self.replicas[0].metrics_port

    @property
    def pid_file(self) -> Path:
        """Replica 1's pid file."""
        return self.replicas[0].pid_file

    @property
    def process(self) -> SupervisedProcess | None:
        """Replica 1's supervised tritonserver (see the class docstring for ``on_restart``)."""
        return self.replicas[0].process

    @property
    def processes(self) -> list[SupervisedProcess]:
        """Every replica's supervised tritonserver, replica 1 first."""
        return [r.process for r in self.replicas if r.process is not None]

    @property
    def admin_headers(self) -> dict[str, str]:
        """Headers that open this pool's restricted Triton APIs (HTTP and gRPC clients alike)."""
        return admin_headers(self.admin_key) if self.admin_key else {}

    @property
    def owners(self) -> set[int]:
        """Uids a tritonserver of this pool may run as: ours, or Triton's own user."""
        return {os.getuid()} | ({self.user.uid} if self.user else set())

    def cleanup(self) -> None:
        """Kill every replica's orphaned backend stubs and remove their /dev/shm regions."""
        for replica in self.replicas:
            replica.cleanup()

    def _forward_restart(self) -> None:
        first = self.replicas[0].process
        if first is not None and first.on_restart is not None:
            first.on_restart()

    def start(self, backend_dir: Path, *, remember_key: Callable[[str], None] = lambda _key: None) -> None:
        """Adopt each replica's running tritonserver if it is ours and current, else start one.

        Leftovers of another layout (the pid files of replicas this run
        does not have) are stopped first. When no replica is adopted, the
        pool gets a new admin key, handed to ``remember_key`` (which must
        persist it) before any process starts; replicas started beside an
        adopted one get the key it runs with.
        """
        self._stop_leftovers()
        if not self.admin_key:
            # Nothing runs with a key we never had: only fills the argv compared for adoption.
            self.admin_key = new_admin_key()
        live = self.repository.live
        found: list[tuple[AdoptedProcess | None, list[str] | None]] = []
        decisions = []
        for replica in self.replicas:
            replica.process = replica.supervised(backend_dir, live, self.admin_key)
            handle, running = inspect_pid_file(replica.pid_file, self.owners)
            found.append((handle, running))
            decisions.append(decide_triton(running if handle is not None else None, replica.process.argv))
        adopted = [
            handle is not None and decision.action is Action.ADOPT
            for (handle, _argv), decision in zip(found, decisions, strict=True)
        ]
        if not any(adopted):
            self.admin_key = new_admin_key()
            remember_key(self.admin_key)
        for replica, (handle, running), decision, adopt in zip(
            self.replicas, found, decisions, adopted, strict=True
        ):
            if adopt:
                assert handle is not None and replica.process is not None
                log.info(
                    "pool %s: adopting tritonserver pid %s: %s", replica.label, handle.pid, decision.reason
                )
                replica.process.adopt(handle)
                continue
            if handle is not None and decision.action is Action.REPLACE:
                log.warning(
                    "pool %s: tritonserver pid %s %s; replacing it",
                    replica.label,
                    handle.pid,
                    decision.reason,
                )
                if not terminate(handle, timeout=10):
                    handle.close()
                    raise StartupFailed(f"pool {replica.label}: could not stop tritonserver pid {handle.pid}")
            elif running is not None:
                log.info("pool %s: pid file names a process that is not ours; leaving it be", replica.label)
            if handle is not None:
                handle.close()
            replica.pid_file.unlink(missing_ok=True)
            replica.cleanup()
            replica.process = replica.supervised(backend_dir, live, self.admin_key)
            replica.check_ports_free()
            replica.process.start()
        for replica in self.replicas[1:]:
            assert replica.process is not None
            replica.process.on_restart = self._forward_restart

    def _stop_leftovers(self) -> None:
        """Stop our tritonservers whose pid files belong to no replica of this layout (another count)."""
        current = {r.pid_file for r in self.replicas}
        for pid_file in sorted(self.root.glob("tritonserver*.pid")):
            if pid_file not in current:
                stop_pool_server(pid_file, self.repository.live, self.owners, f"pool {self.name}")

    def stop(self) -> None:
        """Stop every replica's tritonserver (adopted or child) and remove their leftovers."""
        for replica in self.replicas:
            if replica.process is not None:
                replica.process.stop()


def stop_pool_server(pid_file: Path, repository: Path, owners: Collection[int], what: str) -> None:
    """Stop the tritonserver ``pid_file`` names if it is ours and serves ``repository``; clean up after it."""
    handle, argv = inspect_pid_file(pid_file, owners)
    if handle is None:
        if argv is None:
            pid_file.unlink(missing_ok=True)  # no live process: a stale file
        return
    try:
        found = parse_tritonserver_argv(argv or [])
        if found is not None and found.model_repository == str(repository.absolute()):
            log.warning("%s: stopping tritonserver pid %s (%s)", what, handle.pid, pid_file.name)
            terminate(handle, timeout=10)
            if found.shm_prefix:
                clean_triton_leftovers(found.shm_prefix)
            pid_file.unlink(missing_ok=True)
    finally:
        handle.close()


class LocalStack:
    """The embedded Triton pool(s) and HAProxy in front of them.

    ``initial_weights`` are the server weights rendered into the HAProxy
    config: where a freshly started proxy begins. None uses what
    ``runtime.json`` remembers (1 for a pool never seen); a mapping given is
    remembered there. They are runtime state, so they do not decide adoption:
    a running proxy whose config differs from the new rendering only in
    weights is adopted with its running weights, and the config file is
    rewritten for its next restart. Either way the caller re-applies the
    desired weights after ``start()``.

    ``triton_address`` is where every tritonserver listens (an address the
    proxy reaches; loopback here, a private address for a container runtime).
    ``triton_user`` is the account tritonserver runs as when the control
    plane is root ("" or None: do not switch); ``start()`` fails with
    StartupFailed, naming the command that creates it, when it is missing.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str,
        grpc_port: int,
        http_port: int,
        pool_names: tuple[str, ...] = ("blue",),
        ports_base: int = 0,
        initial_weights: Mapping[str, int] | None = None,
        triton_address: str = DEFAULT_ADDRESS,
        triton_user: str | None = DEFAULT_TRITON_USER,
        pool_replicas: int = 1,
        proxy_threads: int | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.pool_replicas = pool_replicas
        self.proxy_threads = proxy_threads
        self.triton_address = triton_address
        self.triton_user_name = triton_user if os.geteuid() == 0 else None
        self.triton_user = lookup_triton_user(self.triton_user_name)
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.backend_dir = state_dir / "backends"
        self.proxy_dir = state_dir / "proxy"
        self.state_file = state_dir / FILE_NAME
        tag = state_tag(state_dir)
        try:
            previous = load_state(self.state_file)
            self.state = plan_runtime(
                previous,
                pool_names=pool_names,
                tag=tag,
                proxy=ProxyState(host=host, grpc_port=grpc_port, http_port=http_port),
                ports_base=ports_base,
                initial_weights=initial_weights,
                recovered=self._recover_lost_entries(previous, pool_names) if not ports_base else None,
                # Never the proxy's own ports: it binds them only after the Tritons have started.
                free_ports=lambda n, exclude: free_ports(n, exclude=exclude | {grpc_port, http_port}),
                replicas=pool_replicas,
            )
        except (RuntimeStateError, ValueError) as exc:
            raise StartupFailed(f"cannot use {self.state_file}: {exc}; fix or remove it") from exc
        self.pools = {name: self._pool(name, self.state.pools[name]) for name in pool_names}
        socket_path = self.proxy_dir / "admin.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            socket_path = Path(tempfile.gettempdir()) / f"controlplane-{tag}" / "admin.sock"
        self.admin_socket = socket_path
        self.proxy: SupervisedProcess | None = None
        self.runtime = HAProxyRuntime(self.admin_socket)
        self._lock_fd: int | None = None

    def _pool(self, name: str, entry: PoolState) -> LocalTritonPool:
        root = self.state_dir / "pools" / name
        count = len(entry.replicas)
        return LocalTritonPool(
            name=name,
            root=root,
            replicas=[
                LocalTritonReplica(
                    pool=name,
                    index=index,
                    count=count,
                    root=root,
                    http_port=ports.http_port,
                    grpc_port=ports.grpc_port,
                    metrics_port=ports.metrics_port,
                    shm_prefix=entry.replica_shm_prefix(index),
                    address=self.triton_address,
                    user=self.triton_user,
                )
                for index, ports in enumerate(entry.replicas, start=1)
            ],
            shm_prefix=entry.shm_prefix,
            initial_weight=entry.initial_weight,
            address=self.triton_address,
            admin_key=entry.admin_key,
            user=self.triton_user,
        )

    @property
    def _triton_owners(self) -> set[int]:
        return {os.getuid()} | ({self.triton_user.uid} if self.triton_user else set())

    def _recover_lost_entries(
        self, previous: RuntimeState | None, pool_names: tuple[str, ...]
    ) -> dict[str, PoolState]:
        """Ports, shm prefix and admin key of our live tritonservers whose pool has no entry (lost file).

        Recovered only when every replica of the requested layout is found
        running on this pool's repository with one admin key.
        """
        recovered: dict[str, PoolState] = {}
        count = self.pool_replicas
        for name in pool_names:
            if previous is not None and name in previous.pools:
                continue
            root = self.state_dir / "pools" / name
            found: list[TritonArgs] = []
            bases: set[tuple[str, str]] = set()
            for index in range(1, count + 1):
                pid_file = root / ("tritonserver.pid" if count == 1 else f"tritonserver-r{index}.pid")
                handle, argv = inspect_pid_file(pid_file, self._triton_owners)
                if handle is not None:
                    handle.close()
                args = parse_tritonserver_argv(argv) if handle is not None and argv else None
                suffix = "" if count == 1 else f"r{index}_"
                if (
                    args is None
                    or args.model_repository != str((root / "repository").absolute())
                    or not (args.http_port and args.grpc_port and args.metrics_port)
                    or not args.shm_prefix
                    or not args.shm_prefix.endswith(suffix)
                ):
                    break
                found.append(args)
                bases.add((args.admin_key or "", args.shm_prefix[: len(args.shm_prefix) - len(suffix)]))
            if len(found) != count or len(bases) != 1:
                continue
            ((key, base),) = bases
            log.info("pool %s: recovered ports and shm prefix from its running tritonserver(s)", name)
            ports = [ReplicaPorts(a.http_port or 0, a.grpc_port or 0, a.metrics_port or 0) for a in found]
            recovered[name] = PoolState(
                http_port=1, grpc_port=1, metrics_port=1, shm_prefix=base, admin_key=key
            ).with_replicas(ports)
        return recovered

    def _lock_state_dir(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / "runtime.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupFailed(
                f"another control plane is running with state directory {self.state_dir}"
            ) from None
        self._lock_fd = fd

    def _unlock_state_dir(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_triton_user(self) -> None:
        if self.triton_user_name and self.triton_user is None:
            name = self.triton_user_name
            raise StartupFailed(
                f"Triton's user {name!r} does not exist: create it with `useradd --system --no-create-home "
                f"--shell /usr/sbin/nologin {name}` (scripts/bootstrap does), or set "
                "CONTROLPLANE_TRITON_USER= to run Triton as root",
                details={"user": name},
            )

    def _triton_reads(self) -> list[Path]:
        """Directories Triton's user must reach: its binary and libraries, backends, repositories, Python."""
        return [
            tritonserver_binary().parent,
            pytriton_layout().libs_dir,
            Path(sys.prefix),
            Path(sys.base_prefix),
            Path(os.path.realpath(sys.executable)).parent,
            self.backend_dir,
            *(pool.repository.live for pool in self.pools.values()),
        ]

    def _remember_key(self, pool: str, key: str) -> None:
        entry = replace(self.state.pools[pool], admin_key=key)
        self.state = replace(self.state, pools={**self.state.pools, pool: entry})
        save_state(self.state_file, self.state)

    def start(self, *, timeout: float = 60.0) -> None:
        """Adopt or start every pool and the proxy; return when the proxy routes to a ready pool."""
        self._check_triton_user()
        self._lock_state_dir()
        build_backend_directory(self.backend_dir)
        save_state(self.state_file, self.state)
        secure_state_dir(self.state_dir, [pool.root for pool in self.pools.values()])
        if self.triton_user is not None:
            for path in self._triton_reads():
                make_traversable(path)
        self._stop_unrequested_pools()
        for pool in self.pools.values():
            # Holding the lock means no other control plane is building into staging right now.
            pool.repository.clear_staging()
            pool.start(self.backend_dir, remember_key=functools.partial(self._remember_key, pool.name))
        for pool in self.pools.values():
            for replica in pool.replicas:
                # Files of a replica of several are not in the permissions table: the same mode here.
                chmod_if_exists(replica.pid_file, 0o600)
                client = TritonClient(replica.http_url, headers=pool.admin_headers)
                try:
                    client.wait_server_ready(timeout)
                except TritonUnavailable as exc:
                    raise StartupFailed(
                        f"Triton pool {replica.label} did not become ready; see {replica.log_path}"
                    ) from exc
                finally:
                    client.close()
        self._start_proxy(timeout)

    def _stop_unrequested_pools(self) -> None:
        """Stop our tritonservers (every replica) of pools this run does not serve (left by a killed run)."""
        for name in self.state.pools:
            if name in self.pools:
                continue
            root = self.state_dir / "pools" / name
            for pid_file in sorted(root.glob("tritonserver*.pid")):
                stop_pool_server(
                    pid_file, root / "repository", self._triton_owners, f"pool {name} (not requested)"
                )

    def proxy_config(self) -> ProxyConfig:
        """The proxy configuration this stack renders (initial weights from ``runtime.json``)."""
        return ProxyConfig(
            grpc_bind=(self.host, self.grpc_port),
            http_bind=(self.host, self.http_port),
            admin_socket=self.admin_socket,
            pools=tuple(
                PoolEndpoint.of_replicas(
                    p.name,
                    tuple(ReplicaEndpoint(r.address, r.grpc_port, r.http_port) for r in p.replicas),
                    p.initial_weight,
                )
                for p in self.pools.values()
            ),
            # A client never presents Triton's admin key, even one it guessed or stole.
            strip_request_headers=(ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER),
            threads=self.proxy_threads,
        )

    def _start_proxy(self, timeout: float) -> None:
        private_dir(self.proxy_dir)
        # The admin socket changes weights: only we may reach it, wherever it lives.
        private_dir(self.admin_socket.parent)
        pid_file = self.proxy_dir / "haproxy.pid"
        config_path = self.proxy_dir / "haproxy.cfg"
        rendered = render_config(self.proxy_config()).encode()
        argv = haproxy_command(config_path)
        self.proxy = SupervisedProcess(
            "haproxy",
            argv,
            log_path=self.proxy_dir / "haproxy.log",
            stop_timeout=5,
            pid_file=pid_file,
        )
        found, running = inspect_pid_file(pid_file)
        try:
            on_disk: bytes | None = config_path.read_bytes()
        except FileNotFoundError:
            on_disk = None
        decision = decide_haproxy(
            running if found is not None else None, argv, running_config=on_disk, wanted_config=rendered
        )
        if found is not None and decision.action is Action.ADOPT:
            log.info("adopting haproxy pid %s: %s", found.pid, decision.reason)
            if decision.refresh_config:
                write_atomically(config_path, rendered)
            self.proxy.adopt(found)
        else:
            if found is not None and decision.action is Action.REPLACE:
                log.warning(
                    "haproxy pid %s: %s; replacing it (open client connections are cut)",
                    found.pid,
                    decision.reason,
                )
                if not terminate(found, stop_signal=signal.SIGTERM, timeout=5):
                    found.close()
                    raise StartupFailed(f"could not stop haproxy pid {found.pid}")
            elif running is not None:
                log.info("haproxy pid file names a process that is not ours; leaving it alone")
            if found is not None:
                found.close()
            pid_file.unlink(missing_ok=True)
            for kind, port in (("gRPC", self.grpc_port), ("HTTP", self.http_port)):
                if not port_is_free(port, self.host):
                    raise StartupFailed(
                        f"proxy {kind} port {self.host}:{port} is in use by another process",
                        details={"port": port},
                    )
            # Written whole: adoption compares this file with a fresh rendering.
            write_atomically(config_path, rendered)
            self.proxy.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if any(
                    s.operational == "running" and s.check_result == "passed"
                    for s in self.runtime.servers_state()
                ):
                    return
            except ControlPlaneError:
                pass
            if not self.proxy.is_running() or time.monotonic() > deadline:
                raise StartupFailed(f"HAProxy did not come up; see {self.proxy_dir / 'haproxy.log'}")
            time.sleep(0.1)

    def readiness(self) -> dict[str, str]:
        """One entry per Triton (``triton:<pool>``, or ``triton:<pool>:r<i>`` for replicas) and the proxy."""
        return stack_readiness(
            (
                (
                    f"triton:{pool.name}" if replica.count == 1 else f"triton:{pool.name}:r{replica.index}",
                    replica.http_url,
                    pool.admin_headers,
                )
                for pool in self.pools.values()
                for replica in pool.replicas
            ),
            self.runtime,
        )

    def stop(self) -> None:
        """Stop the proxy first (no new requests), then the pools; adopted processes too.

        The pools stop side by side: they do not depend on one another, and
        each takes a second or two (its models unload first, see
        ``_unload_models``). Every pool is stopped even when another one
        fails to; the first failure is raised afterwards.
        """
        try:
            if self.proxy is not None:
                self.proxy.stop()
            pools = list(self.pools.values())
            if pools:
                with ThreadPoolExecutor(max_workers=len(pools), thread_name_prefix="stop-pool") as executor:
                    stopping = [executor.submit(self._stop_pool, pool) for pool in pools]
                for done in stopping:
                    done.result()
        finally:
            with contextlib.suppress(OSError):
                self._unlock_state_dir()

    def _stop_pool(self, pool: LocalTritonPool) -> None:
        if any(process.is_running() for process in pool.processes):
            self._unload_models(pool)
        pool.stop()

    @staticmethod
    def _unload_models(pool: LocalTritonPool, timeout: float = 5.0) -> None:
        """Unload every model of ``pool`` and wait until they are gone (best effort).

        On SIGTERM tritonserver unloads its models itself, but looks whether
        they are gone only once a second, so it exits up to a second after
        the last one went; a server with nothing loaded exits at once. The
        proxy is stopped before, so no client request reaches them. While a
        load is under way (a reconcile pass that began before the stop) this
        is left to tritonserver, which waits for that load first. A server
        that does not answer, or still unloads after ``timeout``, is stopped
        all the same.
        """
        clients = [TritonClient(url, timeout=2.0, headers=pool.admin_headers) for url in pool.http_urls]
        try:
            indexes = [client.repository_index() for client in clients]
            if any(m.state == "LOADING" for index in indexes for m in index):
                return
            asked = [sorted({m.name for m in index if m.state == "READY"}) for index in indexes]
            for client, names in zip(clients, asked, strict=True):
                for name in names:
                    client.unload(name)
            deadline = time.monotonic() + timeout
            while any(
                m.name in names and m.state in ("READY", "UNLOADING")
                for client, names in zip(clients, asked, strict=True)
                for m in client.repository_index()
            ):
                if time.monotonic() > deadline:
                    log.info("pool %s: models still unloading after %.0f s; stopping it", pool.name, timeout)
                    return
                time.sleep(0.05)
        except ControlPlaneError as exc:
            log.info("pool %s: models not unloaded before the stop: %s", pool.name, exc.message)
        finally:
            for client in clients:
                client.close()
