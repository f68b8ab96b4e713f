"""Rollout persistence on real databases: a rollout holds its pools' claims, transitions as rows."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from controlplane.domain.analysis import Gates
from controlplane.domain.models import (
    ManifestEntry,
    ModelName,
    ModelSignature,
    TensorSpec,
    VersionMetadata,
    manifest_digest,
)
from controlplane.domain.rollouts import RequestedAction, RolloutSpec, RolloutState, Strategy
from controlplane.errors import Conflict
from controlplane.registry import claim_store, rollout_store, store
from controlplane.registry.db import Database

pytestmark = pytest.mark.integration

SPEC = RolloutSpec("mlp", 2, Strategy.CANARY, (10, 100), 1.0, 1.0, Gates(max_error_rate=0.1))


def _seed(db: Database) -> None:
    signature = ModelSignature(
        "onnxruntime", 0, (TensorSpec("I", "FP32", (1,)),), (TensorSpec("O", "FP32", (1,)),)
    )
    for seed in "12":
        manifest = (ManifestEntry("1/model.onnx", 1, seed * 64), ManifestEntry("config.pbtxt", 1, "c" * 64))
        with db.transaction() as session:
            store.register_version(
                session,
                model=ModelName("mlp"),
                digest=manifest_digest(manifest),
                manifest=manifest,
                source_version_dir="1",
                signature=signature,
                metadata=VersionMetadata(),
            )
    with db.transaction() as session:
        rollout_store.ensure_pools(session, ("blue", "green"))
        rollout_store.set_pool_release(session, "blue", {"mlp": 1})


def _create(db: Database) -> int:
    with db.transaction() as session:
        return rollout_store.create_rollout(
            session, spec=SPEC, source_pool="blue", target_pool="green", from_version=1, actor="t"
        ).id


def test_the_first_pool_gets_all_traffic_and_the_release_is_recorded(database: Database) -> None:
    _seed(database)
    with database.transaction() as session:
        assert rollout_store.pool_weights(session) == {"blue": 100, "green": 0}
        assert rollout_store.live_pool(session) == "blue"
        assert rollout_store.pool_release(session, "blue") == {"mlp": 1}
        assert rollout_store.pool_release(session, "green") == {}


def test_concurrent_requests_start_exactly_one_rollout_on_the_same_pools(database: Database) -> None:
    _seed(database)
    barrier = threading.Barrier(6)

    def attempt(_i: int) -> str:
        barrier.wait()
        try:
            return f"created {_create(database)}"
        except Conflict as exc:
            return exc.code

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(attempt, range(6)))
    assert sum(r.startswith("created") for r in results) == 1, results
    assert results.count("pool_busy") == 5


def test_a_transition_is_a_row_and_an_audit_event_and_ending_frees_the_pools(database: Database) -> None:
    _seed(database)
    rollout_id = _create(database)
    with database.transaction() as session:
        decision, _ = rollout_store.transition(session, rollout_id, RolloutState.STAGING, reason="go")
        assert decision.accepted
        refused, unchanged = rollout_store.transition(
            session, rollout_id, RolloutState.SUCCEEDED, reason="skip"
        )
        assert not refused.accepted and unchanged.state is RolloutState.STAGING
        rollout_store.transition(session, rollout_id, RolloutState.FAILED, reason="could not load")
    with database.transaction() as session:
        rollout = rollout_store.get_rollout(session, rollout_id)
        events = store.list_events(session)
    assert [e.to_state for e in rollout.events] == ["pending", "staging", "failed"]
    assert rollout.finished_at is not None and not rollout.active
    with database.transaction() as session:
        assert claim_store.list_claims(session) == [], "the terminal transition released both pools"
    outcomes = [(e.action, e.outcome) for e in events if e.action.startswith("rollout")]
    assert ("rollout.transition", "rejected") in outcomes and ("rollout.transition", "failed") in outcomes
    assert _create(database) != rollout_id


def test_operator_requests_are_kept_until_the_worker_acts_and_refused_once_ended(database: Database) -> None:
    _seed(database)
    rollout_id = _create(database)
    with database.transaction() as session:
        rollout = rollout_store.request_action(session, rollout_id, RequestedAction.PROMOTE, actor="alice")
        assert rollout.requested_action is RequestedAction.PROMOTE
        rollout = rollout_store.request_action(session, rollout_id, RequestedAction.ABORT, actor="alice")
        assert rollout.requested_action is RequestedAction.ABORT
        rollout = rollout_store.request_action(session, rollout_id, RequestedAction.PROMOTE, actor="alice")
        assert rollout.requested_action is RequestedAction.ABORT, "abort wins over a later promote"
        rollout_store.transition(session, rollout_id, RolloutState.ROLLED_BACK, reason="aborted")
    with database.transaction() as session, pytest.raises(Conflict, match="already ended"):
        rollout_store.request_action(session, rollout_id, RequestedAction.ABORT, actor="alice")
