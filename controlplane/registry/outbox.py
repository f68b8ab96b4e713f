"""The webhook outbox: what each subscription still has to receive.

``enqueue`` runs inside ``store.append_event``, in the transaction of the
change an event records, so an event has its outbox rows exactly when it
committed: a crash before the commit loses both, one after it loses neither.
The worker follows the rows of each subscription, not audit ids: on
PostgreSQL an id is taken before its transaction commits, so a reader
following ids could pass over an event that commits after a later one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from controlplane.domain.webhooks import EventFilter
from controlplane.registry.tables import WebhookOutboxRow, WebhookRow


def enqueue(
    session: Session, *, event_id: int, action: str, target: str, details: Mapping[str, Any], at: datetime
) -> int:
    """Insert an outbox row for every enabled subscription whose filter takes the event; return how many."""
    subscriptions = session.execute(
        select(WebhookRow.id, WebhookRow.events, WebhookRow.models).where(WebhookRow.enabled.is_(True))
    ).all()
    matching = [
        webhook_id
        for webhook_id, events, models in subscriptions
        if EventFilter(tuple(events), tuple(models) if models is not None else None).matches(
            action=action, target=target, details=details
        )
    ]
    if matching:
        session.execute(
            insert(WebhookOutboxRow),
            [
                {
                    "webhook_id": w,
                    "event_id": event_id,
                    "created_at": at,
                    "attempts": 0,
                    "next_attempt_at": at,
                }
                for w in matching
            ],
        )
    return len(matching)
