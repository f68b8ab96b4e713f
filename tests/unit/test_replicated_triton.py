"""A pool of several Triton replicas (``ReplicatedTriton``) under the services, over FakeTritons.

Each pool of the world is N FakeTritons on the pool's one repository, as the
embedded runtime runs N tritonservers on one folder. Version 1 of ``mlp``
serves on blue with green as its warm standby; version 2 is pushed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from fakes import FakeTriton, World, build_world, spec

from controlplane.domain.rollouts import RolloutState
from controlplane.errors import DeployFailed, ModelLoadFailed, SmokeTestFailed, TritonUnavailable
from controlplane.services.health import Health
from controlplane.triton.client import ModelStatus
from controlplane.triton.replicas import ReplicatedTriton, merge_indexes


def _replicated_world(root: Path, replicas: int) -> World:
    world = build_world(root)
    for pool in world.pools.values():
        fakes = [FakeTriton(pool.repository) for _ in range(replicas)]
        pool.triton = ReplicatedTriton(fakes, staged_root=pool.repository.live)
    world.push("mlp", b"weights of version 1")
    world.push("mlp", b"weights of version 2")
    world.deploy("mlp", 1)
    world.reconciler(world.engine()).run_once()
    return world


def _replicas(world: World, pool: str) -> list[FakeTriton]:
    triton = world.pools[pool].triton
    assert isinstance(triton, ReplicatedTriton)
    return list(triton.replicas)


def _restart(world: World, pool: str, index: int) -> FakeTriton:
    """Replica ``index`` (0-based) of ``pool`` comes back empty, as a restarted tritonserver does."""
    triton = world.pools[pool].triton
    assert isinstance(triton, ReplicatedTriton)
    fresh = FakeTriton(world.pools[pool].repository)
    replicas = list(triton.replicas)
    replicas[index] = fresh
    triton.replicas = tuple(replicas)
    return fresh


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = _replicated_world(tmp_path, replicas=2)
    yield world
    world.close()


def _drift_events(world: World) -> list[tuple[str, str]]:
    return [(e.target, e.outcome) for e in world.registry.events(limit=1000) if e.action == "drift.repair"]


def test_a_deploy_loads_and_smoke_tests_the_version_on_every_replica(world: World) -> None:
    blue = _replicas(world, "blue")
    for fake in blue:
        fake.calls.clear()

    world.deploy("mlp", 2)

    for fake in blue:
        assert fake.ready_models() == {"mlp": 2}
        assert [op for op, _m, v in fake.calls if v == 2] == ["load", "smoke_test"]


def test_a_load_failing_on_the_second_replica_names_it_and_leaves_every_replica_on_the_previous_version(
    world: World,
) -> None:
    first, second = _replicas(world, "blue")
    second.load_failures[("mlp", 2)] = "onnx runtime error: bad graph"

    with pytest.raises(DeployFailed) as refused:
        world.deploy("mlp", 2)

    assert "replica 2" in refused.value.message and "bad graph" in refused.value.message
    # The first replica had loaded version 2; the restore took it back with the folder.
    assert first.ready_models() == {"mlp": 1}
    assert second.ready_models() == {"mlp": 1}
    assert world.pools["blue"].triton.is_model_ready("mlp", 1)
    assert world.releases()["blue"] == {"mlp": 1}


def test_a_smoke_test_failing_on_one_replica_fails_the_deploy_and_restores_both(world: World) -> None:
    first, second = _replicas(world, "blue")
    second.smoke_failures.add(("mlp", 2))

    with pytest.raises(DeployFailed) as refused:
        world.deploy("mlp", 2)

    assert "replica 2" in refused.value.message
    assert first.ready_models() == second.ready_models() == {"mlp": 1}


def test_a_rollout_whose_target_fails_on_one_replica_moves_no_weight_and_leaves_no_replica_on_it(
    world: World,
) -> None:
    first, second = _replicas(world, "green")
    second.load_failures[("mlp", 2)] = "CUDA out of memory"
    engine = world.engine()

    rollout = engine.start(spec(2), actor="tests")
    done = engine.wait(rollout.id, timeout=10)

    assert done.state is RolloutState.FAILED
    assert all(weights["green"] == 0 for _at, weights in world.router.history)
    assert not first.is_model_ready("mlp", 2) and not second.is_model_ready("mlp", 2)


def test_a_canary_rollout_over_two_replicas_per_pool_ends_with_every_replica_on_the_new_version(
    world: World,
) -> None:
    green = world.pools["green"].triton

    def only_to_a_pool_ready_everywhere(weights: Mapping[str, int]) -> None:
        assert weights.get("green", 0) == 0 or green.is_model_ready("mlp", 2)

    world.router.before_set_weights = only_to_a_pool_ready_everywhere
    engine = world.engine()

    done = engine.wait(engine.start(spec(2), actor="tests").id, timeout=10)

    assert done.state is RolloutState.SUCCEEDED
    assert world.router.weights() == {"blue": 0, "green": 100}
    for pool in ("blue", "green"):
        for fake in _replicas(world, pool):
            assert fake.ready_models() == {"mlp": 2}


def test_a_replica_that_restarts_empty_makes_the_pool_not_ready_until_the_reconciler_reloads_it(
    world: World,
) -> None:
    blue = world.pools["blue"].triton
    fresh = _restart(world, "blue", 1)

    assert not blue.is_model_ready("mlp", 1)
    status = {s.version: s for s in blue.model_status("mlp")}
    assert status["1"].state != "READY"
    assert "replica 2" in status["1"].reason
    health = Health(db=world.db, pools=world.pools).model_health("mlp")
    assert not health.ready and "replica 2" in health.pools["blue"]

    changes = world.reconciler(world.engine()).run_once()

    assert any("blue" in change for change in changes), changes
    assert fresh.ready_models() == {"mlp": 1}
    assert blue.is_model_ready("mlp", 1)
    assert Health(db=world.db, pools=world.pools).model_health("mlp").ready


@pytest.mark.parametrize("replica", [0, 1], ids=["first", "second"])
def test_a_configuration_override_on_any_replica_is_drift_and_is_repaired(world: World, replica: int) -> None:
    fakes = _replicas(world, "blue")
    fakes[replica].overrides["mlp"] = {"max_batch_size": 1}
    reconciler = world.reconciler(world.engine())

    reconciler.run_once()

    assert _drift_events(world) == [("blue/mlp", "config")]
    for fake in fakes:
        assert fake.model_config("mlp")["max_batch_size"] == 8
    assert reconciler.run_once() == []


@pytest.mark.parametrize("replica", [0, 1], ids=["first", "second"])
def test_a_model_loaded_behind_the_registrys_back_on_one_replica_only_is_unloaded(
    world: World, replica: int
) -> None:
    fakes = _replicas(world, "blue")
    fakes[replica].force_loaded("rogue", 3)
    reconciler = world.reconciler(world.engine())

    changes = reconciler.run_once()

    assert "unloaded rogue from blue" in changes, changes
    assert ("blue/rogue", "unexpected_model") in _drift_events(world)
    assert all("rogue" not in fake.ready_models() for fake in fakes)
    assert reconciler.run_once() == []


def test_a_replica_that_does_not_answer_raises_a_retryable_error_naming_it(world: World) -> None:
    blue = world.pools["blue"].triton
    _replicas(world, "blue")[1].up = False

    with pytest.raises(TritonUnavailable) as silent:
        blue.repository_index()

    assert silent.value.retryable
    assert silent.value.message.startswith("replica 2")
    assert not blue.is_ready()
    assert not blue.is_model_ready("mlp", 1)


def test_waiting_for_the_server_waits_for_every_replica_and_names_the_one_missing(world: World) -> None:
    blue = world.pools["blue"].triton
    assert isinstance(blue, ReplicatedTriton)
    blue.wait_server_ready(1.0)
    _replicas(world, "blue")[1].up = False
    naps: list[float] = []

    with pytest.raises(TritonUnavailable, match="replica 2"):
        blue.wait_server_ready(0.0, sleep=naps.append)


def test_an_unload_reaches_every_replica_even_when_the_first_refuses(world: World) -> None:
    first, second = _replicas(world, "green")

    def refuse(_model: str, _version: int | None) -> None:
        raise ModelLoadFailed("unload of 'mlp': no such model")

    first.before["unload"] = refuse

    with pytest.raises(ModelLoadFailed, match="replica 1"):
        world.pools["green"].triton.unload("mlp")

    assert second.ready_models() == {}


def test_the_merged_index_is_ready_only_where_every_replica_is_and_else_names_the_first_that_is_not() -> None:
    first = [
        ModelStatus("mlp", "1", "READY", ""),
        ModelStatus("mlp", "2", "READY", ""),
        ModelStatus("other", "", "", ""),
    ]
    second = [
        ModelStatus("mlp", "1", "READY", ""),
        ModelStatus("mlp", "2", "UNAVAILABLE", "bad graph"),
        ModelStatus("extra", "3", "READY", ""),
    ]
    third = [ModelStatus("mlp", "1", "LOADING", "")]

    merged = merge_indexes([first, second, third], ["r1", "r2", "r3"])

    assert merged == [
        ModelStatus("mlp", "1", "LOADING", ""),
        ModelStatus("mlp", "2", "UNAVAILABLE", "r2: bad graph"),
        ModelStatus("other", "", "", ""),
        ModelStatus("extra", "3", "UNAVAILABLE", "r1: not loaded"),
    ]
    assert merge_indexes([first[:1], first[:1]], ["r1", "r2"]) == [ModelStatus("mlp", "1", "READY", "")]


def test_with_one_replica_every_answer_and_error_is_the_replicas_own(tmp_path: Path) -> None:
    world = _replicated_world(tmp_path, replicas=1)
    try:
        (fake,) = _replicas(world, "blue")
        blue = world.pools["blue"].triton
        assert blue.repository_index() == fake.repository_index()
        assert blue.model_config("mlp") == fake.model_config("mlp")
        fake.load_failures[("mlp", 2)] = "bad graph"
        with pytest.raises(ModelLoadFailed) as direct:
            fake.load("mlp", 2, timeout=1.0)
        with pytest.raises(ModelLoadFailed) as wrapped:
            blue.load("mlp", 2, timeout=1.0)
        assert wrapped.value.message == direct.value.message
        fake.smoke_failures.add(("mlp", 1))
        with pytest.raises(SmokeTestFailed) as smoke:
            blue.smoke_test("mlp", 1, world.registry.get_version("mlp", 1).signature)
        assert not smoke.value.message.startswith("replica")
    finally:
        world.close()


def test_a_pool_needs_at_least_one_replica() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ReplicatedTriton([])
