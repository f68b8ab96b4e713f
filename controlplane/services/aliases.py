"""Aliases of models: set, move, delete and read them; resolve one to its version number."""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.domain.aliases import (
    Alias,
    AliasMove,
    check_changeable,
    validate_alias_name,
    validate_reason,
)
from controlplane.domain.limits import MAX_ID
from controlplane.domain.models import ModelVersion, validate_model_name
from controlplane.errors import InvalidInput
from controlplane.registry import alias_store, store
from controlplane.registry.db import Database
from controlplane.services import audit


@dataclass(frozen=True)
class AliasView:
    """An alias with the version it points to."""

    alias: Alias
    version: ModelVersion


class Aliases:
    """Named pointers to versions. ``production`` is read here and moved only by the rollout engine."""

    def __init__(self, *, db: Database) -> None:
        self.db = db

    def set(self, model: str, name: str, version: int, *, actor: str, reason: str = "") -> AliasView:
        """Point ``name`` at ``version`` (audited as ``alias.set``; a no-op when it points there already).

        InvalidInput (``invalid_alias_name``), Conflict (``alias_reserved``),
        NotFound (``model_not_found``, ``version_not_found``).
        """
        validate_model_name(model)
        check_changeable(name)
        why = validate_reason(reason)
        with self.db.transaction() as session:
            alias, _move = alias_store.set_alias(
                session, model=model, name=name, version=version, actor=actor, reason=why
            )
            return AliasView(alias, store.get_version(session, model, alias.version))

    def delete(self, model: str, name: str, *, actor: str, reason: str = "") -> AliasMove:
        """Remove ``name`` (audited as ``alias.delete``); NotFound (``alias_not_found``) if it is not set."""
        validate_model_name(model)
        check_changeable(name)
        why = validate_reason(reason)
        with self.db.transaction() as session:
            return alias_store.delete_alias(session, model=model, name=name, actor=actor, reason=why)

    def get(self, model: str, name: str) -> AliasView:
        """Where ``name`` points, with that version; NotFound (``alias_not_found``) if it does not exist."""
        validate_model_name(model)
        validate_alias_name(name)
        with self.db.transaction() as session:
            alias = alias_store.get_alias(session, model=model, name=name)
            return AliasView(alias, store.get_version(session, model, alias.version))

    def list_aliases(self, model: str) -> list[Alias]:
        """Every alias of ``model``, by name."""
        validate_model_name(model)
        with self.db.transaction() as session:
            return alias_store.list_aliases(session, model=model)

    def history(self, model: str, name: str, *, limit: int = 100) -> list[AliasMove]:
        """The last ``limit`` moves of ``name``, oldest first; NotFound when it never existed."""
        validate_model_name(model)
        validate_alias_name(name)
        with self.db.transaction() as session:
            moves = alias_store.history(session, model=model, name=name, limit=limit)
            if not moves:
                alias_store.get_alias(session, model=model, name=name)
        return moves

    def resolve(self, model: str, name: str) -> int:
        """The version number ``name`` points to now."""
        validate_model_name(model)
        validate_alias_name(name)
        with self.db.transaction() as session:
            return alias_store.resolve(session, model=model, name=name)

    def version_of(self, model: str, ref: int | str) -> tuple[int, str | None]:
        """A version given as a number or as an alias (``challenger``, ``@challenger``, or digits).

        Returns the number and the alias it came from (None for a number).
        InvalidInput for a number out of range or a malformed alias name;
        NotFound (``alias_not_found``) for an alias the model lacks.
        """
        if isinstance(ref, int):
            return ref, None
        text = ref.strip().removeprefix("@")
        if text.isdigit():
            number = int(text)
            if not 1 <= number <= MAX_ID:
                raise InvalidInput(f"version {text} is out of range 1..{MAX_ID}", code="invalid_version")
            return number, None
        return self.resolve(model, text), text

    def note_rollout(self, rollout_id: int, *, model: str, alias: str, version: int, actor: str) -> None:
        """Record that a rollout was asked for by alias (``rollout.alias``: which alias, which version)."""
        audit.record(
            self.db,
            actor=actor,
            action="rollout.alias",
            target=f"{model}/{version}",
            outcome="resolved",
            details={"rollout": rollout_id, "alias": alias, "version": version},
        )
