"""Persistence of pools, pool releases and rollouts. Functions flush; the caller owns the transaction.

``transition`` is the one door for rollout state changes: it locks the row
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite transactions are already
serial), asks :func:`controlplane.domain.rollouts.decide`, and writes the new
state, a rollout event and an audit event together, or nothing.

A rollout holds the claims of its pools (both of them; an inplace rollout its
one) from the transaction that creates it to the transition that ends it:
``create_rollout`` takes them, a terminal ``transition`` releases them. A
rollout of a model that requires approval is created in ``pending_approval``
without claims; ``approve_rollout`` takes them when it is approved, and
``reject_rollout`` / ``expire_rollout`` end it without ever having held any.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, selectinload

from controlplane.domain.analysis import Gates
from controlplane.domain.claims import Holder, HolderKind, Lease
from controlplane.domain.rollouts import (
    Decision,
    RequestedAction,
    Rollout,
    RolloutEvent,
    RolloutSpec,
    RolloutState,
    Strategy,
    decide,
)
from controlplane.errors import Conflict, NotFound
from controlplane.registry import claim_store, store
from controlplane.registry.store import get_model_row, get_version_row
from controlplane.registry.tables import (
    DeploymentRow,
    ModelRow,
    PoolRow,
    RolloutEventRow,
    RolloutRow,
    VersionRow,
    as_utc,
    utcnow,
)


def pool_pair(source: str, target: str) -> str:
    """The pools of a rollout as one string (kept for the record; the claims exclude)."""
    return "+".join(sorted((source, target)))


# -- pools ---------------------------------------------------------------------------------


def ensure_pools(session: Session, names: tuple[str, ...]) -> None:
    """Create missing pool rows: the first pool ever created gets all traffic, others none."""
    existing = {r.name for r in session.execute(select(PoolRow)).scalars()}
    for name in names:
        if name not in existing:
            weight = 100 if not existing and name == names[0] else 0
            session.add(PoolRow(name=name, weight=weight, updated_at=utcnow()))
            existing.add(name)
    session.flush()


def pool_weights(session: Session) -> dict[str, int]:
    """Desired proxy weight per pool."""
    return {r.name: r.weight for r in session.execute(select(PoolRow).order_by(PoolRow.name)).scalars()}


def set_pool_weights(session: Session, weights: Mapping[str, int]) -> None:
    """Record desired weights (the proxy is changed by the caller, after this commits)."""
    rows = {r.name: r for r in session.execute(select(PoolRow).with_for_update()).scalars()}
    for name, weight in weights.items():
        if name not in rows:
            raise NotFound(f"pool {name!r} does not exist", code="pool_not_found")
        rows[name].weight = weight
        rows[name].updated_at = utcnow()
    session.flush()


def live_pool_of(weights: Mapping[str, int]) -> str:
    """The pool with the most weight (ties: by name)."""
    return max(sorted(weights), key=lambda n: weights[n])


def live_pool(session: Session) -> str:
    """The pool that takes (most of) the traffic."""
    weights = pool_weights(session)
    if not weights:
        raise NotFound("no pools are configured", code="pool_not_found")
    return live_pool_of(weights)


# -- releases: what each pool should serve ---------------------------------------------------


def pool_release(session: Session, pool: str) -> dict[str, int]:
    """Model name -> version number that ``pool`` should serve."""
    rows = session.execute(
        select(ModelRow.name, VersionRow.number)
        .join(DeploymentRow, DeploymentRow.model_id == ModelRow.id)
        .join(VersionRow, VersionRow.id == DeploymentRow.version_id)
        .where(DeploymentRow.pool == pool)
    )
    return {name: number for name, number in rows}


def set_pool_release(session: Session, pool: str, release: Mapping[str, int]) -> None:
    """Replace what ``pool`` should serve."""
    session.execute(delete(DeploymentRow).where(DeploymentRow.pool == pool))
    for model, number in release.items():
        store.set_deployment(session, model=model, pool=pool, number=number)
    session.flush()


# -- rollouts --------------------------------------------------------------------------------


def rollout_holder(rollout_id: int) -> Holder:
    """How a rollout is named in the claims of its pools."""
    return Holder(HolderKind.ROLLOUT, str(rollout_id))


def _entity(row: RolloutRow, model: str, version: int, from_version: int | None) -> Rollout:
    gates = Gates(**row.gates)
    spec = RolloutSpec(
        model=model,
        version=version,
        strategy=Strategy(row.strategy),
        steps=tuple(row.steps),
        step_seconds=row.step_seconds,
        bake_seconds=row.bake_seconds,
        gates=gates,
    )
    return Rollout(
        id=row.id,
        spec=spec,
        state=RolloutState(row.state),
        step_index=row.step_index,
        source_pool=row.source_pool,
        target_pool=row.target_pool,
        from_version=from_version,
        requested_action=RequestedAction(row.requested_action) if row.requested_action else None,
        reason=row.reason,
        actor=row.actor,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
        finished_at=as_utc(row.finished_at) if row.finished_at else None,
        approved_by=row.approved_by,
        decided_at=as_utc(row.decided_at) if row.decided_at else None,
        approval_expires_at=as_utc(row.approval_expires_at) if row.approval_expires_at else None,
        events=tuple(
            RolloutEvent(
                at=as_utc(e.at),
                from_state=e.from_state,
                to_state=e.to_state,
                step_index=e.step_index,
                weights=e.weights,
                reason=e.reason,
                measurements=e.measurements,
            )
            for e in row.events
        ),
    )


def _load(session: Session, rollout_id: int, *, lock: bool = False) -> tuple[RolloutRow, Rollout]:
    stmt = select(RolloutRow).where(RolloutRow.id == rollout_id)
    if lock:
        stmt = stmt.with_for_update()
    row = session.execute(stmt.options(selectinload(RolloutRow.events))).scalar_one_or_none()
    if row is None:
        raise NotFound(f"rollout {rollout_id} does not exist", code="rollout_not_found")
    return row, _to_entity(session, row)


def _to_entity(session: Session, row: RolloutRow) -> Rollout:
    model = session.get(ModelRow, row.model_id)
    version = session.get(VersionRow, row.version_id)
    from_version = session.get(VersionRow, row.from_version_id) if row.from_version_id else None
    assert model is not None and version is not None
    return _entity(row, model.name, version.number, from_version.number if from_version else None)


def get_rollout(session: Session, rollout_id: int) -> Rollout:
    return _load(session, rollout_id)[1]


def list_rollouts(session: Session, *, limit: int = 50, active_only: bool = False) -> list[Rollout]:
    """Newest first."""
    stmt = (
        select(RolloutRow)
        .order_by(RolloutRow.id.desc())
        .limit(limit)
        .options(selectinload(RolloutRow.events))
    )
    if active_only:
        stmt = stmt.where(RolloutRow.active.is_(True))
    return [_to_entity(session, r) for r in session.execute(stmt).scalars()]


def create_rollout(
    session: Session,
    *,
    spec: RolloutSpec,
    source_pool: str,
    target_pool: str,
    from_version: int | None,
    actor: str,
    lease: Lease | None = None,
    approval_expires_at: datetime | None = None,
    requested_pool: str | None = None,
) -> Rollout:
    """Insert a pending rollout holding the claims of its pools; PoolBusy names the holder in the way.

    With ``approval_expires_at`` the rollout waits in ``pending_approval``
    until then instead, holding no claim (audited as ``rollout.requested``).
    ``requested_pool`` (a deploy that named its pool) is kept in the first
    event, so an approval much later chooses the pools again the same way.
    """
    pair = pool_pair(source_pool, target_pool)
    model_row = get_model_row(session, spec.model, lock=True)
    version_row = get_version_row(session, model_row, spec.version)
    from_row = get_version_row(session, model_row, from_version) if from_version is not None else None
    now = utcnow()
    waits = approval_expires_at is not None
    state = RolloutState.PENDING_APPROVAL if waits else RolloutState.PENDING
    row = RolloutRow(
        model_id=model_row.id,
        version_id=version_row.id,
        from_version_id=from_row.id if from_row else None,
        strategy=spec.strategy.value,
        state=state.value,
        active=True,
        pool_pair=pair,
        source_pool=source_pool,
        target_pool=target_pool,
        steps=list(spec.steps),
        step_seconds=spec.step_seconds,
        bake_seconds=spec.bake_seconds,
        gates=spec.gates.as_dict(),
        step_index=None,
        requested_action=None,
        reason="",
        actor=actor,
        created_at=now,
        updated_at=now,
        approval_expires_at=approval_expires_at,
        events=[
            RolloutEventRow(
                at=now,
                from_state=None,
                to_state=state.value,
                weights={},
                reason="requested; waits for approval" if waits else "requested",
                measurements={"pool": requested_pool} if requested_pool else {},
            )
        ],
    )
    session.add(row)
    session.flush()
    details = {
        "rollout": row.id,
        "strategy": spec.strategy.value,
        "source": source_pool,
        "target": target_pool,
    }
    if approval_expires_at is not None:
        store.append_event(
            session,
            actor=actor,
            action="rollout.requested",
            target=f"{spec.model}/{spec.version}",
            outcome=state.value,
            details={**details, "approval_expires_at": approval_expires_at.isoformat()},
        )
        return _to_entity(session, row)
    claim_store.take(
        session,
        (source_pool, target_pool),
        holder=rollout_holder(row.id),
        lease=lease or Lease(owner=actor),
        now=now,
    )
    store.append_event(
        session,
        actor=actor,
        action="rollout.create",
        target=f"{spec.model}/{spec.version}",
        outcome="pending",
        details=details,
    )
    return _to_entity(session, row)


def _record_decision(
    session: Session,
    row: RolloutRow,
    current: Rollout,
    to: RolloutState,
    *,
    actor: str,
    reason: str,
    action: str,
    now: datetime,
    details: Mapping[str, Any] | None = None,
) -> Rollout:
    """Move a rollout waiting for approval to ``to``, with its event and audit event ``action``."""
    decision = decide(current, to)
    if not decision.accepted:
        raise Conflict(f"rollout {current.id}: {decision.reason}", code="invalid_transition")
    row.events.append(
        RolloutEventRow(
            at=now,
            from_state=current.state.value,
            to_state=to.value,
            step_index=None,
            weights={},
            reason=reason,
            measurements={},
        )
    )
    row.state = to.value
    row.reason = reason
    row.updated_at = now
    row.decided_at = now
    if to.terminal:
        row.active = False
        row.finished_at = now
        row.requested_action = None
    session.flush()
    store.append_event(
        session,
        actor=actor,
        action=action,
        target=f"{current.spec.model}/{current.spec.version}",
        outcome=to.value,
        details={"rollout": current.id, "requested_by": current.actor, "reason": reason, **(details or {})},
    )
    return _to_entity(session, row)


def _waiting(session: Session, rollout_id: int) -> tuple[RolloutRow, Rollout]:
    """The locked row of a rollout; Conflict unless it waits for approval."""
    row, current = _load(session, rollout_id, lock=True)
    if current.state is not RolloutState.PENDING_APPROVAL:
        raise Conflict(
            f"rollout {rollout_id} is {current.state}, not waiting for approval",
            code="not_pending_approval",
            details={"rollout": rollout_id, "state": current.state.value},
        )
    return row, current


def approve_rollout(
    session: Session,
    rollout_id: int,
    *,
    actor: str,
    source_pool: str,
    target_pool: str,
    from_version: int | None,
    lease: Lease,
    now: datetime | None = None,
) -> Rollout:
    """Take the claims of the rollout's pools (chosen now) and move it to pending; audited as approved.

    PoolBusy names the holder in the way, and then nothing changes: the
    rollout still waits and may be approved again. Conflict
    ``approval_expired`` once its deadline has passed (``expire_rollout`` ends it).
    """
    row, current = _waiting(session, rollout_id)
    now = now or utcnow()
    if current.approval_expires_at is not None and now >= current.approval_expires_at:
        raise Conflict(
            f"rollout {rollout_id} was not approved before its deadline, "
            f"{current.approval_expires_at:%Y-%m-%d %H:%M:%S} UTC",
            code="approval_expired",
            details={"rollout": rollout_id, "state": current.state.value},
        )
    model_row = get_model_row(session, current.spec.model)
    from_row = get_version_row(session, model_row, from_version) if from_version is not None else None
    row.source_pool = source_pool
    row.target_pool = target_pool
    row.pool_pair = pool_pair(source_pool, target_pool)
    row.from_version_id = from_row.id if from_row else None
    row.approved_by = actor
    claim_store.take(session, (source_pool, target_pool), holder=rollout_holder(rollout_id), lease=lease)
    return _record_decision(
        session,
        row,
        current,
        RolloutState.PENDING,
        actor=actor,
        reason=f"approved by {actor}",
        action="rollout.approved",
        now=now,
        details={"source": source_pool, "target": target_pool},
    )


def reject_rollout(session: Session, rollout_id: int, *, actor: str, reason: str) -> Rollout:
    """End a rollout waiting for approval as rejected, saying who and why; audited as rejected."""
    row, current = _waiting(session, rollout_id)
    return _record_decision(
        session,
        row,
        current,
        RolloutState.REJECTED,
        actor=actor,
        reason=f"rejected by {actor}: {reason}",
        action="rollout.rejected",
        now=utcnow(),
    )


def expire_rollout(session: Session, rollout_id: int, *, now: datetime | None = None) -> Rollout | None:
    """End a rollout whose approval deadline has passed as expired; None if it is not (or no longer) due."""
    row, current = _load(session, rollout_id, lock=True)
    now = now or utcnow()
    deadline = current.approval_expires_at
    if current.state is not RolloutState.PENDING_APPROVAL or deadline is None or now < deadline:
        return None
    return _record_decision(
        session,
        row,
        current,
        RolloutState.EXPIRED,
        actor="controlplane",
        reason=f"not approved before {deadline:%Y-%m-%d %H:%M:%S} UTC",
        action="rollout.expired",
        now=now,
    )


def overdue_approvals(session: Session, *, now: datetime | None = None) -> list[int]:
    """Ids of the rollouts still waiting for approval after their deadline, oldest first."""
    rows = session.execute(
        select(RolloutRow.id)
        .where(
            RolloutRow.state == RolloutState.PENDING_APPROVAL.value,
            RolloutRow.approval_expires_at <= (now or utcnow()),
        )
        .order_by(RolloutRow.id)
    )
    return [rollout_id for (rollout_id,) in rows]


def transition(
    session: Session,
    rollout_id: int,
    to: RolloutState,
    *,
    reason: str,
    step_index: int | None = None,
    weights: Mapping[str, int] | None = None,
    measurements: Mapping[str, Any] | None = None,
    actor: str = "controlplane",
) -> tuple[Decision, Rollout]:
    """Apply a proposed transition if the rules allow it; record it either way in the audit log."""
    row, current = _load(session, rollout_id, lock=True)
    decision = decide(current, to, step_index=step_index)
    target = f"{current.spec.model}/{current.spec.version}"
    if not decision.accepted:
        store.append_event(
            session,
            actor=actor,
            action="rollout.transition",
            target=target,
            outcome="rejected",
            details={
                "rollout": rollout_id,
                "from": current.state.value,
                "to": to.value,
                "why": decision.reason,
            },
        )
        return decision, current
    now = utcnow()
    row.events.append(
        RolloutEventRow(
            at=now,
            from_state=current.state.value,
            to_state=to.value,
            step_index=step_index,
            weights=dict(weights or {}),
            reason=reason,
            measurements=dict(measurements or {}),
        )
    )
    row.state = to.value
    if step_index is not None:
        row.step_index = step_index
    row.reason = reason
    row.updated_at = now
    if to.terminal:
        row.active = False
        row.finished_at = now
        row.requested_action = None
        claim_store.release(session, rollout_holder(rollout_id))
    session.flush()
    store.append_event(
        session,
        actor=actor,
        action="rollout.transition",
        target=target,
        outcome=to.value,
        details={"rollout": rollout_id, "from": current.state.value, "step": step_index, "reason": reason},
    )
    return decision, _to_entity(session, row)


def record_measurement(
    session: Session,
    rollout_id: int,
    *,
    reason: str,
    weights: Mapping[str, int],
    measurements: Mapping[str, Any],
) -> None:
    """An event without a state change: what the analysis saw between steps."""
    row, current = _load(session, rollout_id)
    row.events.append(
        RolloutEventRow(
            at=utcnow(),
            from_state=current.state.value,
            to_state=current.state.value,
            step_index=current.step_index,
            weights=dict(weights),
            reason=reason,
            measurements=dict(measurements),
        )
    )
    session.flush()


def requested_action(session: Session, rollout_id: int) -> RequestedAction | None:
    """What an operator asked of the rollout, if anything (NotFound for an unknown id)."""
    row = session.execute(
        select(RolloutRow.requested_action).where(RolloutRow.id == rollout_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"rollout {rollout_id} does not exist", code="rollout_not_found")
    return RequestedAction(row[0]) if row[0] else None


def request_action(session: Session, rollout_id: int, action: RequestedAction, *, actor: str) -> Rollout:
    """Ask a running rollout to abort or promote; Conflict if it has ended."""
    row, current = _load(session, rollout_id, lock=True)
    if current.state.terminal:
        raise Conflict(f"rollout {rollout_id} has already ended ({current.state})", code="rollout_finished")
    if row.requested_action != RequestedAction.ABORT.value:
        row.requested_action = action.value
    row.updated_at = utcnow()
    session.flush()
    store.append_event(
        session,
        actor=actor,
        action=f"rollout.{action.value}",
        target=f"{current.spec.model}/{current.spec.version}",
        outcome="requested",
        details={"rollout": rollout_id},
    )
    return _to_entity(session, row)


def previous_production_version(session: Session, model: str) -> int | None:
    """The version that served before the last successful rollout of ``model``."""
    model_row = get_model_row(session, model)
    row = session.execute(
        select(RolloutRow)
        .where(RolloutRow.model_id == model_row.id, RolloutRow.state == RolloutState.SUCCEEDED.value)
        .order_by(RolloutRow.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if row is None or row.from_version_id is None:
        return None
    version = session.get(VersionRow, row.from_version_id)
    return version.number if version else None
