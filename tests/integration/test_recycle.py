"""Recycling an idle pool on the embedded stack: real Tritons restarted, HAProxy in front, clients on it.

One stack for the module: mlp v1 serves on blue (all traffic) and green
holds it as the warm standby. A recycle restarts green's tritonserver; the
clients, all on blue, must not notice, and green must serve v1 again before
the recycle answers. The policy runs inside a reconciler pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from rollout_load import FIXED_INPUT, Load
from triton_helpers import load_examples_module

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.models import VersionMetadata
from controlplane.domain.recycling import RecyclePolicy
from controlplane.errors import Conflict
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import Services, ServingStack, local_services
from controlplane.settings import Settings

pytestmark = pytest.mark.integration

examples = load_examples_module()


@dataclass
class Running:
    stack: ServingStack
    services: Services
    proxy_url: str
    outputs: dict[str, object]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("recycle")
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(state_dir=root / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port)
    with local_services(settings, pool_names=("blue", "green")) as (stack, services):
        folder = examples.build_mlp(root / "v1", seed=1)
        outputs = {"v1": examples.reference_outputs(folder, {"INPUT0": FIXED_INPUT})["OUTPUT0"]}
        services.registry.push(
            model="mlp", archive=pack_directory(folder, root / "v1.tar.gz"), metadata=VersionMetadata()
        )
        services.deployer.deploy("mlp", 1)
        services.reconciler.run_once()
        assert services.pools["green"].triton.is_model_ready("mlp", 1), "green is the warm standby"
        yield Running(stack, services, f"127.0.0.1:{grpc_port}", outputs)


def _pid(running: Running, pool: str) -> int | None:
    process = running.stack.pools[pool].process
    assert process is not None
    return process.pid


def test_recycling_the_idle_pool_under_load_fails_no_request_and_it_serves_its_release_again(
    running: Running,
) -> None:
    before = _pid(running, "green")

    with Load(running.proxy_url, running.outputs, threads=4) as load:  # type: ignore[arg-type]
        outcome = running.services.recycler.recycle("green", actor="test")

    assert _pid(running, "green") != before, "green's tritonserver is a new process"
    assert running.services.pools["green"].triton.is_model_ready("mlp", 1)
    assert outcome.models == ("mlp",)
    assert outcome.memory_before and outcome.memory_after, "the server and its stubs were measured"
    assert load.failures == [], load.failures[:3]
    assert {kind for _at, kind in load.answers} == {"v1"}
    events = [e for e in running.services.registry.events(limit=1000) if e.action == "pool.recycle"]
    assert events[-1].target == "green" and events[-1].details["why"] == "requested"
    print(
        f"recycle green: {outcome.seconds:.2f} s, memory {outcome.memory_before / 2**20:.0f} MiB -> "
        f"{outcome.memory_after / 2**20:.0f} MiB, {len(load.answers)} requests, 0 failed"
    )


def test_the_pool_with_the_traffic_is_refused_and_keeps_its_server(running: Running) -> None:
    before = _pid(running, "blue")

    with pytest.raises(Conflict) as refused:
        running.services.recycler.recycle("blue", actor="test")

    assert refused.value.code == "pool_serving"
    assert _pid(running, "blue") == before


def test_the_reconciler_recycles_an_idle_pool_once_its_load_budget_is_spent(running: Running) -> None:
    reconciler = running.services.reconciler
    green = running.services.pools["green"]
    before = _pid(running, "green")
    reconciler.recycle_policy = RecyclePolicy(after_loads=1)
    try:
        # Loads counted since green last started: an uninstall and reinstall by the repair, say.
        green.loads_since_recycle = 1

        changes = reconciler.run_once()
    finally:
        reconciler.recycle_policy = RecyclePolicy()

    assert any(c.startswith("recycled green (1 loads since") for c in changes), changes
    assert _pid(running, "green") != before
    assert green.loads_since_recycle == 0
    assert green.triton.is_model_ready("mlp", 1)
    assert reconciler.run_once() == [], "nothing more to do"
