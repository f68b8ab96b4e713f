"""One audit event in its own transaction, for services that have nothing else to commit."""

from __future__ import annotations

from typing import Any

from controlplane.registry import store
from controlplane.registry.db import Database


def record(
    db: Database, *, actor: str, action: str, target: str, outcome: str, details: dict[str, Any]
) -> None:
    """Append an event to the audit log."""
    with db.transaction() as session:
        store.append_event(
            session, actor=actor, action=action, target=target, outcome=outcome, details=details
        )
