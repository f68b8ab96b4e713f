"""Protected promotions in the rollout engine, the deployer and the reconciler (fakes, SQLite).

Version 1 of ``mlp`` serves on blue with green as its warm standby; version 2
is pushed; ``mlp`` then requires approval. ``other`` is a second model
without that policy, version 1 pushed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes import World, serving_world, spec

from controlplane.domain.claims import HolderKind
from controlplane.domain.policy import ModelPolicy
from controlplane.domain.rollouts import RequestedAction, RolloutState, Strategy
from controlplane.errors import Conflict, DeployPending, Forbidden, PoolBusy
from controlplane.registry import claim_store, rollout_store
from controlplane.rollout.engine import RolloutEngine


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = serving_world(tmp_path)
    world.push("other", b"weights of other version 1")
    world.signing.set_policy(
        "mlp", ModelPolicy(require_approval=True, approval_timeout_seconds=3600), actor="admin"
    )
    yield world
    world.close()


def _claims(world: World) -> dict[str, str]:
    """Pool -> the holder of its claim."""
    with world.db.transaction() as session:
        return {c.pool: str(c.holder) for c in claim_store.list_claims(session)}


def _audit(world: World, action: str) -> list[dict[str, object]]:
    return [
        {"actor": e.actor, "outcome": e.outcome, **e.details}
        for e in world.registry.events(limit=1000)
        if e.action == action
    ]


def _later(engine: RolloutEngine, delta: timedelta) -> None:
    """Move the engine's wall clock ``delta`` ahead of now."""
    moved = datetime.now(UTC) + delta
    engine.now = lambda: moved


def test_a_rollout_of_a_protected_model_waits_holding_no_pool_and_changing_nothing(world: World) -> None:
    engine = world.engine()
    weights, releases, calls = world.desired_weights(), world.releases(), len(world.triton("green").calls)

    waiting = engine.start(spec(2), actor="alice")

    assert waiting.state is RolloutState.PENDING_APPROVAL
    assert waiting.active and not waiting.running
    assert waiting.approval_expires_at is not None
    remaining = waiting.approval_expires_at - datetime.now(UTC)
    assert timedelta(minutes=59) < remaining <= timedelta(hours=1)
    assert _claims(world) == {}
    assert not engine.busy(), "no worker runs for a request waiting for approval"
    assert (world.desired_weights(), world.releases()) == (weights, releases)
    assert len(world.triton("green").calls) == calls
    (requested,) = _audit(world, "rollout.requested")
    assert requested["actor"] == "alice" and requested["outcome"] == "pending_approval"
    assert requested["rollout"] == waiting.id
    assert engine.resume() == [], "a restart has nothing of it to resume"


def test_while_a_request_waits_a_deploy_of_another_model_proceeds(world: World) -> None:
    engine = world.engine()
    waiting = engine.start(spec(2), actor="alice")

    deployment = world.deploy("other", 1, actor="carol")

    assert (deployment.model, deployment.version, deployment.pool) == ("other", 1, "blue")
    assert engine.get(waiting.id).state is RolloutState.PENDING_APPROVAL


def test_approval_by_another_principal_takes_the_claims_and_the_rollout_runs_to_success(world: World) -> None:
    engine = world.engine()
    waiting = engine.start(spec(2), actor="alice")
    held: list[dict[str, str]] = []
    # Ten (fake) seconds into the first step: the approved rollout holds its pools.
    world.clock.at(world.clock() + 10, lambda: held.append(_claims(world)))

    approved = engine.approve(waiting.id, actor="bob")
    done = engine.wait(waiting.id, timeout=10)

    assert approved.state is RolloutState.PENDING
    assert approved.approved_by == "bob" and approved.decided_at is not None
    assert held == [{"blue": f"rollout {waiting.id}", "green": f"rollout {waiting.id}"}]
    assert done.state is RolloutState.SUCCEEDED, done.reason
    assert done.approved_by == "bob"
    assert [e.to_state for e in done.events][:3] == ["pending_approval", "pending", "staging"]
    assert done.events[1].reason == "approved by bob"
    assert world.desired_weights() == {"blue": 0, "green": 100}
    assert _claims(world) == {}
    (audited,) = _audit(world, "rollout.approved")
    assert audited["actor"] == "bob" and audited["requested_by"] == "alice"


