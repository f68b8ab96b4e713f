"""The production alias follows live traffic: it moves in the transaction of a rollout's success, only then.

Version 1 of ``mlp`` serves on blue (deployed by rollout 1) with green as its
warm standby; the engine runs against in-memory Triton and router fakes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import World, serving_world, spec

from controlplane.domain.aliases import AliasMove
from controlplane.domain.rollouts import RequestedAction, RolloutState, Strategy
from controlplane.registry import alias_store, store


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = serving_world(tmp_path)
    yield world
    world.close()


def _production(world: World) -> list[AliasMove]:
    with world.db.transaction() as session:
        return alias_store.history(session, model="mlp", name="production")


def test_the_first_deploy_makes_its_version_production(world: World) -> None:
    (move,) = _production(world)
    assert (move.version, move.previous, move.rollout) == (1, None, 1)
    assert move.reason == "rollout 1 succeeded" and move.actor == "tests"


def test_a_canary_that_succeeds_then_a_rollback_reads_v1_v2_v1_with_their_rollouts(world: World) -> None:
    engine = world.engine()
    forward = engine.wait(engine.start(spec(2), actor="alice").id, timeout=10)
    back = engine.wait(engine.rollback_model("mlp", actor="bob").id, timeout=10)

    assert forward.state is RolloutState.SUCCEEDED and back.state is RolloutState.SUCCEEDED
    moves = _production(world)
    assert [(m.version, m.previous, m.rollout, m.actor) for m in moves] == [
        (1, None, 1, "tests"),
        (2, 1, forward.id, "alice"),
        (1, 2, back.id, "bob"),
    ]
    assert moves[1].reason == f"rollout {forward.id} succeeded"
    assert moves[2].reason == f"rollback to version 1: rollout {back.id} succeeded"
    with world.db.transaction() as session:
        audited = [e for e in store.list_events(session, limit=1000) if e.target == "mlp@production"]
    assert [(e.action, e.details["previous"], e.details["version"]) for e in audited] == [
        ("alias.set", None, 1),
        ("alias.set", 1, 2),
        ("alias.set", 2, 1),
    ]


def test_a_rollout_rolled_back_by_its_gate_leaves_production_where_it_was(world: World) -> None:
    world.sampler.error_rate["green"] = 0.5
    engine = world.engine()

    done = engine.wait(engine.start(spec(2), actor="alice").id, timeout=10)

    assert done.state is RolloutState.ROLLED_BACK
    assert [m.version for m in _production(world)] == [1]


def test_a_rollout_whose_version_triton_cannot_load_leaves_production_where_it_was(world: World) -> None:
    world.triton("green").load_failures[("mlp", 2)] = "CUDA out of memory"
    engine = world.engine()

    done = engine.wait(engine.start(spec(2, strategy=Strategy.BLUEGREEN, steps=(100,)), actor="a").id, 10)

    assert done.state is RolloutState.FAILED
    assert [m.version for m in _production(world)] == [1]


def test_an_abort_during_the_bake_leaves_production_where_it_was(world: World) -> None:
    engine = world.engine()
    # Three steps of 30 s, then the bake (60 s): abort half-way through it.
    world.clock.at(
        world.clock() + 120,
        lambda: engine.request(engine.list(active_only=True)[0].id, RequestedAction.ABORT, actor="operator"),
    )

    done = engine.wait(engine.start(spec(2), actor="alice").id, timeout=10)

    assert done.state is RolloutState.ROLLED_BACK
    assert "during bake" in done.reason
    assert [m.version for m in _production(world)] == [1]


def test_a_deploy_to_the_pool_without_traffic_does_not_move_production(world: World) -> None:
    world.deploy("mlp", 2, pool="green")

    assert world.releases()["green"] == {"mlp": 2}
    assert [m.version for m in _production(world)] == [1]


def test_a_deploy_in_place_on_the_live_pool_moves_production(world: World) -> None:
    world.deploy("mlp", 2)

    moves = _production(world)
    assert [(m.version, m.previous) for m in moves] == [(1, None), (2, 1)]
    assert moves[-1].rollout is not None and moves[-1].reason == f"rollout {moves[-1].rollout} succeeded"
