"""Recycling an idle pool: restart its Triton, prove its release ready, never touch a serving pool (fakes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import World, serving_world, spec

from controlplane.errors import Conflict, NotFound
from controlplane.registry import claim_store
from controlplane.services.recycle import PoolRecycler


class FakeProcesses:
    """Restarts a pool's fake Triton as a supervisor would; memory shrinks at each restart."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.restarted: list[str] = []
        self.memory = {"blue": 900, "green": 800}

    def restart(self, pool: str) -> None:
        self.restarted.append(pool)
        self.memory[pool] = 100
        self.world.triton(pool).restart()

    def memory_bytes(self, pool: str) -> int | None:
        return self.memory[pool]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = serving_world(tmp_path)
    yield world
    world.close()


def _recycler(world: World, processes: FakeProcesses) -> PoolRecycler:
    return PoolRecycler(
        db=world.db,
        pools=world.pools,
        claims=world.repair.claims,
        repair=world.repair,
        processes=processes,
        ready_timeout=5.0,
    )


def _claims(world: World) -> list[str]:
    with world.db.transaction() as session:
        return [c.pool for c in claim_store.list_claims(session)]


def test_recycling_the_idle_pool_restarts_it_and_leaves_its_release_loaded_and_smoke_tested(
    world: World,
) -> None:
    processes = FakeProcesses(world)
    green = world.triton("green")

    outcome = _recycler(world, processes).recycle("green", actor="tests")

    assert processes.restarted == ["green"]
    assert green.ready_models() == {"mlp": 1}
    assert ("smoke_test", "mlp", 1) in green.calls[green.calls.index(("restart", "", None)) :]
    assert (outcome.memory_before, outcome.memory_after, outcome.models) == (800, 100, ("mlp",))
    assert world.pools["green"].loads_since_recycle == 0
    assert _claims(world) == [], "the pool is free for the next rollout"
    event = [e for e in world.registry.events(limit=1000) if e.action == "pool.recycle"][-1]
    assert (event.target, event.outcome, event.details["memory_after"]) == ("green", "ready", 100)


def test_the_pool_with_traffic_is_never_recycled(world: World) -> None:
    processes = FakeProcesses(world)

    with pytest.raises(Conflict) as refused:
        _recycler(world, processes).recycle("blue", actor="tests")

    assert refused.value.code == "pool_serving"
    assert refused.value.details == {"pool": "blue", "weight": 100}
    assert processes.restarted == []
    assert _claims(world) == []


def test_a_pool_that_a_rollout_holds_is_not_recycled(world: World) -> None:
    processes = FakeProcesses(world)
    engine = world.engine()
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            _recycler(world, processes).recycle("green", actor="tests")
        except Conflict as exc:
            outcome.append(exc)

    world.clock.at(world.clock() + 10, attempt)
    engine.wait(engine.start(spec(2), actor="tests").id, timeout=10)

    (refused,) = outcome
    assert refused.code == "pool_busy"
    assert processes.restarted == []


def test_an_unknown_pool_is_not_found(world: World) -> None:
    with pytest.raises(NotFound) as refused:
        _recycler(world, FakeProcesses(world)).recycle("purple", actor="tests")
    assert refused.value.code == "pool_not_found"


def test_a_model_the_restart_did_not_bring_back_is_reinstalled_before_the_pool_is_released(
    world: World,
) -> None:
    green = world.triton("green")
    # The restarted server refuses the folder once (as a transient backend failure would).
    green.load_failures[("mlp", 1)] = "backend crashed while loading"
    processes = FakeProcesses(world)

    def restart(pool: str) -> None:
        FakeProcesses.restart(processes, pool)
        green.load_failures.clear()

    processes.restart = restart  # type: ignore[method-assign]

    _recycler(world, processes).recycle("green", actor="tests")

    assert green.ready_models() == {"mlp": 1}
    drift = [e for e in world.registry.events(limit=1000) if e.action == "drift.repair"]
    assert [(e.target, e.outcome) for e in drift] == [("green/mlp", "not_loaded")]


def test_every_install_counts_as_a_load_until_the_next_recycle(world: World) -> None:
    engine = world.engine()
    before = world.pools["green"].loads_since_recycle

    engine.wait(engine.start(spec(2), actor="tests").id, timeout=10)

    assert world.pools["green"].loads_since_recycle == before + 1
