"""The registry's hottest read answered before the application: a version read before, unchanged since.

``GET /v1/models/{model}/versions/{version}`` is what dashboards, CI jobs and
the web console ask most. While nothing was committed since a version was
last read, its answer is the very bytes served then (``VersionBodies``), and
finding them costs microseconds. Everything around them costs more: FastAPI's
routing, parameters and dependencies several hundred microseconds, and even
with those skipped, the layers outside them (FastAPI's telemetry check,
Starlette's error middleware, the request guard's header parsing, a commit
mark for the token cache and another for the kept answer) took a read to
76 us in-process, where a bare Starlette route answering the same bytes takes
11.5 us; answered here, it takes 23 us.

So this layer sits in front of the whole application (``ControlPlaneApi.front``)
and answers such a request itself when all it needs is at hand without
waiting: the token is one the authenticator keeps, of a role that may read,
and the answer is kept; both are checked against one commit mark, so they are
those of the same instant. It echoes the request id as the request guard
does. Anything else (a query string, a body, an unusual path, a token not
kept, a cache miss, PostgreSQL: no mark) goes to the application unchanged,
where the guard authenticates, refuses, logs and answers as before. Both give
the same status, headers and bytes.
"""

from __future__ import annotations

import re
from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from controlplane.api.auth import Authenticator, Caller
from controlplane.domain.auth import Permission, allows
from controlplane.logs import REQUEST_ID_HEADER, accepted_request_id
from controlplane.registry.store import CommitWatch

# Model names as the route's parameter admits them are a subset of [^/]+; a name the route would
# refuse is never among the kept answers, so it falls through to the route and its 422.
_VERSION_PATH = re.compile(r"/v1/models/([^/]+)/versions/([1-9][0-9]{0,17})")
_REQUEST_ID_NAME = REQUEST_ID_HEADER.lower().encode()
_CONTENT_TYPE = (b"content-type", b"application/json")


class KeptBodies(Protocol):
    """Where the shortcut finds kept answers (``routes_models.VersionBodies``)."""

    @property
    def commits(self) -> CommitWatch: ...

    def unchanged_at(self, model: str, number: int, mark: int) -> bytes | None: ...


class VersionReadShortcut:
    """ASGI layer: answer a version read from ``kept`` when the caller's token and the answer are kept."""

    def __init__(self, app: ASGIApp, *, kept: KeptBodies, auth: Authenticator) -> None:
        self.app = app
        self.kept = kept
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self._kept_answer(scope) if scope["type"] == "http" else None
        if answer is None:
            await self.app(scope, receive, send)
            return
        body, request_id = answer
        # The headers of the route's Response(body, media_type="application/json"), then the guard's id.
        headers = [
            (b"content-length", str(len(body)).encode()),
            _CONTENT_TYPE,
            (_REQUEST_ID_NAME, request_id.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _kept_answer(self, scope: Scope) -> tuple[bytes, str] | None:
        """The kept body and the request id to echo, or None: the application answers."""
        if scope["method"] != "GET" or scope.get("query_string"):
            return None
        match = _VERSION_PATH.fullmatch(scope["path"])
        if match is None:
            return None
        authorization: bytes | None = None
        client_id: bytes | None = None
        for name, value in scope["headers"]:
            # The first of a repeated header counts, as for the guard (starlette's Headers.get).
            if name == b"authorization":
                if authorization is None:
                    authorization = value
            elif name == _REQUEST_ID_NAME:
                if client_id is None:
                    client_id = value
            elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                return None  # a body: the guard reads it under its limits first
        commits = self.kept.commits
        mark = commits.mark()
        if mark is None:
            return None
        if self.auth.required and not self._may_read(authorization, commits, mark):
            return None
        body = self.kept.unchanged_at(match[1], int(match[2]), mark)
        if body is None:
            return None
        return body, accepted_request_id(client_id.decode("latin-1") if client_id is not None else None)

    def _may_read(self, authorization: bytes | None, commits: CommitWatch, mark: int) -> bool:
        if authorization is None:
            return False  # anonymous: the guard decides (401, or an open read of the route's own)
        caller = self.auth.cached(authorization.decode("latin-1"), watch=commits, mark=mark)
        return isinstance(caller, Caller) and caller.role is not None and allows(caller.role, Permission.READ)
