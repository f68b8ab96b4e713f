"""Runtime "local": tritonserver and haproxy as supervised child processes of the control plane.

Everything lives under the state directory::

    backends/                 Triton backend directory (Python backend + onnxruntime stand-in)
    pools/<pool>/repository   the pool's live model repository
    pools/<pool>/triton.log   its server log
    proxy/haproxy.cfg         generated proxy configuration (admin socket beside it)

Each pool's Triton runs with its own shm prefix so that a crashed server's
backend stubs and /dev/shm regions can be found and removed without touching
any other Triton on the machine. A pid file per process lets the next start
remove what a killed control plane left running.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from controlplane.errors import ControlPlaneError, TritonUnavailable
from controlplane.runtime.cleanup import clean_triton_leftovers
from controlplane.runtime.ports import free_ports
from controlplane.runtime.process import SupervisedProcess
from controlplane.staging.repository import PoolRepository
from controlplane.traffic.haproxy import (
    HAProxyRuntime,
    PoolEndpoint,
    ProxyConfig,
    haproxy_command,
    render_config,
)
from controlplane.triton.backend_dir import build_backend_directory
from controlplane.triton.client import TritonClient
from controlplane.triton.server_command import tritonserver_command

log = logging.getLogger(__name__)

# AF_UNIX paths are limited to 108 bytes; deep state directories (pytest's) exceed it.
_MAX_SOCKET_PATH = 100


class StartupFailed(ControlPlaneError):
    code = "startup_failed"


def _stop_stale(pid_file: Path, binary_name: str) -> None:
    """Kill a process a previous (killed) run left behind, if the pid still belongs to it."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        cmdline = ""
    if cmdline.endswith(binary_name):
        log.warning("stopping %s (pid %s) left by a previous run", binary_name, pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)
    pid_file.unlink(missing_ok=True)


@dataclass
class LocalTritonPool:
    """One pool: a tritonserver process with its repository and ports."""

    name: str
    root: Path
    http_port: int
    grpc_port: int
    metrics_port: int
    shm_prefix: str
    process: SupervisedProcess | None = None

    @property
    def repository(self) -> PoolRepository:
        return PoolRepository(self.root)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid_file(self) -> Path:
        return self.root / "tritonserver.pid"

    def cleanup(self) -> None:
        killed, removed = clean_triton_leftovers(self.shm_prefix)
        if killed or removed:
            log.info("pool %s: killed %d backend stubs, removed %d shm regions", self.name, killed, removed)

    def start(self, backend_dir: Path) -> None:
        _stop_stale(self.pid_file, "tritonserver")
        self.cleanup()
        argv, env = tritonserver_command(
            model_repository=self.repository.live,
            backend_directory=backend_dir,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            shm_prefix=self.shm_prefix,
        )
        self.process = SupervisedProcess(
            f"triton-{self.name}",
            argv,
            env=env,
            log_path=self.root / "triton.log",
            cleanup=self.cleanup,
            pid_file=self.pid_file,
        )
        self.process.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class LocalStack:
    """The embedded Triton pool(s) and HAProxy in front of them."""

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str,
        grpc_port: int,
        http_port: int,
        pool_names: tuple[str, ...] = ("blue",),
        ports_base: int = 0,
    ) -> None:
        self.state_dir = state_dir
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.backend_dir = state_dir / "backends"
        self.proxy_dir = state_dir / "proxy"
        tag = hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]
        ports = (
            [ports_base + i for i in range(3 * len(pool_names))]
            if ports_base
            else free_ports(3 * len(pool_names))
        )
        self.pools = {
            name: LocalTritonPool(
                name=name,
                root=state_dir / "pools" / name,
                http_port=ports[3 * i],
                grpc_port=ports[3 * i + 1],
                metrics_port=ports[3 * i + 2],
                shm_prefix=f"cp{tag}_{name}_",
            )
            for i, name in enumerate(pool_names)
        }
        socket_path = self.proxy_dir / "admin.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            socket_path = Path(tempfile.gettempdir()) / f"controlplane-{tag}" / "admin.sock"
        self.admin_socket = socket_path
        self.proxy: SupervisedProcess | None = None
        self.runtime = HAProxyRuntime(self.admin_socket)

    def start(self, *, timeout: float = 60.0) -> None:
        """Start every pool and the proxy; return when the proxy routes to a ready pool."""
        build_backend_directory(self.backend_dir)
        for pool in self.pools.values():
            pool.repository.clear_staging()
            pool.start(self.backend_dir)
        for pool in self.pools.values():
            client = TritonClient(pool.grpc_url)
            try:
                client.wait_server_ready(timeout)
            except TritonUnavailable as exc:
                raise StartupFailed(
                    f"Triton pool {pool.name} did not become ready; see {pool.root / 'triton.log'}"
                ) from exc
            finally:
                client.close()
        self._start_proxy(timeout)

    def _start_proxy(self, timeout: float) -> None:
        self.proxy_dir.mkdir(parents=True, exist_ok=True)
        self.admin_socket.parent.mkdir(parents=True, exist_ok=True)
        pid_file = self.proxy_dir / "haproxy.pid"
        _stop_stale(pid_file, "haproxy")
        config = ProxyConfig(
            grpc_bind=(self.host, self.grpc_port),
            http_bind=(self.host, self.http_port),
            admin_socket=self.admin_socket,
            pools=tuple(
                PoolEndpoint(
                    name=p.name, host="127.0.0.1", grpc_port=p.grpc_port, http_port=p.http_port, weight=1
                )
                for p in self.pools.values()
            ),
        )
        config_path = self.proxy_dir / "haproxy.cfg"
        config_path.write_text(render_config(config))
        self.proxy = SupervisedProcess(
            "haproxy",
            haproxy_command(config_path),
            log_path=self.proxy_dir / "haproxy.log",
            stop_timeout=5,
            pid_file=pid_file,
        )
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
            client = TritonClient(pool.grpc_url, timeout=2.0)
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
        """Stop the proxy first (no new requests), then the pools."""
        if self.proxy is not None:
            self.proxy.stop()
        for pool in self.pools.values():
            pool.stop()
