"""Which blobs the registry still needs. The caller owns the transaction."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.registry.golden_store import golden_digests
from controlplane.registry.tables import ManifestRow


def referenced_digests(session: Session) -> set[str]:
    """The SHA-256 of every file of every registered version, and of every attached golden set."""
    return set(session.execute(select(ManifestRow.sha256).distinct()).scalars()) | golden_digests(session)
