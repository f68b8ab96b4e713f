"""Aliases in the registry. Functions flush; the caller owns the transaction.

Every change of an alias writes, in the caller's transaction, the alias row,
a history row and an audit event (``alias.set`` / ``alias.delete``). The
model row is locked first, so two moves of one model's aliases queue.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from controlplane.domain.aliases import PRODUCTION, Alias, AliasMove, production_reason
from controlplane.errors import NotFound
from controlplane.registry import rollout_store, store
from controlplane.registry.store import get_model_row, get_version_row
from controlplane.registry.tables import (
    AliasHistoryRow,
    ModelAliasRow,
    ModelRow,
    VersionRow,
    as_utc,
    utcnow,
)


def _alias(row: ModelAliasRow, model: str, number: int) -> Alias:
    return Alias(
        model=model, name=row.name, version=number, actor=row.actor, updated_at=as_utc(row.updated_at)
    )


def _move(row: AliasHistoryRow, model: str) -> AliasMove:
    return AliasMove(
        id=row.id,
        model=model,
        name=row.name,
        version=row.version,
        previous=row.previous,
        actor=row.actor,
        reason=row.reason,
        rollout=row.rollout_id,
        at=as_utc(row.at),
    )


def _not_found(model: str, name: str) -> NotFound:
    return NotFound(
        f"model {model!r} has no alias {name!r}",
        code="alias_not_found",
        details={"model": model, "alias": name},
    )


def _row_of(session: Session, model: ModelRow, name: str) -> tuple[ModelAliasRow, int] | None:
    found = session.execute(
        select(ModelAliasRow, VersionRow.number)
        .join(VersionRow, VersionRow.id == ModelAliasRow.version_id)
        .where(ModelAliasRow.model_id == model.id, ModelAliasRow.name == name)
    ).one_or_none()
    return None if found is None else (found[0], found[1])


def get_alias(session: Session, *, model: str, name: str) -> Alias:
    """Where ``name`` points; NotFound (``model_not_found`` / ``alias_not_found``) otherwise."""
    model_row = get_model_row(session, model)
    found = _row_of(session, model_row, name)
    if found is None:
        raise _not_found(model_row.name, name)
    return _alias(found[0], model_row.name, found[1])


def resolve(session: Session, *, model: str, name: str) -> int:
    """The version number alias ``name`` of ``model`` points to (NotFound as ``get_alias``)."""
    return get_alias(session, model=model, name=name).version


def list_aliases(session: Session, *, model: str) -> list[Alias]:
    """Every alias of ``model``, by name."""
    model_row = get_model_row(session, model)
    rows = session.execute(
        select(ModelAliasRow, VersionRow.number)
        .join(VersionRow, VersionRow.id == ModelAliasRow.version_id)
        .where(ModelAliasRow.model_id == model_row.id)
        .order_by(ModelAliasRow.name)
    ).all()
    return [_alias(row, model_row.name, number) for row, number in rows]


def history(session: Session, *, model: str, name: str, limit: int = 100) -> list[AliasMove]:
    """The last ``limit`` moves of alias ``name``, oldest first (also for an alias deleted since)."""
    model_row = get_model_row(session, model)
    rows = session.execute(
        select(AliasHistoryRow)
        .where(AliasHistoryRow.model_id == model_row.id, AliasHistoryRow.name == name)
        .order_by(AliasHistoryRow.id.desc())
        .limit(limit)
    ).scalars()
    moves = [_move(row, model_row.name) for row in rows]
    moves.reverse()
    return moves


def set_alias(
    session: Session,
    *,
    model: str,
    name: str,
    version: int,
    actor: str,
    reason: str = "",
    rollout_id: int | None = None,
) -> tuple[Alias, AliasMove | None]:
    """Point ``name`` at ``version``; return the alias and the move recorded (None: it pointed there already).

    The caller checks whether ``name`` may be changed by whoever asks (see
    ``controlplane.domain.aliases.check_changeable``). NotFound when the model
    or the version does not exist.
    """
    model_row = get_model_row(session, model, lock=True)
    version_row = get_version_row(session, model_row, version)
    found = _row_of(session, model_row, name)
    previous = None if found is None else found[1]
    if found is not None and previous == version:
        return _alias(found[0], model_row.name, version), None
    now = utcnow()
    if found is None:
        row = ModelAliasRow(model_id=model_row.id, name=name)
        session.add(row)
    else:
        row = found[0]
    row.version_id = version_row.id
    row.actor = actor
    row.updated_at = now
    move = _record(
        session,
        model_row,
        name=name,
        version=version,
        previous=previous,
        actor=actor,
        reason=reason,
        rollout_id=rollout_id,
    )
    return _alias(row, model_row.name, version), move


def delete_alias(session: Session, *, model: str, name: str, actor: str, reason: str = "") -> AliasMove:
    """Remove alias ``name``; return the move recorded. NotFound when it does not exist."""
    model_row = get_model_row(session, model, lock=True)
    found = _row_of(session, model_row, name)
    if found is None:
        raise _not_found(model_row.name, name)
    session.execute(delete(ModelAliasRow).where(ModelAliasRow.id == found[0].id))
    return _record(session, model_row, name=name, version=None, previous=found[1], actor=actor, reason=reason)


def _record(
    session: Session,
    model: ModelRow,
    *,
    name: str,
    version: int | None,
    previous: int | None,
    actor: str,
    reason: str,
    rollout_id: int | None = None,
) -> AliasMove:
    row = AliasHistoryRow(
        model_id=model.id,
        name=name,
        version=version,
        previous=previous,
        actor=actor,
        reason=reason,
        rollout_id=rollout_id,
        at=utcnow(),
    )
    session.add(row)
    session.flush()
    store.append_event(
        session,
        actor=actor,
        action="alias.set" if version is not None else "alias.delete",
        target=f"{model.name}@{name}",
        outcome=_outcome(version, previous),
        details={
            "alias": name,
            "version": version,
            "previous": previous,
            "reason": reason,
            "rollout": rollout_id,
        },
    )
    return _move(row, model.name)


def _outcome(version: int | None, previous: int | None) -> str:
    if version is None:
        return "deleted"
    return "set" if previous is None else "moved"


def follow_rollout(session: Session, *, rollout_id: int) -> AliasMove | None:
    """Move ``production`` to a rollout's version if its target pool is the live one (in its success).

    Called in the transaction that records the rollout as succeeded, so the
    alias and the rollout's outcome commit together. A deploy to a pool
    without traffic does not change what is live, and leaves the alias.
    """
    rollout = rollout_store.get_rollout(session, rollout_id)
    if rollout_store.live_pool(session) != rollout.target_pool:
        return None
    model, version = rollout.spec.model, rollout.spec.version
    model_row = get_model_row(session, model, lock=True)
    current = _row_of(session, model_row, PRODUCTION)
    held = session.execute(
        select(AliasHistoryRow.version)
        .where(AliasHistoryRow.model_id == model_row.id, AliasHistoryRow.name == PRODUCTION)
        .distinct()
    ).scalars()
    reason = production_reason(
        rollout.id,
        version,
        current=None if current is None else current[1],
        held={v for v in held if v is not None},
    )
    _alias_now, move = set_alias(
        session,
        model=model,
        name=PRODUCTION,
        version=version,
        actor=rollout.actor,
        reason=reason,
        rollout_id=rollout.id,
    )
    return move
