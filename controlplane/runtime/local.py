"""Runtime "local": tritonserver and haproxy as supervised processes of the control plane.

Everything lives under the state directory::

    runtime.json              ports, shm prefixes, initial weights, admin keys (see ``runtime.state``)
    runtime.lock              held (flock) by the one LocalStack running on this directory
    backends/                 Triton backend directory (Python backend + onnxruntime stand-in)
    pools/<pool>/repository   the pool's live model repository
    pools/<pool>/triton.log   its server log
    pools/<pool>/tritonserver.pid
    proxy/haproxy.cfg         generated proxy configuration (admin socket beside it)
    proxy/haproxy.pid

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

* A pool's Triton ports and shm prefix are chosen once and kept in
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
  new requests), then each Triton, whose leftovers are removed.
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
from dataclasses import dataclass, replace
from pathlib import Path

from controlplane.errors import ControlPlaneError, StartupFailed, TritonUnavailable
from controlplane.files import write_atomically
from controlplane.procfs import owner_uid, read_pid_file
from controlplane.runtime.adoption import Action, decide_haproxy, decide_triton, parse_tritonserver_argv
from controlplane.runtime.cleanup import clean_triton_leftovers
from controlplane.runtime.permissions import make_traversable, private_dir, secure_state_dir
from controlplane.runtime.ports import free_ports, port_is_free
from controlplane.runtime.process import AdoptedProcess, SupervisedProcess, terminate
from controlplane.runtime.state import (
    FILE_NAME,
    PoolState,
    ProxyState,
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
class LocalTritonPool:
    """One pool: a tritonserver process with its repository and ports."""

    name: str
    root: Path
    http_port: int
    grpc_port: int
    metrics_port: int
    shm_prefix: str
    initial_weight: int = 1
    process: SupervisedProcess | None = None
    address: str = DEFAULT_ADDRESS
    admin_key: str = ""
    user: TritonUser | None = None

    @property
    def repository(self) -> PoolRepository:
        """The pool's live and staging model folders."""
        return PoolRepository(self.root)

    @property
    def grpc_url(self) -> str:
        """``host:port`` of this pool's own Triton gRPC (not the proxy)."""
        return _host_port(self.address, self.grpc_port)

    @property
    def metrics_url(self) -> str:
        """Base URL of this pool's Triton metrics endpoint."""
        return f"http://{_host_port(self.address, self.metrics_port)}"

    @property
    def admin_headers(self) -> dict[str, str]:
        """Headers that open this pool's restricted Triton APIs (HTTP and gRPC clients alike)."""
        return admin_headers(self.admin_key) if self.admin_key else {}

    @property
    def owners(self) -> set[int]:
        """Uids a tritonserver of this pool may run as: ours, or Triton's own user."""
        return {os.getuid()} | ({self.user.uid} if self.user else set())

    @property
    def pid_file(self) -> Path:
        """Where the current tritonserver's pid is kept, for adoption by the next run."""
        return self.root / "tritonserver.pid"

    def cleanup(self) -> None:
        """Kill this pool's orphaned backend stubs and remove its /dev/shm regions."""
        killed, removed = clean_triton_leftovers(self.shm_prefix)
        if killed or removed:
            log.info("pool %s: killed %d backend stubs, removed %d shm regions", self.name, killed, removed)

    def _supervised(self, backend_dir: Path) -> SupervisedProcess:
        argv, env = tritonserver_command(
            model_repository=self.repository.live,
            backend_directory=backend_dir,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            shm_prefix=self.shm_prefix,
            address=self.address,
            admin_key=self.admin_key,
            load_all_models=True,
        )
        return SupervisedProcess(
            f"triton-{self.name}",
            argv,
            env=env,
            log_path=self.root / "triton.log",
            cleanup=self.cleanup,
            pid_file=self.pid_file,
            user=self.user.uid if self.user else None,
            group=self.user.gid if self.user else None,
        )

    def start(self, backend_dir: Path, *, remember_key: Callable[[str], None] = lambda _key: None) -> None:
        """Adopt the pool's running tritonserver if it is ours and current, else start one.

        A fresh start gets a new admin key, handed to ``remember_key`` (which
        must persist it) before the process starts.
        """
        if not self.admin_key:
            # Nothing runs with a key we never had: only fills the argv compared for adoption.
            self.admin_key = new_admin_key()
        self.process = self._supervised(backend_dir)
        found, running = inspect_pid_file(self.pid_file, self.owners)
        decision = decide_triton(running if found is not None else None, self.process.argv)
        if found is not None and decision.action is Action.ADOPT:
            log.info("pool %s: adopting tritonserver pid %s: %s", self.name, found.pid, decision.reason)
            self.process.adopt(found)
            return
        if found is not None and decision.action is Action.REPLACE:
            log.warning(
                "pool %s: tritonserver pid %s %s; replacing it", self.name, found.pid, decision.reason
            )
            if not terminate(found, timeout=10):
                found.close()
                raise StartupFailed(f"pool {self.name}: could not stop tritonserver pid {found.pid}")
        elif running is not None:
            log.info("pool %s: pid file names a process that is not ours; leaving it alone", self.name)
        if found is not None:
            found.close()
        self.pid_file.unlink(missing_ok=True)
        self.cleanup()
        self.admin_key = new_admin_key()
        remember_key(self.admin_key)
        self.process = self._supervised(backend_dir)
        ports = {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}
        for kind, port in ports.items():
            if not port_is_free(port, self.address):
                raise StartupFailed(
                    f"port {port} ({kind} port of Triton pool {self.name}, kept in {FILE_NAME}) is in use "
                    "by a process that is not this pool's tritonserver: stop that process, or remove the "
                    f"pool's entry from {FILE_NAME} (or set other Triton ports) to choose new ports",
                    details={"pool": self.name, "port": port},
                )
        self.process.start()

    def stop(self) -> None:
        """Stop the pool's tritonserver (adopted or child) and remove its leftovers."""
        if self.process is not None:
            self.process.stop()


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
    ) -> None:
        self.state_dir = state_dir
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
                free_ports=lambda n, exclude: free_ports(n, exclude=exclude),
            )
        except RuntimeStateError as exc:
            raise StartupFailed(f"cannot use {self.state_file}: {exc}; fix or remove it") from exc
        self.pools = {
            name: LocalTritonPool(
                name=name,
                root=state_dir / "pools" / name,
                http_port=entry.http_port,
                grpc_port=entry.grpc_port,
                metrics_port=entry.metrics_port,
                shm_prefix=entry.shm_prefix,
                initial_weight=entry.initial_weight,
                address=triton_address,
                admin_key=entry.admin_key,
                user=self.triton_user,
            )
            for name in pool_names
            for entry in (self.state.pools[name],)
        }
        socket_path = self.proxy_dir / "admin.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            socket_path = Path(tempfile.gettempdir()) / f"controlplane-{tag}" / "admin.sock"
        self.admin_socket = socket_path
        self.proxy: SupervisedProcess | None = None
        self.runtime = HAProxyRuntime(self.admin_socket)
        self._lock_fd: int | None = None

    @property
    def _triton_owners(self) -> set[int]:
        return {os.getuid()} | ({self.triton_user.uid} if self.triton_user else set())

    def _recover_lost_entries(
        self, previous: RuntimeState | None, pool_names: tuple[str, ...]
    ) -> dict[str, PoolState]:
        """Ports, shm prefix and admin key of our live tritonservers whose pool has no entry (lost file)."""
        recovered: dict[str, PoolState] = {}
        for name in pool_names:
            if previous is not None and name in previous.pools:
                continue
            root = self.state_dir / "pools" / name
            handle, argv = inspect_pid_file(root / "tritonserver.pid", self._triton_owners)
            if handle is not None:
                handle.close()
            found = parse_tritonserver_argv(argv) if handle is not None and argv else None
            if (
                found is not None
                and found.model_repository == str((root / "repository").absolute())
                and found.http_port
                and found.grpc_port
                and found.metrics_port
                and found.shm_prefix
            ):
                log.info("pool %s: recovered ports and shm prefix from its running tritonserver", name)
                recovered[name] = PoolState(
                    http_port=found.http_port,
                    grpc_port=found.grpc_port,
                    metrics_port=found.metrics_port,
                    shm_prefix=found.shm_prefix,
                    admin_key=found.admin_key or "",
                )
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
            client = TritonClient(pool.grpc_url, headers=pool.admin_headers)
            try:
                client.wait_server_ready(timeout)
            except TritonUnavailable as exc:
                raise StartupFailed(
                    f"Triton pool {pool.name} did not become ready; see {pool.root / 'triton.log'}"
                ) from exc
            finally:
                client.close()
        self._start_proxy(timeout)

    def _stop_unrequested_pools(self) -> None:
        """Stop our tritonservers of pools this run does not serve (left by a killed run)."""
        for name, entry in self.state.pools.items():
            if name in self.pools:
                continue
            root = self.state_dir / "pools" / name
            handle, argv = inspect_pid_file(root / "tritonserver.pid", self._triton_owners)
            if handle is None:
                continue
            found = parse_tritonserver_argv(argv or [])
            if found is not None and found.model_repository == str((root / "repository").absolute()):
                log.warning("pool %s is not requested: stopping its tritonserver pid %s", name, handle.pid)
                terminate(handle, timeout=10)
                clean_triton_leftovers(entry.shm_prefix)
                (root / "tritonserver.pid").unlink(missing_ok=True)
            handle.close()

    def proxy_config(self) -> ProxyConfig:
        """The proxy configuration this stack renders (initial weights from ``runtime.json``)."""
        return ProxyConfig(
            grpc_bind=(self.host, self.grpc_port),
            http_bind=(self.host, self.http_port),
            admin_socket=self.admin_socket,
            pools=tuple(
                PoolEndpoint(
                    name=p.name,
                    host=p.address,
                    grpc_port=p.grpc_port,
                    http_port=p.http_port,
                    weight=p.initial_weight,
                )
                for p in self.pools.values()
            ),
            # A client never presents Triton's admin key, even one it guessed or stole.
            strip_request_headers=(ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER),
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
        """One entry per pool and the proxy: "ok" or what is wrong."""
        checks: dict[str, str] = {}
        for pool in self.pools.values():
            client = TritonClient(pool.grpc_url, timeout=2.0, headers=pool.admin_headers)
            try:
                checks[f"triton:{pool.name}"] = "ok" if client.is_ready() else "not ready"
            finally:
                client.close()
        try:
            self.runtime.servers_state()
            checks["proxy"] = "ok"
        except ControlPlaneError as exc:
            checks["proxy"] = exc.message
        return checks

    def stop(self) -> None:
        """Stop the proxy first (no new requests), then the pools; adopted processes too."""
        try:
            if self.proxy is not None:
                self.proxy.stop()
            for pool in self.pools.values():
                pool.stop()
        finally:
            with contextlib.suppress(OSError):
                self._unlock_state_dir()
