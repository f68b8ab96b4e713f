"""Protected promotions as rules: states, who may approve, deadlines, the approver role, policy bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controlplane.domain.analysis import Gates
from controlplane.domain.approvals import approval_deadline, check_approvable, check_rejectable, is_overdue
from controlplane.domain.auth import Permission, Role, allows
from controlplane.domain.policy import ModelPolicy
from controlplane.domain.rollouts import Rollout, RolloutSpec, RolloutState, Strategy, decide
from controlplane.errors import Conflict, Forbidden, InvalidInput

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DEADLINE = NOW + timedelta(days=1)


def _rollout(state: RolloutState, *, actor: str = "alice", expires: datetime | None = DEADLINE) -> Rollout:
    return Rollout(
        id=7,
        spec=RolloutSpec("mlp", 2, Strategy.CANARY, (10, 50, 100), 1.0, 1.0, Gates()),
        state=state,
        step_index=None,
        source_pool="blue",
        target_pool="green",
        from_version=1,
        requested_action=None,
        reason="",
        actor=actor,
        created_at=NOW,
        updated_at=NOW,
        finished_at=None,
        approval_expires_at=expires,
    )


@pytest.mark.parametrize("to", [RolloutState.PENDING, RolloutState.REJECTED, RolloutState.EXPIRED])
def test_a_request_waiting_for_approval_may_be_approved_rejected_or_expire(to: RolloutState) -> None:
    assert decide(_rollout(RolloutState.PENDING_APPROVAL), to).accepted


@pytest.mark.parametrize(
    "to", [RolloutState.STAGING, RolloutState.SHIFTING, RolloutState.ROLLING_BACK, RolloutState.FAILED]
)
def test_a_request_waiting_for_approval_cannot_skip_the_approval(to: RolloutState) -> None:
    decision = decide(_rollout(RolloutState.PENDING_APPROVAL), to, step_index=0)
    assert not decision.accepted
    assert "pending_approval cannot go to" in decision.reason


@pytest.mark.parametrize("state", [RolloutState.PENDING, RolloutState.STAGING, RolloutState.BAKING])
def test_a_rollout_already_under_way_can_neither_be_rejected_nor_expire(state: RolloutState) -> None:
    assert not decide(_rollout(state), RolloutState.REJECTED).accepted
    assert not decide(_rollout(state), RolloutState.EXPIRED).accepted


def test_rejected_and_expired_requests_have_ended_and_a_waiting_one_is_active_but_not_running() -> None:
    for ended in (RolloutState.REJECTED, RolloutState.EXPIRED):
        assert not _rollout(ended).active and not _rollout(ended).running
        assert not decide(_rollout(ended), RolloutState.PENDING).accepted
    waiting = _rollout(RolloutState.PENDING_APPROVAL)
    assert waiting.active and not waiting.running
    assert waiting.target_percent() == 0
    assert _rollout(RolloutState.PENDING).running


def test_the_requester_may_not_approve_their_own_request() -> None:
    with pytest.raises(Forbidden) as refused:
        check_approvable(_rollout(RolloutState.PENDING_APPROVAL, actor="alice"), actor="alice")
    assert refused.value.code == "self_approval"
    assert refused.value.details == {"rollout": 7, "requested_by": "alice"}


def test_another_principal_may_approve_a_waiting_request() -> None:
    check_approvable(_rollout(RolloutState.PENDING_APPROVAL, actor="alice"), actor="bob")


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (RolloutState.EXPIRED, "approval_expired"),
        (RolloutState.REJECTED, "not_pending_approval"),
        (RolloutState.PENDING, "not_pending_approval"),
        (RolloutState.SUCCEEDED, "not_pending_approval"),
    ],
)
def test_only_a_waiting_request_can_be_approved_or_rejected(state: RolloutState, code: str) -> None:
    with pytest.raises(Conflict) as approving:
        check_approvable(_rollout(state), actor="bob")
    with pytest.raises(Conflict) as rejecting:
        check_rejectable(_rollout(state))
    assert approving.value.code == rejecting.value.code == code
    assert approving.value.details["state"] == state.value


def test_a_request_is_overdue_from_its_deadline_on_and_only_while_it_waits() -> None:
    assert approval_deadline(NOW, 3600) == NOW + timedelta(hours=1)
    waiting = _rollout(RolloutState.PENDING_APPROVAL)
    assert not is_overdue(waiting, DEADLINE - timedelta(seconds=1))
    assert is_overdue(waiting, DEADLINE)
    assert not is_overdue(_rollout(RolloutState.PENDING), DEADLINE + timedelta(days=1))
    assert not is_overdue(_rollout(RolloutState.PENDING_APPROVAL, expires=None), DEADLINE)


def test_the_approver_role_reads_and_approves_and_nothing_else() -> None:
    assert {p for p in Permission if allows(Role.APPROVER, p)} == {Permission.READ, Permission.APPROVE}
    assert allows(Role.ADMIN, Permission.APPROVE)
    assert not allows(Role.DEPLOYER, Permission.APPROVE)
    assert not allows(Role.VIEWER, Permission.APPROVE)


def test_a_policy_requires_no_approval_by_default_and_waits_a_day() -> None:
    policy = ModelPolicy()
    assert (policy.require_approval, policy.approval_timeout_seconds) == (False, 86_400)


@pytest.mark.parametrize("seconds", [59, 30 * 86_400 + 1, 0])
def test_an_approval_timeout_outside_one_minute_to_thirty_days_is_refused(seconds: int) -> None:
    with pytest.raises(InvalidInput) as refused:
        ModelPolicy(require_approval=True, approval_timeout_seconds=seconds).validate()
    assert refused.value.code == "invalid_policy"
    assert "approval_timeout_seconds" in refused.value.message


@pytest.mark.parametrize("seconds", [60, 30 * 86_400])
def test_the_approval_timeout_bounds_themselves_are_accepted(seconds: int) -> None:
    assert ModelPolicy(approval_timeout_seconds=seconds).validate().approval_timeout_seconds == seconds
