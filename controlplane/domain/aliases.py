"""Aliases: named pointers from a model to one of its versions (``champion``, ``challenger``, ...).

Pure rules, no I/O. An alias name is 1-64 characters of ``[a-z0-9_-]``
starting with a letter. ``production`` is reserved: it names what serves
live traffic and only the control plane moves it, in the transaction that
records a rollout's success. Every move is kept (``AliasMove``), so the
history of ``production`` says which version was live when.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from controlplane.domain.limits import validate_text
from controlplane.errors import Conflict, InvalidInput

PRODUCTION = "production"
RESERVED = frozenset({PRODUCTION})
MAX_ALIAS_CHARS = 64
MAX_REASON_CHARS = 500

_ALIAS_NAME = re.compile(rf"[a-z][a-z0-9_-]{{0,{MAX_ALIAS_CHARS - 1}}}")


@dataclass(frozen=True)
class Alias:
    """Where an alias of a model points now."""

    model: str
    name: str
    version: int
    actor: str
    updated_at: datetime


@dataclass(frozen=True)
class AliasMove:
    """One change of an alias: set or moved (``version``), or deleted (``version`` None)."""

    id: int
    model: str
    name: str
    version: int | None
    previous: int | None
    actor: str
    reason: str
    rollout: int | None
    at: datetime


def validate_alias_name(name: str) -> str:
    """Return ``name``, or raise InvalidInput (``invalid_alias_name``) saying what is allowed."""
    if not _ALIAS_NAME.fullmatch(name):
        raise InvalidInput(
            f"alias name {name!r} is not allowed: use 1-{MAX_ALIAS_CHARS} of a-z, 0-9, '_' or '-', "
            "starting with a letter",
            code="invalid_alias_name",
            details={"alias": name},
        )
    return name


def check_changeable(name: str) -> str:
    """Return ``name`` if a client may set or delete it; Conflict (``alias_reserved``) if it is reserved."""
    validate_alias_name(name)
    if name in RESERVED:
        raise Conflict(
            f"alias {name!r} is reserved: the control plane moves it when a rollout succeeds",
            code="alias_reserved",
            details={"alias": name},
        )
    return name


def validate_reason(reason: str) -> str:
    """Return ``reason`` stripped; InvalidInput (``invalid_reason``): too long, or control characters."""
    return validate_text(reason.strip(), what="reason", max_length=MAX_REASON_CHARS)


def production_reason(rollout_id: int, version: int, *, current: int | None, held: Collection[int]) -> str:
    """Why ``production`` moves to ``version``: a rollout succeeded, or it went back to an earlier version.

    ``current`` is where the alias points now, ``held`` every version it ever
    pointed to: one it held before (and not now) makes the move a rollback.
    """
    if version != current and version in held:
        return f"rollback to version {version}: rollout {rollout_id} succeeded"
    return f"rollout {rollout_id} succeeded"
