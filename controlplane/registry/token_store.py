"""API tokens: create (returns the secret once), look up by hash, revoke, list."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.domain.auth import Role, new_token, token_hash
from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.registry import store
from controlplane.registry.tables import ApiTokenRow, as_utc, utcnow

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class TokenInfo:
    name: str
    role: Role
    created_by: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _info(row: ApiTokenRow) -> TokenInfo:
    return TokenInfo(
        name=row.name,
        role=Role(row.role),
        created_by=row.created_by,
        created_at=as_utc(row.created_at),
        revoked_at=as_utc(row.revoked_at) if row.revoked_at else None,
    )


def create_token(session: Session, *, name: str, role: Role, created_by: str) -> tuple[str, TokenInfo]:
    """A new token; returns ``(secret, info)``. The secret is not stored and cannot be shown again."""
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"token name {name!r} is not allowed", code="invalid_token_name")
    if session.execute(select(ApiTokenRow.id).where(ApiTokenRow.name == name)).first() is not None:
        raise Conflict(f"a token named {name!r} exists already", code="token_exists")
    secret = new_token()
    row = ApiTokenRow(
        name=name,
        token_sha256=token_hash(secret),
        role=role.value,
        created_by=created_by,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    store.append_event(
        session,
        actor=created_by,
        action="token.create",
        target=name,
        outcome="created",
        details={"role": role},
    )
    return secret, _info(row)


def authenticate(session: Session, secret: str) -> TokenInfo | None:
    """The active token with this secret, or None."""
    row = session.execute(
        select(ApiTokenRow).where(ApiTokenRow.token_sha256 == token_hash(secret))
    ).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    return _info(row)


def revoke_token(session: Session, *, name: str, revoked_by: str) -> TokenInfo:
    """Revoke a token by name; it stops working at once."""
    row = session.execute(select(ApiTokenRow).where(ApiTokenRow.name == name)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no token named {name!r}", code="token_not_found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
        store.append_event(session, actor=revoked_by, action="token.revoke", target=name, outcome="revoked")
    return _info(row)


def list_tokens(session: Session) -> list[TokenInfo]:
    return [_info(r) for r in session.execute(select(ApiTokenRow).order_by(ApiTokenRow.name)).scalars()]
