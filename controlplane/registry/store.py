"""Repository functions over a session the caller owns: they flush, never commit.

Version numbers are assigned without races: the model row is locked
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises writers with
``BEGIN IMMEDIATE``), the digest is looked up under that lock (idempotent
pushes), and only then is the per-model counter incremented.

The version reads the API serves most (``version_head_and_serving``,
``version_contents``, ``list_version_page``) take a plain connection from
``Database.reading()`` and select columns, not rows: what can change about a
version is read every time, what never changes (``VersionContent``) may be
kept by the caller, checked against the digest read with it.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Insert,
    SQLColumnExpression,
    and_,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, selectinload

from controlplane.domain.models import (
    AuditEvent,
    Deployment,
    DeploymentState,
    ManifestEntry,
    Model,
    ModelName,
    ModelSignature,
    ModelVersion,
    PoolName,
    VersionMetadata,
    VersionState,
)
from controlplane.domain.version_metadata import MetadataChange, apply_change
from controlplane.domain.versions import VersionEvent, decide_version
from controlplane.errors import Conflict, NotFound
from controlplane.registry import outbox
from controlplane.registry.tables import (
    AuditEventRow,
    DeploymentRow,
    ManifestRow,
    ModelRow,
    PoolRow,
    VersionRow,
    as_utc,
    utcnow,
)


def _version_entity(row: VersionRow, model_name: str) -> ModelVersion:
    return ModelVersion(
        model=ModelName(model_name),
        number=row.number,
        digest=row.digest,
        state=VersionState(row.state),
        source_version_dir=row.source_version_dir,
        signature=ModelSignature.from_dict(row.signature),
        metadata=VersionMetadata.from_dict(row.meta),
        manifest=tuple(ManifestEntry(f.path, f.size, f.sha256) for f in row.files),
        size_bytes=row.size_bytes,
        created_at=as_utc(row.created_at),
        last_error=row.last_error,
    )


def get_model_row(session: Session, name: str, *, lock: bool = False) -> ModelRow:
    """The row of model ``name`` (locked for update if ``lock``); ``NotFound`` if there is none."""
    stmt = select(ModelRow).where(ModelRow.name == name)
    if lock:
        stmt = stmt.with_for_update()
    row = session.execute(stmt).scalar_one_or_none()
    if row is None:
        raise NotFound(f"model {name!r} does not exist", code="model_not_found")
    return row


def get_version_row(session: Session, model: ModelRow, number: int) -> VersionRow:
    """The row of version ``number`` of ``model``, files loaded; ``NotFound`` if there is none."""
    row = session.execute(
        select(VersionRow)
        .where(VersionRow.model_id == model.id, VersionRow.number == number)
        .options(selectinload(VersionRow.files))
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"model {model.name!r} has no version {number}", code="version_not_found")
    return row


def ensure_model_row(session: Session, name: str) -> None:
    """Create the row of model ``name`` unless it exists; safe against a concurrent creator."""
    dialect = session.get_bind().dialect.name
    values = {"name": name, "latest_version": 0, "created_at": utcnow()}
    stmt: Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(ModelRow).values(**values).on_conflict_do_nothing(index_elements=["name"])
    elif dialect == "sqlite":
        stmt = sqlite.insert(ModelRow).values(**values).on_conflict_do_nothing(index_elements=["name"])
    else:  # pragma: no cover - other databases are not supported yet
        raise NotImplementedError(f"database dialect {dialect} is not supported")
    session.execute(stmt)


def register_version(
    session: Session,
    *,
    model: ModelName,
    digest: str,
    manifest: Sequence[ManifestEntry],
    source_version_dir: str,
    signature: ModelSignature,
    metadata: VersionMetadata,
) -> tuple[ModelVersion, bool]:
    """Register a version, or return the existing one with the same digest.

    Returns ``(version, created)``.
    """
    ensure_model_row(session, model)
    model_row = get_model_row(session, model, lock=True)
    existing = session.execute(
        select(VersionRow)
        .where(VersionRow.model_id == model_row.id, VersionRow.digest == digest)
        .options(selectinload(VersionRow.files))
    ).scalar_one_or_none()
    if existing is not None:
        return _version_entity(existing, model), False

    number = session.execute(
        update(ModelRow)
        .where(ModelRow.id == model_row.id)
        .values(latest_version=ModelRow.latest_version + 1)
        .returning(ModelRow.latest_version)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    now = utcnow()
    row = VersionRow(
        model_id=model_row.id,
        number=number,
        digest=digest,
        state=VersionState.REGISTERED.value,
        source_version_dir=source_version_dir,
        signature=signature.as_dict(),
        meta=metadata.as_dict(),
        size_bytes=sum(e.size for e in manifest),
        created_at=now,
        updated_at=now,
        files=[ManifestRow(path=e.path, size=e.size, sha256=e.sha256) for e in manifest],
    )
    session.add(row)
    session.flush()
    return _version_entity(row, model), True


def get_version(session: Session, model: str, number: int) -> ModelVersion:
    """One version with its manifest; NotFound if the model or version does not exist."""
    model_row = get_model_row(session, model)
    return _version_entity(get_version_row(session, model_row, number), model_row.name)


@dataclass(frozen=True)
class VersionSummary:
    """A version as a list shows it: everything but its manifest and signature."""

    model: ModelName
    number: int
    digest: str
    state: VersionState
    metadata: VersionMetadata
    size_bytes: int
    created_at: datetime
    last_error: str | None = None


class CommitWatch:
    """Whether anything was committed to a SQLite registry since a mark, without reading a table.

    ``PRAGMA data_version`` on a connection of its own, which never writes,
    changes with every commit of any other connection, in this process or
    another (the CLI, a second control plane). It costs microseconds and
    never waits: a busy database answers no mark. No mark either for a
    database that is not a SQLite file (PostgreSQL): callers then read it.
    Thread-safe.
    """

    def __init__(self, engine: Callable[[], Engine]) -> None:
        """``engine`` gives the database's engine when the first mark is asked for (not before)."""
        self._engine = engine
        self._lock = threading.Lock()
        self._opened = False
        self._connection: sqlite3.Connection | None = None

    def mark(self) -> int | None:
        """The count of commits seen so far (compare two marks of this watch), or None when unknown."""
        try:
            with self._lock:
                if not self._opened:
                    self._open()
                if self._connection is None:
                    return None
                return int(self._connection.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return None

    def _open(self) -> None:
        self._opened = True
        url = self._engine().url
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            # mode=rw: a file that is not there is not created here (this watch then gives no marks).
            self._connection = sqlite3.connect(
                f"{Path(url.database).absolute().as_uri()}?mode=rw",
                uri=True,
                timeout=0,
                isolation_level=None,
                check_same_thread=False,
            )
            weakref.finalize(self, self._connection.close)


@dataclass(frozen=True)
class VersionHead:
    """What can change about a version (state, metadata, last error), and what names its content."""

    id: int
    digest: str
    number: int
    state: VersionState
    metadata: VersionMetadata
    last_error: str | None


@dataclass(frozen=True)
class VersionContent:
    """What never changes about a version once registered: its row's files, interface and origin."""

    id: int
    digest: str
    source_version_dir: str
    signature: ModelSignature
    size_bytes: int
    created_at: datetime
    manifest: tuple[ManifestEntry, ...]


def version_entity(model: str, head: VersionHead, content: VersionContent) -> ModelVersion:
    """The version ``head`` and ``content`` (of the same row) describe."""
    return ModelVersion(
        model=ModelName(model),
        number=head.number,
        digest=head.digest,
        state=head.state,
        source_version_dir=content.source_version_dir,
        signature=content.signature,
        metadata=head.metadata,
        manifest=content.manifest,
        size_bytes=content.size_bytes,
        created_at=content.created_at,
        last_error=head.last_error,
    )


_serving = VersionRow.__table__.alias("serving")
_live_pool = select(PoolRow.name).order_by(PoolRow.weight.desc(), PoolRow.name).limit(1).scalar_subquery()
_HEAD_AND_SERVING = (
    select(
        VersionRow.id,
        VersionRow.digest,
        VersionRow.state,
        VersionRow.meta,
        VersionRow.last_error,
        _serving.c.id,
        _serving.c.digest,
        _serving.c.number,
        _serving.c.state,
        _serving.c.metadata,
        _serving.c.last_error,
    )
    .select_from(ModelRow)
    .join(VersionRow, VersionRow.model_id == ModelRow.id)
    # The live pool as rollout_store.live_pool_of picks it: most weight, ties to the first name.
    .outerjoin(DeploymentRow, and_(DeploymentRow.model_id == ModelRow.id, DeploymentRow.pool == _live_pool))
    .outerjoin(_serving, _serving.c.id == DeploymentRow.version_id)
    .where(ModelRow.name == bindparam("model"), VersionRow.number == bindparam("number"))
)
_CONTENTS = select(
    VersionRow.id,
    VersionRow.digest,
    VersionRow.source_version_dir,
    VersionRow.signature,
    VersionRow.size_bytes,
    VersionRow.created_at,
).where(VersionRow.id.in_(bindparam("ids", expanding=True)))
_MANIFESTS = (
    select(ManifestRow.version_id, ManifestRow.path, ManifestRow.size, ManifestRow.sha256)
    .where(ManifestRow.version_id.in_(bindparam("ids", expanding=True)))
    .order_by(ManifestRow.version_id, ManifestRow.path)
)


def version_head_and_serving(
    connection: Connection, model: str, number: int
) -> tuple[VersionHead, VersionHead | None]:
    """Version ``number`` of ``model`` and the version the live pool serves of it (None: none), in one query.

    Only what can change and what names the content (``version_contents`` reads that).
    NotFound as ``get_version``.
    """
    row = connection.execute(_HEAD_AND_SERVING, {"model": model, "number": number}).one_or_none()
    if row is None:
        _check_model(connection, model)
        raise NotFound(f"model {model!r} has no version {number}", code="version_not_found")
    version_id, digest, state, meta, last_error = row[:5]
    head = _version_head(version_id, digest, number, state, meta, last_error)
    # The serving version's columns, in _version_head's order; all NULL when none serves.
    serving = row[5:]
    return head, None if serving[0] is None else _version_head(*serving)


def _version_head(
    version_id: int, digest: str, number: int, state: str, meta: dict[str, Any], last_error: str | None
) -> VersionHead:
    return VersionHead(
        id=version_id,
        digest=digest,
        number=number,
        state=VersionState(state),
        metadata=VersionMetadata.from_dict(meta),
        last_error=last_error,
    )


def version_contents(connection: Connection, ids: Sequence[int]) -> dict[int, VersionContent]:
    """The content of the versions with these row ids (two queries, whatever their number)."""
    manifests: dict[int, list[ManifestEntry]] = {i: [] for i in ids}
    for version_id, path, size, sha256 in connection.execute(_MANIFESTS, {"ids": list(ids)}):
        manifests[version_id].append(ManifestEntry(path, size, sha256))
    return {
        version_id: VersionContent(
            id=version_id,
            digest=digest,
            source_version_dir=version_dir,
            signature=ModelSignature.from_dict(signature),
            size_bytes=size,
            created_at=as_utc(created_at),
            manifest=tuple(manifests[version_id]),
        )
        for version_id, digest, version_dir, signature, size, created_at in connection.execute(
            _CONTENTS, {"ids": list(ids)}
        )
    }


def _check_model(connection: Connection, name: str) -> None:
    """NotFound (``model_not_found``) unless model ``name`` exists."""
    if connection.execute(select(ModelRow.id).where(ModelRow.name == name)).first() is None:
        raise NotFound(f"model {name!r} does not exist", code="model_not_found")


def list_version_page(
    connection: Connection,
    model: str,
    *,
    limit: int = 100,
    after: int = 0,
    before: int | None = None,
    newest_first: bool = False,
) -> list[VersionSummary]:
    """At most ``limit`` versions of ``model`` numbered above ``after`` (and below ``before``).

    Oldest first, or with ``newest_first`` newest first (the next page: ``before`` the last number seen).
    One indexed range read of the (model, number) key, whatever the length of the history.
    NotFound when the model does not exist.
    """
    query = (
        select(
            VersionRow.number,
            VersionRow.digest,
            VersionRow.state,
            VersionRow.meta,
            VersionRow.size_bytes,
            VersionRow.created_at,
            VersionRow.last_error,
        )
        .join(ModelRow, ModelRow.id == VersionRow.model_id)
        .where(ModelRow.name == model, VersionRow.number > after)
    )
    if before is not None:
        query = query.where(VersionRow.number < before)
    order = VersionRow.number.desc() if newest_first else VersionRow.number.asc()
    rows = connection.execute(query.order_by(order).limit(limit)).all()
    if not rows:
        _check_model(connection, model)  # else an empty page
    name = ModelName(model)
    return [
        VersionSummary(
            model=name,
            number=number,
            digest=digest,
            state=VersionState(state),
            metadata=VersionMetadata.from_dict(meta),
            size_bytes=size,
            created_at=as_utc(created_at),
            last_error=last_error,
        )
        for number, digest, state, meta, size, created_at, last_error in rows
    ]


def list_versions(session: Session, model: str) -> list[ModelVersion]:
    """All versions of a model, oldest first, with their manifests (the API pages: ``list_version_page``)."""
    model_row = get_model_row(session, model)
    rows = session.execute(
        select(VersionRow)
        .where(VersionRow.model_id == model_row.id)
        .order_by(VersionRow.number)
        .options(selectinload(VersionRow.files))
    ).scalars()
    return [_version_entity(r, model_row.name) for r in rows]


def change_version_state(
    session: Session, *, model: str, number: int, event: VersionEvent, error: str | None = None
) -> VersionState:
    """Move a version to the state ``event`` leads to (recording ``error`` when it failed); return it.

    Conflict (``invalid_version_transition``) when the rules refuse, with the row left unchanged.
    """
    row = get_version_row(session, get_model_row(session, model), number)
    decision = decide_version(VersionState(row.state), event)
    if not decision.accepted:
        raise Conflict(
            f"{model} version {number}: {decision.reason}",
            code="invalid_version_transition",
            details={"state": row.state, "event": event.value},
        )
    row.state = decision.state.value
    row.last_error = error if decision.state is VersionState.FAILED else None
    row.updated_at = utcnow()
    session.flush()
    return decision.state


def change_version_metadata(
    session: Session, *, model: str, number: int, change: MetadataChange
) -> tuple[VersionMetadata, ModelVersion]:
    """Apply ``change`` to a version's metrics and labels; return the metadata before and the version after.

    The model row is locked, so two changes of the same version apply one after the other.
    """
    model_row = get_model_row(session, model, lock=True)
    row = get_version_row(session, model_row, number)
    before = VersionMetadata.from_dict(row.meta)
    row.meta = apply_change(before, change).as_dict()
    row.updated_at = utcnow()
    session.flush()
    return before, _version_entity(row, model_row.name)


def _deployment_entities(session: Session, model_ids: Sequence[int] | None = None) -> list[Deployment]:
    stmt = (
        select(DeploymentRow, ModelRow.name, VersionRow.number)
        .join(ModelRow, ModelRow.id == DeploymentRow.model_id)
        .join(VersionRow, VersionRow.id == DeploymentRow.version_id)
        .order_by(ModelRow.name, DeploymentRow.pool)
    )
    if model_ids is not None:
        stmt = stmt.where(DeploymentRow.model_id.in_(model_ids))
    return [
        Deployment(
            model=ModelName(name),
            pool=PoolName(dep.pool),
            version=number,
            state=DeploymentState(dep.state),
            updated_at=as_utc(dep.updated_at),
        )
        for dep, name, number in session.execute(stmt)
    ]


def get_model(session: Session, name: str) -> Model:
    """A model with its deployments; NotFound if it does not exist."""
    row = get_model_row(session, name)
    return Model(
        name=ModelName(row.name),
        created_at=as_utc(row.created_at),
        latest_version=row.latest_version,
        deployments=tuple(_deployment_entities(session, [row.id])),
    )


def list_models(session: Session) -> list[Model]:
    """Every model, by name, with its deployments."""
    rows = session.execute(select(ModelRow).order_by(ModelRow.name)).scalars().all()
    deployments = _deployment_entities(session)
    return [
        Model(
            name=ModelName(r.name),
            created_at=as_utc(r.created_at),
            latest_version=r.latest_version,
            deployments=tuple(d for d in deployments if d.model == r.name),
        )
        for r in rows
    ]


def list_deployments(session: Session, *, pool: str | None = None) -> list[Deployment]:
    """What every pool (or one pool) should serve."""
    deployments = _deployment_entities(session)
    return [d for d in deployments if pool is None or d.pool == pool]


def find_deployment(session: Session, *, model: str, pool: str) -> Deployment | None:
    """The version ``pool`` serves of ``model``, if any."""
    for d in _deployment_entities(session, [get_model_row(session, model).id]):
        if d.pool == pool:
            return d
    return None


def lock_model(session: Session, name: str) -> None:
    """Hold the model row lock until the transaction ends (PostgreSQL; SQLite is already serial)."""
    get_model_row(session, name, lock=True)


def set_deployment(session: Session, *, model: str, pool: str, number: int) -> None:
    """Record that ``pool`` serves version ``number`` of ``model``."""
    model_row = get_model_row(session, model, lock=True)
    version_row = get_version_row(session, model_row, number)
    row = session.execute(
        select(DeploymentRow).where(DeploymentRow.model_id == model_row.id, DeploymentRow.pool == pool)
    ).scalar_one_or_none()
    if row is None:
        row = DeploymentRow(model_id=model_row.id, pool=pool)
        session.add(row)
    row.version_id = version_row.id
    row.state = DeploymentState.SERVING.value
    row.updated_at = utcnow()
    session.flush()


def append_event(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Append an audit event (the table refuses updates and deletes), and its webhook outbox rows.

    Both are written in the caller's transaction: a subscribed receiver gets
    the event exactly when the change it records has committed.
    """
    row = AuditEventRow(
        at=utcnow(),
        actor=actor,
        action=action,
        target=target,
        outcome=outcome,
        details=dict(details or {}),
    )
    session.add(row)
    session.flush()
    outbox.enqueue(session, event_id=row.id, action=action, target=target, details=row.details, at=row.at)


def _starts_with(column: SQLColumnExpression[str], prefix: str) -> ColumnElement[bool]:
    # Not LIKE: SQLite's ignores case, and the prefix would need its wildcards escaped.
    return func.substr(column, 1, len(prefix)) == prefix


def _ends_with(column: SQLColumnExpression[str], suffix: str) -> ColumnElement[bool]:
    return and_(
        func.length(column) >= len(suffix),
        func.substr(column, func.length(column) - len(suffix) + 1) == suffix,
    )


def list_events(
    session: Session,
    *,
    after_id: int = 0,
    limit: int = 100,
    before_id: int | None = None,
    model: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    newest_first: bool = False,
) -> list[AuditEvent]:
    """Audit events with id above ``after_id`` (and below ``before_id``) matching every filter given.

    Oldest first, or with ``newest_first`` newest first (the next page: ``before_id`` the last id seen).
    ``model``: events about it, whose target is the model, one of its versions (``model/N``) or
    aliases (``model@alias``), or its release on a pool (``pool/model``). ``actor``: exact.
    ``action``: exact, or every action it starts with when it ends in ``.*`` (``rollout.*``).
    """
    query = select(AuditEventRow).where(AuditEventRow.id > after_id)
    if before_id is not None:
        query = query.where(AuditEventRow.id < before_id)
    if model is not None:
        target = AuditEventRow.target
        query = query.where(
            or_(
                target == model,
                _starts_with(target, f"{model}/"),
                _starts_with(target, f"{model}@"),
                _ends_with(target, f"/{model}"),
            )
        )
    if actor is not None:
        query = query.where(AuditEventRow.actor == actor)
    if action is not None:
        if action.endswith(".*"):
            query = query.where(_starts_with(AuditEventRow.action, action[:-1]))
        else:
            query = query.where(AuditEventRow.action == action)
    order = AuditEventRow.id.desc() if newest_first else AuditEventRow.id.asc()
    rows = session.execute(query.order_by(order).limit(limit)).scalars()
    return [
        AuditEvent(
            id=r.id,
            at=as_utc(r.at),
            actor=r.actor,
            action=r.action,
            target=r.target,
            outcome=r.outcome,
            details=r.details,
        )
        for r in rows
    ]


def count_versions(session: Session) -> int:
    """How many versions exist in all (for metrics)."""
    return session.execute(select(func.count(VersionRow.id))).scalar_one()
