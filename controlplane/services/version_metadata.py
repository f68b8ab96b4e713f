"""Metrics and labels of a version set after its push (an evaluation that finished later), audited."""

from __future__ import annotations

from controlplane.domain.models import ModelVersion
from controlplane.domain.version_metadata import MetadataChange
from controlplane.errors import InvalidInput
from controlplane.registry import store
from controlplane.registry.db import Database


def change_metadata(
    db: Database, *, model: str, number: int, change: MetadataChange, actor: str
) -> ModelVersion:
    """Apply ``change`` to version ``number`` of ``model`` and record a ``version.metadata`` event."""
    if change.empty:
        raise InvalidInput("the change names no metric and no label", code="empty_metadata_change")
    with db.transaction() as session:
        before, version = store.change_version_metadata(session, model=model, number=number, change=change)
        store.append_event(
            session,
            actor=actor,
            action="version.metadata",
            target=f"{model}/{number}",
            outcome="changed",
            details={
                "metrics": dict(change.metrics),
                "labels": dict(change.labels),
                "before": {"metrics": dict(before.metrics), "labels": dict(before.labels)},
            },
        )
    return version
