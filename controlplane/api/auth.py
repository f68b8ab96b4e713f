"""Bearer-token authentication and role checks for the REST API.

The token is resolved by ``RequestGuard`` (see ``controlplane.api.guard``)
before the application reads a byte of the body; the route's dependency then
only checks the role of the caller the guard found. Every refusal goes
through ``RefusalRecorder``.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from controlplane.api.console import is_console_path
from controlplane.api.refusals import RefusalRecorder
from controlplane.domain.auth import Permission, Role, allows, token_hash
from controlplane.domain.limits import has_control_characters
from controlplane.errors import Forbidden, Unauthorized
from controlplane.registry import token_store
from controlplane.registry.db import Database
from controlplane.registry.store import CommitWatch

_bearer = HTTPBearer(auto_error=False, description="An API token: `controlplane token create`")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]

ANONYMOUS = "anonymous"
_AUTHENTICATORS = itertools.count()
CALLER_KEY = "controlplane.caller"
# Tokens are 47 characters; anything far longer is not one of ours and is not hashed or looked up.
_MAX_TOKEN_CHARS = 256

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
READ_METHODS = frozenset({"GET", "HEAD"})

MESSAGES = {
    "missing_token": "this endpoint needs an API token: send 'Authorization: Bearer <token>'",
    "bad_scheme": "the Authorization header must be 'Bearer <token>'",
    "unknown_token": "the API token is unknown or revoked",
}


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a token's name and role, or anonymous (``role`` None)."""

    name: str
    role: Role | None = None


ANONYMOUS_CALLER = Caller(ANONYMOUS)


def caller_of(scope: Mapping) -> Caller | None:
    """The caller the guard resolved for this request (None when no guard ran)."""
    state = scope.get("state")
    return state.get(CALLER_KEY) if isinstance(state, dict) else None


def client_address(scope: Mapping) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


def _digest(authorization: str | None) -> tuple[str, str] | tuple[None, str]:
    """``(reason, "")`` for a header refused as it stands, else ``(None, the token's hash)``."""
    if authorization is None:
        return "missing_token", ""
    scheme, _sep, secret = authorization.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        return "bad_scheme", ""
    if len(secret) > _MAX_TOKEN_CHARS or has_control_characters(secret):
        return "unknown_token", ""
    return None, token_hash(secret)


