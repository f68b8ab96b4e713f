"""Persistence of pool claims (see :mod:`controlplane.domain.claims`). Functions flush; the caller commits.

Taking a claim is an INSERT of the pool's row inside the caller's
transaction, the same one that records the operation, so an operation and
its claim exist together or not at all. The primary key on ``pool`` is the
exclusion: on PostgreSQL a second transaction inserting the same pool
waits for the first to end and then fails with a unique violation, between
threads or processes alike; on SQLite every transaction is ``BEGIN
IMMEDIATE`` and so runs alone. Pools are always taken in name order, so two
operations that want the same two pools cannot deadlock.

A claim ends with the DELETE that ends its operation: ``release`` for
deploys and repairs, ``rollout_store.transition`` to a terminal state for
rollouts.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controlplane.domain.claims import Claim, Holder, HolderKind, Lease, may_adopt, may_take_over
from controlplane.errors import PoolBusy
from controlplane.registry import store
from controlplane.registry.tables import PoolClaimRow, as_utc, utcnow


def _entity(row: PoolClaimRow) -> Claim:
    return Claim(
        pool=row.pool,
        holder=Holder(HolderKind(row.holder_kind), row.holder_id),
        owner=row.owner,
        taken_at=as_utc(row.taken_at),
        lease_until=as_utc(row.lease_until),
    )


def _busy(pool: str, claim: Claim) -> PoolBusy:
    return PoolBusy(
        f"pool {pool!r} is busy: {claim.holder} holds it since {claim.taken_at:%Y-%m-%d %H:%M:%S} UTC; "
        "try again when it has ended",
        details={"pool": pool, "holder": claim.as_dict()},
    )


def list_claims(session: Session) -> list[Claim]:
    """Every claim held, by pool name."""
    rows = session.execute(select(PoolClaimRow).order_by(PoolClaimRow.pool)).scalars()
    return [_entity(r) for r in rows]


def claim_of(session: Session, pool: str) -> Claim | None:
    """Who holds ``pool``, if anyone."""
    row = session.get(PoolClaimRow, pool, populate_existing=True)
    return _entity(row) if row is not None else None


def claims_of(session: Session, holder: Holder) -> list[Claim]:
    rows = session.execute(
        select(PoolClaimRow)
        .where(PoolClaimRow.holder_kind == holder.kind.value, PoolClaimRow.holder_id == holder.id)
        .order_by(PoolClaimRow.pool)
    ).scalars()
    return [_entity(r) for r in rows]


def take(
    session: Session,
    pools: Iterable[str],
    *,
    holder: Holder,
    lease: Lease,
    now: datetime | None = None,
) -> list[Claim]:
    """Claim every pool in ``pools`` for ``holder``, or none: PoolBusy names the holder in the way.

    A claim of a deploy or repair whose owner is gone is removed first (and
    audited); a rollout's claim is never taken over, only adopted.
    """
    now = now or utcnow()
    taken: list[Claim] = []
    for pool in sorted(set(pools)):
        existing = session.execute(
            select(PoolClaimRow).where(PoolClaimRow.pool == pool).with_for_update()
        ).scalar_one_or_none()
        if existing is not None:
            claim = _entity(existing)
            if claim.holder == holder:
                taken.append(claim)
                continue
            if not may_take_over(claim, now=now, lease=lease):
                raise _busy(pool, claim)
            session.delete(existing)
            session.flush()
            store.append_event(
                session,
                actor=lease.owner,
                action="claim.take_over",
                target=pool,
                outcome="taken",
                details={"pool": pool, "abandoned": claim.as_dict(), "by": f"{holder}"},
            )
        row = PoolClaimRow(
            pool=pool,
            holder_kind=holder.kind.value,
            holder_id=holder.id,
            owner=lease.owner,
            taken_at=now,
            lease_until=now + timedelta(seconds=lease.seconds),
        )
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError as exc:
            # Another transaction inserted this pool's claim after our read and has committed it.
            winner = claim_of(session, pool)
            if winner is None:
                raise
            raise _busy(pool, winner) from exc
        taken.append(_entity(row))
    return taken


def release(session: Session, holder: Holder) -> list[str]:
    """End ``holder``'s claims; return the pools it held (none if it had lost them)."""
    pools = [c.pool for c in claims_of(session, holder)]
    session.execute(
        delete(PoolClaimRow).where(
            PoolClaimRow.holder_kind == holder.kind.value, PoolClaimRow.holder_id == holder.id
        )
    )
    session.flush()
    return pools


def renew(session: Session, holders: Iterable[Holder], *, lease: Lease, now: datetime | None = None) -> int:
    """Extend the leases of ``holders`` that ``lease.owner`` still drives; return how many claims."""
    now = now or utcnow()
    renewed = 0
    for holder in holders:
        rows = session.execute(
            update(PoolClaimRow)
            .where(
                PoolClaimRow.holder_kind == holder.kind.value,
                PoolClaimRow.holder_id == holder.id,
                PoolClaimRow.owner == lease.owner,
            )
            .values(lease_until=now + timedelta(seconds=lease.seconds))
            .returning(PoolClaimRow.pool)
        )
        renewed += len(rows.all())
    session.flush()
    return renewed


def let_go(session: Session, holder: Holder, *, lease: Lease, now: datetime | None = None) -> None:
    """Stop vouching for ``holder`` without ending it: its lease runs out now, so another may adopt it."""
    session.execute(
        update(PoolClaimRow)
        .where(
            PoolClaimRow.holder_kind == holder.kind.value,
            PoolClaimRow.holder_id == holder.id,
            PoolClaimRow.owner == lease.owner,
        )
        .values(lease_until=now or utcnow())
    )
    session.flush()


def adopt(session: Session, holder: Holder, *, lease: Lease, now: datetime | None = None) -> bool:
    """Make ``lease.owner`` the driver of ``holder``'s claims if nobody else drives them.

    False when ``holder`` holds no claim or a live owner still renews it.
    """
    now = now or utcnow()
    rows = list(
        session.execute(
            select(PoolClaimRow)
            .where(PoolClaimRow.holder_kind == holder.kind.value, PoolClaimRow.holder_id == holder.id)
            .order_by(PoolClaimRow.pool)
            .with_for_update()
        ).scalars()
    )
    if not rows or not all(may_adopt(_entity(r), now=now, lease=lease) for r in rows):
        return False
    previous = sorted({r.owner for r in rows})
    for row in rows:
        row.owner = lease.owner
        row.lease_until = now + timedelta(seconds=lease.seconds)
    session.flush()
    if previous != [lease.owner]:
        store.append_event(
            session,
            actor=lease.owner,
            action="claim.adopt",
            target=str(holder),
            outcome="adopted",
            details={"pools": [r.pool for r in rows], "from": previous},
        )
    return True
