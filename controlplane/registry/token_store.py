"""API tokens: create (returns the secret once), look up by hash, revoke, list.

``TOKEN_CACHE`` keeps tokens recently found active, so that a request need
not read the database to know its caller. Its bounds: a token revoked in this
process (``revoke_token``) is refused at once. One revoked by another process
(the CLI, another control plane) is refused at once on SQLite, where an entry
is taken only while no commit happened since it was read (``store.CommitWatch``),
and at the latest ``TOKEN_CACHE_SECONDS`` after this process last read it on
PostgreSQL.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, event, select
from sqlalchemy.orm import Session

from controlplane.domain.auth import Role, new_token, token_hash
from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.registry import store
from controlplane.registry.tables import ApiTokenRow, as_utc, utcnow

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

# How long an active token is taken as active without reading the database again.
TOKEN_CACHE_SECONDS = 0.5


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


class TokenCache:
    """Active tokens by ``(scope, SHA-256 of the secret)``, each for ``ttl`` seconds after it was read.

    ``scope`` names who reads (an authenticator: one database, one commit
    watch), so answers are never shared between readers. An entry also holds
    the commit mark taken before its read, and answers only a caller holding
    the same mark (None on PostgreSQL: the time alone decides). Only active
    tokens are kept (an unknown or revoked one is read again each time), at
    most ``max_entries``, the least recently used dropped first. ``forget``
    (a revoke) drops a token and makes every lookup begun before it put
    nothing back: a lookup takes ``generation()`` before it reads the
    database and hands it to ``put``.
    """

    def __init__(
        self,
        *,
        ttl: float = TOKEN_CACHE_SECONDS,
        max_entries: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, int | None, TokenInfo]] = OrderedDict()
        self._generation = 0
        self._lock = threading.Lock()

    def get(self, scope: str, digest: str, *, mark: int | None = None) -> TokenInfo | None:
        """The active token with this hash, if read at commit mark ``mark`` within ``ttl`` seconds."""
        key = (scope, digest)
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            until, read_mark, info = found
            if self.clock() >= until or read_mark != mark:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return info

    def generation(self) -> int:
        """Taken before a lookup reads the database; see ``put``."""
        with self._lock:
            return self._generation

    def put(
        self,
        scope: str,
        digest: str,
        info: TokenInfo,
        *,
        generation: int,
        read_at: float,
        mark: int | None = None,
    ) -> None:
        """Keep ``info`` for ``mark`` until ``read_at + ttl``; not if a revoke came after ``generation``."""
        if not info.active:
            return
        with self._lock:
            if generation != self._generation:
                return  # a revoke may have committed after this answer was read
            self._entries[(scope, digest)] = (read_at + self.ttl, mark, info)
            self._entries.move_to_end((scope, digest))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget(self, name: str) -> None:
        """Drop the token named ``name`` (in every scope) and void the lookups now reading."""
        with self._lock:
            self._generation += 1
            for key in [k for k, (_until, _mark, info) in self._entries.items() if info.name == name]:
                del self._entries[key]

    def clear(self) -> None:
        """Drop every token and void the lookups now reading."""
        with self._lock:
            self._generation += 1
            self._entries.clear()


TOKEN_CACHE = TokenCache()


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
    return authenticate_digest(session.connection(), token_hash(secret))


_BY_DIGEST = select(
    ApiTokenRow.name, ApiTokenRow.role, ApiTokenRow.created_by, ApiTokenRow.created_at, ApiTokenRow.revoked_at
).where(ApiTokenRow.token_sha256 == bindparam("digest"))


def authenticate_digest(connection: Connection, digest: str) -> TokenInfo | None:
    """The active token whose secret hashes to ``digest``, or None."""
    row = connection.execute(_BY_DIGEST, {"digest": digest}).one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    return TokenInfo(
        name=row.name,
        role=Role(row.role),
        created_by=row.created_by,
        created_at=as_utc(row.created_at),
        revoked_at=None,
    )


def revoke_token(session: Session, *, name: str, revoked_by: str) -> TokenInfo:
    """Revoke a token by name; it stops working at once in this process (see ``TOKEN_CACHE`` for others)."""
    row = session.execute(select(ApiTokenRow).where(ApiTokenRow.name == name)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no token named {name!r}", code="token_not_found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
        store.append_event(session, actor=revoked_by, action="token.revoke", target=name, outcome="revoked")
    # Now, and again once committed: a lookup that read the row before the commit puts nothing back.
    TOKEN_CACHE.forget(name)
    event.listen(session, "after_commit", lambda _session: TOKEN_CACHE.forget(name), once=True)
    return _info(row)


def list_tokens(session: Session) -> list[TokenInfo]:
    return [_info(r) for r in session.execute(select(ApiTokenRow).order_by(ApiTokenRow.name)).scalars()]