def test_the_requester_cannot_approve_and_the_request_still_waits(world: World) -> None:
    engine = world.engine()
    waiting = engine.start(spec(2), actor="alice")

    with pytest.raises(Forbidden) as refused:
        engine.approve(waiting.id, actor="alice")

    assert refused.value.code == "self_approval"
    assert engine.get(waiting.id).state is RolloutState.PENDING_APPROVAL
    assert _claims(world) == {}


def test_approval_while_another_operation_holds_the_pools_is_refused_and_the_request_still_waits(
    world: World,
) -> None:
    engine = world.engine()
    waiting = engine.start(spec(2), actor="alice")
    refusals: list[BaseException] = []

    def approve_meanwhile() -> None:
        try:
            engine.approve(waiting.id, actor="bob")
        except PoolBusy as exc:
            refusals.append(exc)

    world.clock.at(world.clock() + 10, approve_meanwhile)
    # An unprotected model's rollout holds both pools while the approval comes.
    world.deploy("other", 1)
    running = engine.start(spec(1, model="other"), actor="carol")
    engine.wait(running.id, timeout=10)

    (busy,) = refusals
    assert busy.code == "pool_busy"
    assert busy.details["holder"] == {**busy.details["holder"], "kind": "rollout", "id": str(running.id)}
    still = engine.get(waiting.id)
    assert still.state is RolloutState.PENDING_APPROVAL and still.approved_by is None
    assert _audit(world, "rollout.approved") == []
    # Once the pools are free, the same request is approved.
    assert engine.wait(engine.approve(waiting.id, actor="bob").id, timeout=10).state is RolloutState.SUCCEEDED


def test_two_requests_of_one_model_coexist_and_the_second_waits_while_the_first_runs(world: World) -> None:
    engine = world.engine()
    first = engine.start(spec(2), actor="alice")
    second = engine.start(spec(2, strategy=Strategy.BLUEGREEN, steps=(100,)), actor="alice")
    refusals: list[BaseException] = []

    def approve_second() -> None:
        try:
            engine.approve(second.id, actor="bob")
        except PoolBusy as exc:
            refusals.append(exc)

    world.clock.at(world.clock() + 10, approve_second)
    engine.approve(first.id, actor="bob")
    assert engine.wait(first.id, timeout=10).state is RolloutState.SUCCEEDED

    (busy,) = refusals
    assert busy.details["holder"]["id"] == str(first.id)
    assert engine.get(second.id).state is RolloutState.PENDING_APPROVAL


def test_approval_chooses_the_pools_as_they_are_when_it_comes(world: World) -> None:
    engine = world.engine()
    waiting = engine.start(spec(2), actor="alice")
    assert (waiting.source_pool, waiting.target_pool) == ("blue", "green")
    world.deploy("other", 1)
    # Meanwhile an unprotected rollout makes green the live pool.
    moved = engine.wait(engine.start(spec(1, model="other"), actor="carol").id, timeout=10)
    assert moved.state is RolloutState.SUCCEEDED and world.desired_weights() == {"blue": 0, "green": 100}

    approved = engine.approve(waiting.id, actor="bob")
    done = engine.wait(approved.id, timeout=10)

    assert (approved.source_pool, approved.target_pool, approved.from_version) == ("green", "blue", 1)
    assert done.state is RolloutState.SUCCEEDED
    assert world.desired_weights() == {"blue": 100, "green": 0}


def test_a_rejected_request_ends_with_its_reason_and_cannot_be_approved_afterwards(world: World) -> None:
    engine = world.engine()
    waiting = engine.start(spec(2), actor="alice")

    rejected = engine.reject(waiting.id, actor="bob", reason="freeze until Monday")

    assert rejected.state is RolloutState.REJECTED and not rejected.active
    assert rejected.reason == "rejected by bob: freeze until Monday"
    assert rejected.decided_at is not None and rejected.approved_by is None
    with pytest.raises(Conflict) as late:
        engine.approve(waiting.id, actor="carol")
    assert late.value.code == "not_pending_approval"
    (audited,) = _audit(world, "rollout.rejected")
    assert audited["actor"] == "bob" and audited["outcome"] == "rejected"


def test_aborting_a_waiting_request_withdraws_it_and_promoting_it_is_refused(world: World) -> None:
    engine = world.engine()
    waiting = engine.start(spec(2), actor="alice")

    with pytest.raises(Conflict) as promote:
        engine.request(waiting.id, RequestedAction.PROMOTE, actor="alice")
    withdrawn = engine.request(waiting.id, RequestedAction.ABORT, actor="alice")

    assert promote.value.code == "pending_approval"
    assert withdrawn.state is RolloutState.REJECTED
    assert withdrawn.reason == "rejected by alice: aborted before approval"


