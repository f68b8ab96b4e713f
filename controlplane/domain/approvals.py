"""Protected promotions: who may approve a rollout request, and until when. Pure rules.

A model whose policy sets ``require_approval`` gets each rollout (a deploy
too) recorded in ``pending_approval``: it holds no pool, has no worker and
changes nothing. A principal with the approve permission other than the
requester approves it (it then takes its pools and runs like any rollout)
or rejects it; a request nobody decided on by its deadline expires. A
rollback never waits: it restores what served before.

Principals are told apart by their names (a token's name); with the API's
authentication off every caller is ``anonymous``, so nobody can approve.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from controlplane.domain.rollouts import Rollout, RolloutState
from controlplane.errors import Conflict, Forbidden


def approval_deadline(requested_at: datetime, timeout_seconds: int) -> datetime:
    """Until when a request made at ``requested_at`` may be approved."""
    return requested_at + timedelta(seconds=timeout_seconds)


def is_overdue(rollout: Rollout, now: datetime) -> bool:
    """Whether ``rollout`` still waits for approval although its deadline has passed."""
    return (
        rollout.state is RolloutState.PENDING_APPROVAL
        and rollout.approval_expires_at is not None
        and now >= rollout.approval_expires_at
    )


def _undecidable(rollout: Rollout, verb: str) -> Conflict | None:
    if rollout.state is RolloutState.EXPIRED:
        return Conflict(
            f"rollout {rollout.id} expired at {rollout.approval_expires_at:%Y-%m-%d %H:%M:%S} UTC without "
            f"approval; request it again",
            code="approval_expired",
            details={"rollout": rollout.id, "state": rollout.state.value},
        )
    if rollout.state is not RolloutState.PENDING_APPROVAL:
        return Conflict(
            f"rollout {rollout.id} is {rollout.state}, not waiting for approval: there is nothing to {verb}",
            code="not_pending_approval",
            details={"rollout": rollout.id, "state": rollout.state.value},
        )
    return None


def check_approvable(rollout: Rollout, *, actor: str) -> None:
    """Forbidden ``self_approval`` (403) if ``actor`` requested it; Conflict (409) unless it waits."""
    if actor == rollout.actor:
        raise Forbidden(
            f"{actor!r} requested rollout {rollout.id} and may not approve it: another approver must",
            code="self_approval",
            details={"rollout": rollout.id, "requested_by": rollout.actor},
        )
    refused = _undecidable(rollout, "approve")
    if refused is not None:
        raise refused


def check_rejectable(rollout: Rollout) -> None:
    """Conflict (409) unless ``rollout`` waits for approval (its requester may withdraw it)."""
    refused = _undecidable(rollout, "reject")
    if refused is not None:
        raise refused
