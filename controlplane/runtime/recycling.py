"""How each runtime restarts a pool's Tritons and measures their memory (``services.recycle.PoolProcesses``).

- ``SupervisedPoolProcesses`` (embedded runtime): the supervised
  tritonserver processes are restarted in place; memory is the resident
  memory of each server's process group (the server and its Python backend
  stubs, which hold the models of the onnxruntime stand-in).
- ``DockerPoolProcesses`` (compose): the pool's containers, found by their
  compose service (a replica's host name is its service name) in the
  control plane's own compose project, are restarted
  through the Docker API; memory is each container's usage without its page
  cache, as ``docker stats`` shows it. The control plane needs the engine's
  socket for that (an opt-in of the compose stack, since whoever holds it is
  root on the host); without it a recycle is refused and says so.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from controlplane.errors import Conflict, ControlPlaneError
from controlplane.procfs import group_rss_bytes
from controlplane.runtime.process import SupervisedProcess

log = logging.getLogger(__name__)


class RecycleUnavailable(Conflict):
    """This runtime cannot restart the pool's Tritons (no access to whatever runs them)."""

    code = "recycle_unavailable"


class SupervisedPoolProcesses:
    """Restart and measure the tritonserver processes the embedded runtime supervises."""

    def __init__(self, processes: Callable[[str], Sequence[SupervisedProcess]]) -> None:
        self._processes = processes

    def restart(self, pool: str) -> None:
        # The pool has no traffic: its replicas restart together rather than one after another.
        _all_at_once([p.restart for p in self._processes(pool)])

    def memory_bytes(self, pool: str) -> int | None:
        pids = [p.pid for p in self._processes(pool) if p.pid is not None]
        # Each tritonserver leads its own session and process group; its backend stubs stay in it.
        return sum(group_rss_bytes(pid) for pid in pids) if pids else None


class DockerPoolProcesses:
    """Restart and measure a pool's Triton containers through the Docker API."""

    def __init__(
        self,
        hosts: Mapping[str, Sequence[str]],
        *,
        client_factory: Callable[[], Any] | None = None,
        project: str | None = None,
        stop_timeout: int = 10,
    ) -> None:
        self.hosts = {pool: tuple(h) for pool, h in hosts.items()}
        self.project = project
        self.stop_timeout = stop_timeout
        self._client_factory = client_factory or _docker_from_env
        self._client: Any = None

    def _docker(self) -> Any:
        if self._client is None:
            try:
                self._client = self._client_factory()
                self._client.ping()
                if self.project is None:
                    self.project = _own_compose_project(self._client)
            except Exception as exc:  # noqa: BLE001 - any failure means the engine is out of reach
                self._client = None
                raise RecycleUnavailable(
                    "the control plane cannot reach the Docker engine, so it cannot restart Triton "
                    f"containers ({type(exc).__name__}: {exc}); mount the engine's socket "
                    "(compose/docker-compose.docker-api.yml) to allow recycling",
                ) from None
        return self._client

    def containers(self, pool: str) -> list[Any]:
        """The running containers of ``pool``'s replicas, by compose service."""
        client = self._docker()
        found: list[Any] = []
        for host in self.hosts.get(pool, ()):
            labels = [f"com.docker.compose.service={host}"]
            if self.project:
                labels.append(f"com.docker.compose.project={self.project}")
            matches = client.containers.list(filters={"label": labels})
            if not matches:
                raise RecycleUnavailable(
                    f"no running container of compose service {host!r} (pool {pool}) is visible to the "
                    "control plane",
                    details={"pool": pool, "service": host},
                )
            found.extend(matches)
        return found

    def restart(self, pool: str) -> None:
        def restart_one(container: Any) -> Callable[[], None]:
            def run() -> None:
                log.info("restarting container %s of pool %s", container.name, pool)
                try:
                    container.restart(timeout=self.stop_timeout)
                except Exception as exc:  # noqa: BLE001 - the Docker SDK raises its own error types
                    raise ControlPlaneError(
                        f"restarting container {container.name} of pool {pool} failed: {exc}",
                        code="recycle_failed",
                        retryable=True,
                    ) from None

            return run

        _all_at_once([restart_one(c) for c in self.containers(pool)])

    def memory_bytes(self, pool: str) -> int | None:
        try:
            containers = self.containers(pool)
        except RecycleUnavailable:
            return None
        total = 0
        for container in containers:
            stats = container.stats(stream=False)
            memory = stats.get("memory_stats") or {}
            usage = memory.get("usage")
            if usage is None:
                return None
            # What `docker stats` shows: usage without the reclaimable page cache.
            detail = memory.get("stats") or {}
            total += int(usage) - int(detail.get("inactive_file", detail.get("total_inactive_file", 0)))
        return total


def _all_at_once(actions: Sequence[Callable[[], None]]) -> None:
    """Run ``actions`` in parallel; the first error raised is raised here once all have ended."""
    if len(actions) <= 1:
        for action in actions:
            action()
        return
    with ThreadPoolExecutor(max_workers=len(actions)) as executor:
        futures = [executor.submit(action) for action in actions]
    for future in futures:
        future.result()


def _own_compose_project(client: Any) -> str | None:
    """The compose project of the container this runs in (its host name is its id), if any."""
    try:
        return client.containers.get(socket.gethostname()).labels.get("com.docker.compose.project")
    except Exception:  # noqa: BLE001 - not in a container, or not one the engine knows by that name
        return None


def _docker_from_env() -> Any:
    import docker  # type: ignore[import-untyped]

    return docker.from_env(timeout=30)
