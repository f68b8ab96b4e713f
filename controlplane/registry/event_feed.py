"""Reading the audit log as a feed: where its end is now (``store.list_events`` reads what follows)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controlplane.registry.tables import AuditEventRow


def latest_event_id(session: Session) -> int:
    """The id of the newest audit event (0 when there is none)."""
    return session.execute(select(func.coalesce(func.max(AuditEventRow.id), 0))).scalar_one()
