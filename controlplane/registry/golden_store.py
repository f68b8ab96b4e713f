"""Golden sets in the registry. Functions flush; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.domain.golden_records import GoldenFormat, GoldenRecord, GoldenSource, Tolerance
from controlplane.errors import Conflict
from controlplane.registry import store
from controlplane.registry.store import get_model_row, get_version_row
from controlplane.registry.tables import GoldenSetRow, SignatureRow, as_utc, utcnow


def _record(session: Session, row: GoldenSetRow, model: str, number: int) -> GoldenRecord:
    signed = (
        GoldenSource(row.source) is GoldenSource.FOLDER
        and session.execute(
            select(SignatureRow.id).where(SignatureRow.version_id == row.version_id)
        ).scalar_one_or_none()
        is not None
    )
    return GoldenRecord(
        model=model,
        version=number,
        digest=row.digest,
        size=row.size,
        format=GoldenFormat(row.format),
        rows=row.rows,
        outputs={
            name: Tolerance(atol=float(t["atol"]), rtol=float(t["rtol"])) for name, t in row.outputs.items()
        },
        source=GoldenSource(row.source),
        actor=row.actor,
        created_at=as_utc(row.created_at),
        signed=signed,
    )


def _row_of(session: Session, version_id: int) -> GoldenSetRow | None:
    return session.execute(
        select(GoldenSetRow).where(GoldenSetRow.version_id == version_id)
    ).scalar_one_or_none()


def get_golden(session: Session, *, model: str, number: int) -> GoldenRecord | None:
    """The version's golden set, or None; NotFound when the model or version does not exist."""
    model_row = get_model_row(session, model)
    version = get_version_row(session, model_row, number)
    row = _row_of(session, version.id)
    return None if row is None else _record(session, row, model_row.name, number)


def record_golden(
    session: Session,
    *,
    model: str,
    number: int,
    digest: str,
    size: int,
    fmt: GoldenFormat,
    rows: int,
    outputs: Mapping[str, Tolerance],
    source: GoldenSource,
    actor: str,
) -> GoldenRecord:
    """Record the version's golden set, replacing an attached one.

    Conflict (``golden_from_folder``) when an attached set would replace one
    that came in the version's folder: that one is part of the version's
    digest and of any signature of it. The model row is locked, so two
    attachments to one version queue.
    """
    model_row = get_model_row(session, model, lock=True)
    version = get_version_row(session, model_row, number)
    row = _row_of(session, version.id)
    if row is not None and source is GoldenSource.ATTACHED and row.source == GoldenSource.FOLDER.value:
        raise Conflict(
            f"{model} version {number} has a golden set from its pushed folder (covered by its digest "
            "and signature); it cannot be replaced",
            code="golden_from_folder",
            details={"digest": row.digest},
        )
    if row is None:
        row = GoldenSetRow(version_id=version.id)
        session.add(row)
    row.digest = digest
    row.size = size
    row.format = fmt.value
    row.rows = rows
    row.outputs = {name: t.as_dict() for name, t in outputs.items()}
    row.source = source.value
    row.actor = actor
    row.created_at = utcnow()
    session.flush()
    return _record(session, row, model_row.name, number)


def record_attached(
    session: Session,
    *,
    model: str,
    number: int,
    digest: str,
    size: int,
    fmt: GoldenFormat,
    rows: int,
    outputs: Mapping[str, Tolerance],
    actor: str,
) -> GoldenRecord:
    """Record an attached golden set and its audit event (``golden.attach``) in the caller's transaction."""
    previous = get_golden(session, model=model, number=number)
    record = record_golden(
        session,
        model=model,
        number=number,
        digest=digest,
        size=size,
        fmt=fmt,
        rows=rows,
        outputs=outputs,
        source=GoldenSource.ATTACHED,
        actor=actor,
    )
    store.append_event(
        session,
        actor=actor,
        action="golden.attach",
        target=f"{model}/{number}",
        outcome="replaced" if previous is not None else "attached",
        details={
            "digest": digest,
            "format": fmt.value,
            "rows": rows,
            "outputs": sorted(outputs),
            "replaced": previous.digest if previous is not None else None,
        },
    )
    return record


def golden_digests(session: Session) -> set[str]:
    """The digest of every recorded golden file (blobs the garbage collector must keep)."""
    return set(session.execute(select(GoldenSetRow.digest).distinct()).scalars())