def test_a_request_past_its_deadline_expires_at_the_next_reconciler_pass(world: World) -> None:
    engine = world.engine()
    waiting = engine.start(spec(2), actor="alice")
    reconciler = world.reconciler(engine)
    assert not [c for c in reconciler.run_once() if "expired" in c]

    _later(engine, timedelta(hours=1, seconds=1))
    changes = reconciler.run_once()

    assert f"rollout {waiting.id} expired waiting for approval" in changes
    expired = engine.get(waiting.id)
    assert expired.state is RolloutState.EXPIRED and not expired.active
    assert "not approved before" in expired.reason
    (audited,) = _audit(world, "rollout.expired")
    assert audited["rollout"] == waiting.id and audited["outcome"] == "expired"


def test_approving_a_request_past_its_deadline_expires_it_and_says_so(world: World) -> None:
    engine = world.engine()
    waiting = engine.start(spec(2), actor="alice")
    _later(engine, timedelta(hours=2))

    with pytest.raises(Conflict) as refused:
        engine.approve(waiting.id, actor="bob")

    assert refused.value.code == "approval_expired"
    assert engine.get(waiting.id).state is RolloutState.EXPIRED
    assert _claims(world) == {}
    assert len(_audit(world, "rollout.expired")) == 1


def test_an_approval_reaching_the_store_after_the_deadline_is_refused_and_takes_nothing(world: World) -> None:
    engine = world.engine()
    waiting = engine.start(spec(2), actor="alice")
    assert waiting.approval_expires_at is not None

    with pytest.raises(Conflict) as refused, world.db.transaction() as session:
        rollout_store.approve_rollout(
            session,
            waiting.id,
            actor="bob",
            source_pool="blue",
            target_pool="green",
            from_version=1,
            lease=engine.claims.lease,
            now=waiting.approval_expires_at,
        )

    assert refused.value.code == "approval_expired"
    assert engine.get(waiting.id).state is RolloutState.PENDING_APPROVAL
    assert _claims(world) == {}


def test_a_deploy_of_a_protected_model_answers_pending_at_once_naming_the_rollout(world: World) -> None:
    with pytest.raises(DeployPending) as pending:
        world.deploy("mlp", 2, actor="alice")

    assert pending.value.details["state"] == "pending_approval"
    rollout = world.engine().get(pending.value.details["rollout"])
    assert rollout.state is RolloutState.PENDING_APPROVAL
    assert rollout.spec.strategy is Strategy.INPLACE
    assert "waits for approval" in pending.value.message
    assert world.triton("blue").ready_models() == {"mlp": 1}


def test_an_approved_deploy_to_a_named_pool_changes_that_pool(world: World) -> None:
    with pytest.raises(DeployPending) as pending:
        world.deploy("mlp", 2, pool="green", actor="alice")
    engine = world.engine()

    done = engine.wait(engine.approve(pending.value.details["rollout"], actor="bob").id, timeout=10)

    assert done.state is RolloutState.SUCCEEDED
    assert (done.source_pool, done.target_pool) == ("green", "green")
    assert world.releases()["green"] == {"mlp": 2}
    assert world.releases()["blue"] == {"mlp": 1}


def test_a_rollback_of_a_protected_model_never_waits_for_approval(world: World) -> None:
    engine = world.engine()
    first = engine.approve(engine.start(spec(2), actor="alice").id, actor="bob")
    assert engine.wait(first.id, timeout=10).state is RolloutState.SUCCEEDED
    still_waiting = engine.start(spec(2, strategy=Strategy.BLUEGREEN, steps=(100,)), actor="alice")

    back = engine.rollback_model("mlp", actor="alice")
    done = engine.wait(back.id, timeout=10)

    assert back.state is not RolloutState.PENDING_APPROVAL and back.approval_expires_at is None
    assert done.state is RolloutState.SUCCEEDED and done.spec.version == 1
    assert engine.get(still_waiting.id).state is RolloutState.PENDING_APPROVAL
    with world.db.transaction() as session:
        assert not [c for c in claim_store.list_claims(session) if c.holder.kind is HolderKind.ROLLOUT]
