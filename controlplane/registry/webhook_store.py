"""Persistence of webhook subscriptions, their delivery claims and the delivery log. Functions flush only.

A worker claims a subscription with a lease on its row (``lease_owner``,
``lease_until``) in a short transaction and sends outside it: a delivery
may take seconds, and no transaction (SQLite's is the whole database's
write lock) stays open across the network. On PostgreSQL the rows are read
``FOR NO KEY UPDATE SKIP LOCKED``, so two control planes claiming at the
same time pass each other instead of queueing, and the outbox inserts of
concurrent audit events (a key-share lock on the subscription) never wait
for a claim. One lease per subscription: its events go out one after the
other, each only once the one before was delivered. A worker killed
mid-delivery leaves its lease to run out; the next claim sends the same
event again, with the same id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controlplane.domain.models import AuditEvent
from controlplane.domain.webhook_targets import parse_webhook_url
from controlplane.domain.webhooks import (
    AttemptResult,
    Delivery,
    DeliveryBatch,
    DeliveryOutcome,
    EventFilter,
    OutboxItem,
    RetryPolicy,
    Webhook,
    bounded_error,
)
from controlplane.errors import NotFound
from controlplane.registry import store
from controlplane.registry.tables import (
    AuditEventRow,
    WebhookDeliveryRow,
    WebhookOutboxRow,
    WebhookRow,
    as_utc,
    utcnow,
)

SYSTEM_ACTOR = "controlplane"


def target_of(webhook_id: int) -> str:
    """The audit target naming a subscription."""
    return f"webhook/{webhook_id}"


def _filter(row: WebhookRow) -> EventFilter:
    return EventFilter(tuple(row.events), tuple(row.models) if row.models is not None else None)


def _entity(row: WebhookRow, pending: int = 0) -> Webhook:
    return Webhook(
        id=row.id,
        url=row.url,
        filter=_filter(row),
        enabled=row.enabled,
        disabled_reason=row.disabled_reason,
        consecutive_failures=row.consecutive_failures,
        created_by=row.created_by,
        created_at=as_utc(row.created_at),
        pending=pending,
    )


def _pending(session: Session, webhook_ids: list[int]) -> dict[int, int]:
    if not webhook_ids:
        return {}
    rows = session.execute(
        select(WebhookOutboxRow.webhook_id, func.count())
        .where(WebhookOutboxRow.webhook_id.in_(webhook_ids), WebhookOutboxRow.delivered_at.is_(None))
        .group_by(WebhookOutboxRow.webhook_id)
    ).all()
    return {webhook_id: count for webhook_id, count in rows}


def _row(session: Session, webhook_id: int, *, lock: bool = False) -> WebhookRow:
    stmt = select(WebhookRow).where(WebhookRow.id == webhook_id)
    if lock:
        stmt = stmt.with_for_update()
    row = session.execute(stmt).scalar_one_or_none()
    if row is None:
        raise NotFound(f"webhook {webhook_id} does not exist", code="webhook_not_found")
    return row


def create(session: Session, *, url: str, event_filter: EventFilter, secret: str, created_by: str) -> Webhook:
    """Record a subscription, enabled, and audit it (``webhook.create``: its first event, if it matches)."""
    now = utcnow()
    row = WebhookRow(
        url=url,
        events=list(event_filter.events),
        models=list(event_filter.models) if event_filter.models is not None else None,
        secret=secret,
        enabled=True,
        consecutive_failures=0,
        created_by=created_by,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    store.append_event(
        session,
        actor=created_by,
        action="webhook.create",
        target=target_of(row.id),
        outcome="created",
        details=_described(row),
    )
    return _entity(row, _pending(session, [row.id]).get(row.id, 0))


def _described(row: WebhookRow) -> dict[str, object]:
    # The URL's path and query may be a credential (chat webhooks put it there): readers of the
    # audit log see only where deliveries go, the admins' API shows the whole URL.
    url = parse_webhook_url(row.url)
    return {
        "webhook": row.id,
        "destination": f"{url.scheme}://{url.host_header}",
        "events": list(row.events),
        "models": list(row.models) if row.models is not None else None,
    }


def get(session: Session, webhook_id: int) -> Webhook:
    """One subscription with its count of undelivered events; NotFound (``webhook_not_found``)."""
    row = _row(session, webhook_id)
    return _entity(row, _pending(session, [row.id]).get(row.id, 0))


def list_all(session: Session) -> list[Webhook]:
    """Every subscription, oldest first."""
    rows = session.execute(select(WebhookRow).order_by(WebhookRow.id)).scalars().all()
    pending = _pending(session, [r.id for r in rows])
    return [_entity(r, pending.get(r.id, 0)) for r in rows]


def update(
    session: Session,
    webhook_id: int,
    *,
    actor: str,
    url: str | None = None,
    event_filter: EventFilter | None = None,
    secret: str | None = None,
    enabled: bool | None = None,
) -> Webhook:
    """Change a subscription; audit what changed (``webhook.update``; never the secret's value).

    Re-enabling clears the failure count and makes the oldest undelivered
    event due at once.
    """
    row = _row(session, webhook_id, lock=True)
    now = utcnow()
    changed: list[str] = []
    if url is not None and url != row.url:
        row.url = url
        changed.append("url")
    if event_filter is not None and event_filter != _filter(row):
        row.events = list(event_filter.events)
        row.models = list(event_filter.models) if event_filter.models is not None else None
        changed.append("filter")
    if secret is not None:
        row.secret = secret
        changed.append("secret")
    if enabled is True and not row.enabled:
        row.enabled = True
        row.disabled_reason = None
        row.consecutive_failures = 0
        session.execute(
            sa.update(WebhookOutboxRow)
            .where(WebhookOutboxRow.webhook_id == row.id, WebhookOutboxRow.delivered_at.is_(None))
            .values(next_attempt_at=now)
            .execution_options(synchronize_session=False)
        )
        changed.append("enabled")
    elif enabled is False and row.enabled:
        row.enabled = False
        row.disabled_reason = f"disabled by {actor}"
        changed.append("enabled")
    if changed:
        row.updated_at = now
        session.flush()
        store.append_event(
            session,
            actor=actor,
            action="webhook.update",
            target=target_of(row.id),
            outcome="enabled" if row.enabled else "disabled",
            details={**_described(row), "changed": changed, "enabled": row.enabled},
        )
    return _entity(row, _pending(session, [row.id]).get(row.id, 0))


def delete(session: Session, webhook_id: int, *, actor: str) -> None:
    """Remove a subscription with its outbox and delivery log; audited (``webhook.delete``)."""
    row = _row(session, webhook_id, lock=True)
    described = _described(row)
    session.delete(row)
    session.flush()
    store.append_event(
        session,
        actor=actor,
        action="webhook.delete",
        target=target_of(webhook_id),
        outcome="deleted",
        details=described,
    )


def deliveries(
    session: Session, webhook_id: int, *, before: int | None = None, limit: int = 50
) -> list[Delivery]:
    """The subscription's delivery log, newest first; ``before`` (a delivery id) pages back."""
    _row(session, webhook_id)
    stmt = select(WebhookDeliveryRow).where(WebhookDeliveryRow.webhook_id == webhook_id)
    if before is not None:
        stmt = stmt.where(WebhookDeliveryRow.id < before)
    rows = session.execute(stmt.order_by(WebhookDeliveryRow.id.desc()).limit(limit)).scalars()
    return [
        Delivery(
            id=r.id,
            webhook_id=r.webhook_id,
            outbox_id=r.outbox_id,
            event_id=r.event_id,
            attempt=r.attempt,
            at=as_utc(r.at),
            status_code=r.status_code,
            outcome=DeliveryOutcome(r.outcome),
            error=r.error,
            duration_ms=r.duration_ms,
        )
        for r in rows
    ]


def _event(row: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        at=as_utc(row.at),
        actor=row.actor,
        action=row.action,
        target=row.target,
        outcome=row.outcome,
        details=row.details,
    )


def claim(
    session: Session,
    *,
    owner: str,
    lease_seconds: float,
    batch: int,
    max_batches: int | None = None,
    now: datetime | None = None,
) -> list[DeliveryBatch]:
    """Lease enabled subscriptions that have a due event and nobody delivering it (at most ``max_batches``).

    Each batch holds the subscription's oldest undelivered events, in order,
    up to ``batch`` of them and only while they are due: the oldest one is
    never passed over.
    """
    now = now or utcnow()
    subscriptions = (
        session.execute(
            select(WebhookRow)
            .where(
                WebhookRow.enabled.is_(True),
                (WebhookRow.lease_until.is_(None)) | (WebhookRow.lease_until <= now),
            )
            .order_by(WebhookRow.id)
            .with_for_update(skip_locked=True, key_share=True)
        )
        .scalars()
        .all()
    )
    claimed: list[DeliveryBatch] = []
    for row in subscriptions:
        if max_batches is not None and len(claimed) >= max_batches:
            break
        pending = session.execute(
            select(WebhookOutboxRow, AuditEventRow)
            .join(AuditEventRow, AuditEventRow.id == WebhookOutboxRow.event_id)
            .where(WebhookOutboxRow.webhook_id == row.id, WebhookOutboxRow.delivered_at.is_(None))
            .order_by(WebhookOutboxRow.id)
            .limit(batch)
        ).all()
        items: list[OutboxItem] = []
        for outbox_row, event_row in pending:
            if as_utc(outbox_row.next_attempt_at) > now:
                break
            items.append(OutboxItem(outbox_row.id, outbox_row.attempts, _event(event_row)))
        if not items:
            continue
        row.lease_owner = owner
        row.lease_until = now + timedelta(seconds=lease_seconds)
        claimed.append(DeliveryBatch(webhook_id=row.id, url=row.url, secret=row.secret, items=tuple(items)))
    session.flush()
    return claimed


@dataclass(frozen=True)
class Recorded:
    """What an attempt's record means for the rest of the batch."""

    go_on: bool
    """The next event may be sent: this one was delivered, and the subscription is still ours and enabled."""
    disabled: bool = False
    """This failure disabled the subscription."""


def record_attempt(
    session: Session,
    *,
    webhook_id: int,
    outbox_id: int,
    owner: str,
    result: AttemptResult,
    policy: RetryPolicy,
    random_fraction: float,
    now: datetime | None = None,
) -> Recorded:
    """Log an attempt and apply it: delivered, or failed with the next attempt scheduled by ``policy``.

    The failure that reaches ``policy.max_failures`` disables the
    subscription and audits it (``webhook.disabled``). A batch that ends
    releases its lease here.
    """
    now = now or utcnow()
    row = session.execute(
        select(WebhookRow).where(WebhookRow.id == webhook_id).with_for_update(key_share=True)
    ).scalar_one_or_none()
    pending = session.get(WebhookOutboxRow, outbox_id)
    if row is None or pending is None:
        return Recorded(go_on=False)  # deleted meanwhile
    pending.attempts += 1
    session.add(
        WebhookDeliveryRow(
            outbox_id=pending.id,
            webhook_id=row.id,
            event_id=pending.event_id,
            attempt=pending.attempts,
            at=now,
            status_code=result.status_code,
            outcome=result.outcome.value,
            error=bounded_error(result.error) if result.error else None,
            duration_ms=result.duration_ms,
        )
    )
    disabled = False
    if result.outcome is DeliveryOutcome.DELIVERED:
        pending.delivered_at = now
        if row.consecutive_failures:
            row.consecutive_failures = 0
        go_on = row.enabled and row.lease_owner == owner
    else:
        failures = row.consecutive_failures + 1
        row.consecutive_failures = failures
        pending.next_attempt_at = now + timedelta(seconds=policy.delay(failures, random_fraction))
        go_on = False
        if row.enabled and policy.disables(failures):
            disabled = True
            row.enabled = False
            last = result.error or f"HTTP {result.status_code}"
            row.disabled_reason = bounded_error(f"{failures} consecutive failed deliveries; the last: {last}")
            session.flush()
            store.append_event(
                session,
                actor=SYSTEM_ACTOR,
                action="webhook.disabled",
                target=target_of(row.id),
                outcome="disabled",
                details={**_described(row), "failures": failures, "reason": row.disabled_reason},
            )
    if not go_on and row.lease_owner == owner:
        row.lease_owner = None
        row.lease_until = None
    session.flush()
    return Recorded(go_on=go_on, disabled=disabled)


def release(session: Session, webhook_id: int, *, owner: str) -> None:
    """End ``owner``'s lease on a subscription, if it still holds it."""
    session.execute(
        sa.update(WebhookRow)
        .where(WebhookRow.id == webhook_id, WebhookRow.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