class Authenticator:
    """Turns the request's bearer token into a caller, or refuses the request."""

    def __init__(
        self,
        db: Database,
        *,
        required: bool = True,
        open_reads: bool = False,
        recorder: RefusalRecorder | None = None,
    ) -> None:
        self.db = db
        self.required = required
        self.open_reads = open_reads
        self.recorder = recorder or RefusalRecorder(db)
        # Tokens found active are kept (token_store.TOKEN_CACHE) for this authenticator's reads alone:
        # each mark of its commit watch means something only to that watch.
        self._commits = CommitWatch(lambda: db.engine)
        self._scope = f"authenticator-{next(_AUTHENTICATORS)}"

    def needs_token(self, *, method: str, path: str, query: Mapping[str, str], has_credentials: bool) -> bool:
        """Whether a request must carry a valid token before anything else happens."""
        if not self.required:
            return False
        if path in OPEN_PATHS and not (path == "/healthz" and "model" in query):
            return False
        if is_console_path(path):
            return False  # static pages; their data comes from the API with the user's token
        return not (self.open_reads and method in READ_METHODS and not has_credentials)

    @property
    def commits(self) -> CommitWatch:
        """The commit watch whose marks decide whether a kept token is still current."""
        return self._commits

    def share_commits(self, commits: CommitWatch) -> None:
        """Take commit marks from ``commits`` (another cache's watch of the same database) from now on.

        A request that checks both caches then needs one mark, not one per
        watch. Tokens kept under the previous watch are never answered again:
        its marks mean nothing to the new one.
        """
        self._commits = commits
        self._scope = f"authenticator-{next(_AUTHENTICATORS)}"

    def cached(
        self, authorization: str | None, *, watch: CommitWatch | None = None, mark: int | None = None
    ) -> Caller | str | None:
        """What ``lookup`` answers when that needs no database, else None. Never blocks.

        A header that is missing or malformed, or a token found active within
        ``token_store.TOKEN_CACHE``'s time (revoked in this process: never).
        ``mark``, just taken of ``watch``, is used instead of a mark of its own
        when ``watch`` is this authenticator's (``commits``).
        """
        parsed = _digest(authorization)
        if parsed[0] is not None:
            return parsed[0]
        now = mark if watch is not None and watch is self._commits else self._commits.mark()
        token = token_store.TOKEN_CACHE.get(self._scope, parsed[1], mark=now)
        return Caller(token.name, token.role) if token is not None else None

    def freshness(self) -> tuple[int | None, int]:
        """What a lookup begun now has seen: the commit mark (None: unknown) and the revokes in this process.

        Two lookups with the same freshness give the same answer (without a commit mark: as far as the
        token cache's time allows). Never blocks.
        """
        return self._commits.mark(), token_store.TOKEN_CACHE.generation()

    def lookup(self, authorization: str | None) -> Caller | str:
        """The caller whose token this header carries, or the reason it is refused.

        Blocking (database, unless ``cached`` knows): call it from a worker thread.
        DatabaseUnavailable propagates.
        """
        reason, digest = _digest(authorization)
        if reason is not None:
            return reason
        cache = token_store.TOKEN_CACHE
        mark = self._commits.mark()
        token = cache.get(self._scope, digest, mark=mark)
        if token is None:
            generation, read_at = cache.generation(), cache.clock()
            with self.db.reading() as connection:
                token = token_store.authenticate_digest(connection, digest)
            if token is not None:
                cache.put(self._scope, digest, token, generation=generation, read_at=read_at, mark=mark)
        return Caller(token.name, token.role) if token is not None else "unknown_token"

    def refuse(self, scope: Mapping, *, status: int, reason: str, actor: str = ANONYMOUS) -> None:
        """Record a refusal of the request in ``scope`` (metric, log, rate-limited audit row)."""
        self.recorder.record(
            status=status,
            reason=reason,
            actor=actor,
            method=str(scope.get("method", "")),
            path=str(scope.get("path", "")),
            client=client_address(scope),
        )

    def require(self, permission: Permission) -> Callable[..., Awaitable[str]]:
        """A FastAPI dependency: the caller's name if its token's role allows ``permission``.

        A coroutine: a caller the guard let in, with a role that allows it, is
        answered on the event loop. Anything else (authentication off aside: no
        guard in front, a refusal, which writes the audit log) is ``check``'s
        answer from a worker thread. Each hop to a worker thread and back cost
        about a millisecond of CPU per request under load (measured on
        ``/v1/whoami``), more than the rest of a cached read.
        """
        check = self.check(permission)

        async def dependency(request: Request, credentials: Credentials) -> str:
            if not self.required:
                return ANONYMOUS
            caller = caller_of(request.scope)
            if caller is not None and caller.role is not None and allows(caller.role, permission):
                return caller.name
            return await run_in_threadpool(check, request, credentials)

        return dependency

    def check(self, permission: Permission) -> Callable[..., str]:
        """``require``'s answer as a blocking function (it may read tokens and write refusals)."""

        def dependency(request: Request, _credentials: Credentials) -> str:
            if not self.required:
                return ANONYMOUS
            caller = caller_of(request.scope)
            if caller is None:
                # No guard in front of this app: resolve the token here.
                found = self.lookup(request.headers.get("authorization"))
                if isinstance(found, str) and found != "missing_token":
                    self.refuse(request.scope, status=401, reason=found)
                    raise Unauthorized(MESSAGES[found])
                caller = found if isinstance(found, Caller) else ANONYMOUS_CALLER
            if caller.role is None:
                if permission is Permission.READ and self.open_reads:
                    return ANONYMOUS
                self.refuse(request.scope, status=401, reason="missing_token")
                raise Unauthorized(MESSAGES["missing_token"])
            if not allows(caller.role, permission):
                self.refuse(request.scope, status=403, reason="role", actor=caller.name)
                raise Forbidden(
                    f"token {caller.name!r} has role {caller.role}, which may not {permission}",
                    details={"role": caller.role.value, "needs": permission.value},
                )
            return caller.name

        return dependency
