"""``ProxyWeights``: the one path that applies proxy weights, from the database, with an audit event."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import World, serving_world

from controlplane.domain.models import VersionState
from controlplane.domain.versions import VersionEvent
from controlplane.errors import Conflict
from controlplane.registry import rollout_store, store
from controlplane.rollout.weights import ProxyWeights, safe_weights


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = serving_world(tmp_path)
    yield world
    world.close()


def _weights(world: World) -> ProxyWeights:
    return ProxyWeights(db=world.db, router=world.router, pools=world.pools)


def _weight_events(world: World) -> list[dict[str, object]]:
    return [dict(e.details) for e in world.registry.events(limit=1000) if e.action == "weights.apply"]


def _record(world: World, weights: dict[str, int]) -> None:
    with world.db.transaction() as session:
        rollout_store.set_pool_weights(session, weights)


def test_the_recorded_weights_apply_and_leave_an_audit_event_saying_why(world: World) -> None:
    _record(world, {"blue": 50, "green": 50})

    before = _weights(world).apply_recorded(why="rollout 7 step 2/3", actor="tests")

    assert before == {"blue": 100, "green": 0}
    assert world.router.weights() == {"blue": 50, "green": 50}
    assert _weight_events(world) == [
        {"from": {"blue": 100, "green": 0}, "to": {"blue": 50, "green": 50}, "why": "rollout 7 step 2/3"}
    ]


def test_applying_weights_the_proxy_already_has_changes_nothing_and_leaves_no_event(world: World) -> None:
    calls = len(world.router.history)

    assert _weights(world).apply_recorded(why="start-up", actor="tests") is None

    assert len(world.router.history) == calls
    assert _weight_events(world) == []


def test_the_safety_rule_keeps_traffic_off_a_pool_whose_models_are_not_ready(world: World) -> None:
    _record(world, {"blue": 50, "green": 50})
    world.triton("green").unload("mlp")

    _weights(world).apply_safe(why="reconcile safety", actor="tests")

    assert world.router.weights() == {"blue": 50, "green": 0}
    assert [e["why"] for e in _weight_events(world)] == ["reconcile safety"]


def test_safe_weights_leave_the_only_pool_with_traffic_its_weight_even_when_not_ready() -> None:
    blue_not_ready = {"blue": False, "green": True}

    assert safe_weights({"blue": 100, "green": 0}, blue_not_ready) == {"blue": 100, "green": 0}
    assert safe_weights({"blue": 50, "green": 50}, blue_not_ready) == {"blue": 0, "green": 50}


def test_the_reconciler_audits_the_weights_it_repairs(world: World) -> None:
    reconciler = world.reconciler(world.engine())
    world.router.set_weights({"blue": 0, "green": 100})

    reconciler.run_once()

    assert _weight_events(world) == [
        {"from": {"blue": 0, "green": 100}, "to": {"blue": 100, "green": 0}, "why": "reconcile safety"}
    ]


def test_a_refused_version_change_leaves_the_row_unchanged(world: World) -> None:
    with world.db.transaction() as session:
        with pytest.raises(Conflict) as refused:
            store.change_version_state(session, model="mlp", number=1, event=VersionEvent.FAILED, error="x")
        version = store.get_version(session, "mlp", 1)

    assert refused.value.code == "invalid_version_transition"
    assert version.state is VersionState.SERVING
