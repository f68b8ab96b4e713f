"""Aliases in a real SQLite registry: set, move, delete, history, audit events, and the upgrade to them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import World, build_world

from controlplane.errors import NotFound
from controlplane.registry import alias_store, store


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path)
    for n in (1, 2, 3):
        world.push("mlp", f"weights of version {n}".encode())
    world.push("other", b"weights of other")
    yield world
    world.close()


def _audit(world: World, prefix: str = "alias.") -> list[tuple[str, str, str, dict[str, object]]]:
    with world.db.transaction() as session:
        return [
            (e.action, e.target, e.outcome, dict(e.details))
            for e in store.list_events(session, limit=1000)
            if e.action.startswith(prefix)
        ]


def test_setting_an_alias_points_it_at_the_version_and_records_the_move_and_an_audit_event(
    world: World,
) -> None:
    with world.db.transaction() as session:
        alias, move = alias_store.set_alias(
            session, model="mlp", name="challenger", version=2, actor="alice", reason="better recall"
        )
    with world.db.transaction() as session:
        assert alias_store.resolve(session, model="mlp", name="challenger") == 2
    assert (alias.model, alias.name, alias.version, alias.actor) == ("mlp", "challenger", 2, "alice")
    assert move is not None and (move.version, move.previous, move.reason) == (2, None, "better recall")
    assert _audit(world) == [
        (
            "alias.set",
            "mlp@challenger",
            "set",
            {
                "alias": "challenger",
                "version": 2,
                "previous": None,
                "reason": "better recall",
                "rollout": None,
            },
        )
    ]


def test_moving_an_alias_records_where_it_pointed_before(world: World) -> None:
    with world.db.transaction() as session:
        alias_store.set_alias(session, model="mlp", name="challenger", version=2, actor="alice")
    with world.db.transaction() as session:
        _alias, move = alias_store.set_alias(session, model="mlp", name="challenger", version=3, actor="bob")
    assert move is not None and (move.previous, move.version, move.actor) == (2, 3, "bob")
    assert [(a, o, d["previous"], d["version"]) for a, _t, o, d in _audit(world)] == [
        ("alias.set", "set", None, 2),
        ("alias.set", "moved", 2, 3),
    ]


def test_setting_an_alias_to_where_it_points_already_changes_and_records_nothing(world: World) -> None:
    with world.db.transaction() as session:
        alias_store.set_alias(session, model="mlp", name="champion", version=1, actor="alice")
    with world.db.transaction() as session:
        alias, move = alias_store.set_alias(session, model="mlp", name="champion", version=1, actor="bob")
        moves = alias_store.history(session, model="mlp", name="champion")
    assert move is None and alias.actor == "alice"
    assert len(moves) == 1 and len(_audit(world)) == 1


def test_deleting_an_alias_removes_it_and_keeps_its_history(world: World) -> None:
    with world.db.transaction() as session:
        alias_store.set_alias(session, model="mlp", name="shadow", version=1, actor="alice")
    with world.db.transaction() as session:
        move = alias_store.delete_alias(session, model="mlp", name="shadow", actor="bob", reason="done")
    with world.db.transaction() as session:
        with pytest.raises(NotFound) as gone:
            alias_store.get_alias(session, model="mlp", name="shadow")
        moves = alias_store.history(session, model="mlp", name="shadow")
    assert (move.version, move.previous, move.reason) == (None, 1, "done")
    assert gone.value.code == "alias_not_found" and "'shadow'" in gone.value.message
    assert [(m.version, m.previous) for m in moves] == [(1, None), (None, 1)]
    assert _audit(world)[-1][:3] == ("alias.delete", "mlp@shadow", "deleted")


def test_an_alias_to_a_version_or_model_that_does_not_exist_is_refused_and_nothing_is_recorded(
    world: World,
) -> None:
    with world.db.transaction() as session, pytest.raises(NotFound) as no_version:
        alias_store.set_alias(session, model="mlp", name="champion", version=9, actor="alice")
    with world.db.transaction() as session, pytest.raises(NotFound) as no_model:
        alias_store.set_alias(session, model="nope", name="champion", version=1, actor="alice")
    with world.db.transaction() as session, pytest.raises(NotFound) as no_alias:
        alias_store.delete_alias(session, model="mlp", name="champion", actor="alice")
    assert (no_version.value.code, no_model.value.code, no_alias.value.code) == (
        "version_not_found",
        "model_not_found",
        "alias_not_found",
    )
    assert _audit(world) == []


def test_aliases_belong_to_their_model_and_are_listed_by_name(world: World) -> None:
    with world.db.transaction() as session:
        alias_store.set_alias(session, model="mlp", name="zeta", version=3, actor="a")
        alias_store.set_alias(session, model="mlp", name="alpha", version=1, actor="a")
        alias_store.set_alias(session, model="other", name="alpha", version=1, actor="a")
    with world.db.transaction() as session:
        listed = alias_store.list_aliases(session, model="mlp")
        with pytest.raises(NotFound):
            alias_store.get_alias(session, model="other", name="zeta")
    assert [(a.name, a.version) for a in listed] == [("alpha", 1), ("zeta", 3)]


def test_history_returns_the_latest_moves_oldest_first(world: World) -> None:
    for version in (1, 2, 3, 1):
        with world.db.transaction() as session:
            alias_store.set_alias(session, model="mlp", name="champion", version=version, actor="a")
    with world.db.transaction() as session:
        everything = alias_store.history(session, model="mlp", name="champion")
        latest = alias_store.history(session, model="mlp", name="champion", limit=2)
    assert [m.version for m in everything] == [1, 2, 3, 1]
    assert [(m.previous, m.version) for m in latest] == [(2, 3), (3, 1)]
    assert everything[0].at <= everything[-1].at


def test_the_upgrade_to_aliases_points_production_at_what_the_live_pool_serves(world: World) -> None:
    world.deploy("mlp", 2)
    world.db.downgrade("0007")
    world.db.upgrade()
    with world.db.transaction() as session:
        production = alias_store.get_alias(session, model="mlp", name="production")
        (move,) = alias_store.history(session, model="mlp", name="production")
        other = alias_store.list_aliases(session, model="other")
    assert production.version == 2 and production.actor == "migration 0008"
    assert move.version == 2 and move.reason == "serving on pool blue when aliases were introduced"
    assert other == []
