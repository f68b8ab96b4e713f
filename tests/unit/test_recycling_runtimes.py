"""How the runtimes restart and measure a pool's Tritons: the Docker API side, against a recorded client."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.runtime.recycling import DockerPoolProcesses, RecycleUnavailable


class RecordedContainer:
    def __init__(self, name: str, usage: int, inactive: int) -> None:
        self.name = name
        self.restarts: list[int] = []
        self._stats = {"memory_stats": {"usage": usage, "stats": {"inactive_file": inactive}}}

    def restart(self, timeout: int) -> None:
        self.restarts.append(timeout)

    def stats(self, stream: bool) -> dict[str, Any]:
        assert stream is False
        return self._stats


class RecordedContainers:
    def __init__(self, by_service: dict[str, list[RecordedContainer]]) -> None:
        self.by_service = by_service
        self.filters: list[dict[str, Any]] = []

    def list(self, filters: dict[str, Any]) -> list[RecordedContainer]:
        self.filters.append(filters)
        service = next(label.split("=", 1)[1] for label in filters["label"] if "service=" in label)
        return self.by_service.get(service, [])

    def get(self, _name: str) -> Any:
        raise LookupError("not a container")


class RecordedClient:
    def __init__(self, containers: RecordedContainers) -> None:
        self.containers = containers

    def ping(self) -> bool:
        return True


def test_a_pool_is_restarted_container_by_container_in_the_control_planes_compose_project() -> None:
    blue_1, blue_2 = RecordedContainer("b1", 500, 100), RecordedContainer("b2", 300, 0)
    containers = RecordedContainers({"triton-blue-1": [blue_1], "triton-blue-2": [blue_2]})
    processes = DockerPoolProcesses(
        {"blue": ["triton-blue-1", "triton-blue-2"]},
        client_factory=lambda: RecordedClient(containers),
        project="stack-a",
    )

    processes.restart("blue")

    assert blue_1.restarts == [10] and blue_2.restarts == [10]
    assert containers.filters[0] == {
        "label": ["com.docker.compose.service=triton-blue-1", "com.docker.compose.project=stack-a"]
    }
    # Usage without the page cache, summed over the replicas.
    assert processes.memory_bytes("blue") == 400 + 300


def test_without_the_engine_a_recycle_is_refused_saying_how_to_allow_it() -> None:
    def unreachable() -> Any:
        raise ConnectionError("no socket at /var/run/docker.sock")

    processes = DockerPoolProcesses({"blue": ["triton-blue"]}, client_factory=unreachable)

    with pytest.raises(RecycleUnavailable) as refused:
        processes.restart("blue")
    assert refused.value.code == "recycle_unavailable"
    assert "docker-compose.docker-api.yml" in refused.value.message
    assert processes.memory_bytes("blue") is None


def test_a_replica_without_a_running_container_is_named() -> None:
    processes = DockerPoolProcesses(
        {"green": ["triton-green"]}, client_factory=lambda: RecordedClient(RecordedContainers({}))
    )

    with pytest.raises(RecycleUnavailable, match="compose service 'triton-green'"):
        processes.restart("green")
