"""Runtime "external": Triton servers and HAProxy that something else runs (docker compose, a cluster).

The control plane starts no process here. It is told where each pool's
Triton replicas listen (``parse_pools``: ``blue=triton-blue-1,triton-blue-2;green=...``,
every replica on the same ports) and does everything else as the embedded
runtime does: it writes each pool's model repository (a volume the Triton
containers mount read-only at ``/pool``, serving ``/pool/repository``), calls
Triton's restricted admin APIs with the admin key, and steers HAProxy through
its runtime API on an admin socket in a volume the two share.

What it owns besides the repositories, all under paths the settings name:

- the admin key file: made on the first start (random, URL-safe), then only
  read, so a restarted control plane keeps talking to the Tritons that read
  it at their start. The Triton containers' entrypoint waits for it.
- the HAProxy configuration: rendered exactly as the embedded stack renders
  its own (allowlist, admin headers stripped, health checks, warm-standby
  backups) with the replicas' addresses and the registry's weights, and
  written only when it changes. The proxy container's entrypoint waits for
  it. A proxy already running keeps the configuration it started with; a
  change (other pools, ports, replicas) is logged as needing a restart of
  the proxy container, while weights are set through the runtime API anyway.

Nothing here assumes one process per pool: each pool has a list of replicas.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from controlplane.errors import ControlPlaneError, StartupFailed
from controlplane.files import write_atomically
from controlplane.runtime.process import SupervisedProcess
from controlplane.runtime.readiness import stack_readiness
from controlplane.staging.repository import PoolRepository
from controlplane.traffic.haproxy import HAProxyRuntime, PoolEndpoint, ProxyConfig, render_config
from controlplane.traffic.haproxy_config import validate_host, validate_pool_name
from controlplane.triton.server_command import (
    ADMIN_KEY_HEADER,
    GRPC_ADMIN_KEY_HEADER,
    admin_headers,
    new_admin_key,
    validate_admin_key,
)

log = logging.getLogger(__name__)

_POOL = re.compile(r"^\s*([^=\s]+)\s*=\s*([^;]*)$")


def parse_pools(text: str) -> dict[str, tuple[str, ...]]:
    """``blue=h1,h2;green=h3`` -> {"blue": ("h1", "h2"), "green": ("h3",)}; ValueError names what is wrong."""
    pools: dict[str, tuple[str, ...]] = {}
    for part in (p for p in text.split(";") if p.strip()):
        match = _POOL.match(part)
        if match is None:
            raise ValueError(f"{part.strip()!r} is not of the form pool=host[,host...]")
        name = validate_pool_name(match.group(1))
        hosts = tuple(
            validate_host(h.strip(), f"pool {name} host") for h in match.group(2).split(",") if h.strip()
        )
        if not hosts:
            raise ValueError(f"pool {name!r} names no Triton host")
        if name in pools:
            raise ValueError(f"pool {name!r} is named twice")
        if len(set(hosts)) != len(hosts):
            raise ValueError(f"pool {name!r} names a host twice")
        pools[name] = hosts
    if not pools:
        raise ValueError("no pool is configured (CONTROLPLANE_EXTERNAL_POOLS=blue=host[,host];green=host)")
    counts = {name: len(hosts) for name, hosts in pools.items()}
    if len(set(counts.values())) > 1:
        # Proxy weights are per server: pools of different sizes would not split traffic as recorded.
        raise ValueError(f"every pool needs the same number of Triton hosts, got {counts}")
    return pools


def ensure_admin_key(path: Path) -> str:
    """The admin key in ``path``, made there (mode 0644, for the Triton containers) on the first call."""
    try:
        return validate_admin_key(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    except (UnicodeDecodeError, ValueError) as exc:
        raise StartupFailed(f"{path} does not hold a valid Triton admin key: {exc}; remove it") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_admin_key()
    # Read by the Triton containers' user; the volume is mounted into them and the control plane only.
    write_atomically(path, key + "\n", mode=0o644, durable=True)
    log.info("made a new Triton admin key in %s", path)
    return key


@dataclass(frozen=True)
class TritonPorts:
    """The ports every external Triton replica listens on."""

    grpc: int = 8001
    http: int = 8000
    metrics: int = 8002


@dataclass
class ExternalTritonPool:
    """One pool: its replicas' addresses, its model repository and the admin key."""

    name: str
    root: Path
    hosts: tuple[str, ...]
    ports: TritonPorts
    admin_key: str
    initial_weight: int = 1
    process: None = None
    """No process of ours: a restarted Triton reloads its repository by itself (``--load-model=*``)."""

    @property
    def processes(self) -> list[SupervisedProcess]:
        return []

    @property
    def repository(self) -> PoolRepository:
        return PoolRepository(self.root)

    @property
    def grpc_urls(self) -> list[str]:
        return [f"{_bracketed(h)}:{self.ports.grpc}" for h in self.hosts]

    @property
    def http_urls(self) -> list[str]:
        return [f"http://{_bracketed(h)}:{self.ports.http}" for h in self.hosts]

    @property
    def metrics_urls(self) -> list[str]:
        return [f"http://{_bracketed(h)}:{self.ports.metrics}" for h in self.hosts]

    @property
    def grpc_url(self) -> str:
        return self.grpc_urls[0]

    @property
    def metrics_url(self) -> str:
        return self.metrics_urls[0]

    @property
    def admin_headers(self) -> dict[str, str]:
        return admin_headers(self.admin_key)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ExternalStack:
    """Pools and a proxy run by something else; the same surface as ``LocalStack``."""

    def __init__(
        self,
        state_dir: Path,
        *,
        pools: Mapping[str, tuple[str, ...]],
        host: str,
        grpc_port: int,
        http_port: int,
        admin_key_file: Path,
        proxy_config_file: Path,
        admin_socket: Path,
        ports: TritonPorts | None = None,
        initial_weights: Mapping[str, int] | None = None,
        dns_resolver: tuple[str, int] | None = None,
        proxy_threads: int | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.proxy_threads = proxy_threads
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.admin_key_file = admin_key_file
        self.proxy_config_file = proxy_config_file
        self.admin_socket = admin_socket
        self.ports = ports or TritonPorts()
        self.dns_resolver = dns_resolver
        self._pool_hosts = dict(pools)
        self._initial_weights = dict(initial_weights or {})
        self.pools: dict[str, ExternalTritonPool] = {}
        self.runtime = HAProxyRuntime(admin_socket)

    def prepare(self) -> None:
        """Make the admin key and the pools' repositories, and write the proxy configuration if it changed."""
        key = ensure_admin_key(self.admin_key_file)
        self.pools = {
            name: ExternalTritonPool(
                name=name,
                root=self.state_dir / "pools" / name,
                hosts=hosts,
                ports=self.ports,
                admin_key=key,
                initial_weight=self._initial_weights.get(name, 1),
            )
            for name, hosts in self._pool_hosts.items()
        }
        for pool in self.pools.values():
            pool.repository.clear_staging()
            # Triton's user in its own container reads the repository: folders 0755, files 0444.
            os.chmod(pool.root, 0o755)
            os.chmod(pool.repository.live, 0o755)
        self._write_proxy_config()

    def start(self, *, timeout: float = 120.0) -> None:
        """``prepare``, then return when the proxy's runtime API answers (StartupFailed after ``timeout``)."""
        self.prepare()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.runtime.servers_state()
                return
            except ControlPlaneError as exc:
                if time.monotonic() > deadline:
                    raise StartupFailed(
                        f"the proxy's admin socket {self.admin_socket} does not answer after "
                        f"{timeout:.0f} s: {exc.message}"
                    ) from exc
            time.sleep(0.2)

    def proxy_config(self) -> ProxyConfig:
        """The proxy configuration for these pools (initial weights from the registry)."""
        return ProxyConfig(
            grpc_bind=(self.host, self.grpc_port),
            http_bind=(self.host, self.http_port),
            admin_socket=self.admin_socket,
            pools=tuple(
                PoolEndpoint.of_hosts(p.name, p.hosts, self.ports.grpc, self.ports.http, p.initial_weight)
                for p in self.pools.values()
            ),
            dns_resolver=self.dns_resolver,
            strip_request_headers=(ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER),
            threads=self.proxy_threads,
        )

    def _write_proxy_config(self) -> None:
        rendered = render_config(self.proxy_config())
        try:
            current = self.proxy_config_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current == rendered:
            return
        if current is not None:
            log.warning(
                "the proxy configuration %s changed; a running proxy applies it only when restarted",
                self.proxy_config_file,
            )
        self.proxy_config_file.parent.mkdir(parents=True, exist_ok=True)
        # The proxy container runs as the control plane's user: 0600 keeps it theirs alone.
        write_atomically(self.proxy_config_file, rendered, mode=0o600, durable=True)

    def readiness(self) -> dict[str, str]:
        """One entry per replica and the proxy: "ok" or what is wrong."""
        return stack_readiness(
            (
                (f"triton:{pool.name}:{host}", url, pool.admin_headers)
                for pool in self.pools.values()
                for host, url in zip(pool.hosts, pool.http_urls, strict=True)
            ),
            self.runtime,
        )

    def stop(self) -> None:
        """Nothing to stop: the Tritons and the proxy belong to whoever runs them."""
