"""The registry's hottest read answered before FastAPI's routing: a version read before, unchanged since.

``GET /v1/models/{model}/versions/{version}`` is what dashboards, CI jobs and
the web console ask most. While nothing was committed since a version was
last read, its answer is the very bytes served then (``VersionBodies``), and
finding them costs microseconds; FastAPI's routing, parameter validation and
dependencies around them cost several hundred per request (measured
in-process: 430 us for the whole read, ~300 of them FastAPI's). So this
middleware, inside the request guard (the caller is authenticated), answers
such a request itself when the caller may read and the answer is kept, and
hands everything else (a query string, an unusual path, a refusal, a cache
miss) to the app unchanged. Both give the same status, headers and bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from controlplane.api.auth import Authenticator, caller_of
from controlplane.domain.auth import Permission, allows

# Model names as the route's parameter admits them are a subset of [^/]+; a name the route would
# refuse is never among the kept answers, so it falls through to the route and its 422.
_VERSION_PATH = re.compile(r"/v1/models/([^/]+)/versions/([1-9][0-9]{0,17})")

KeptBody = Callable[[str, int], bytes | None]


class VersionReadShortcut:
    """ASGI middleware: answer a version read from ``kept`` when the caller may read and it is kept."""

    def __init__(self, app: ASGIApp, *, kept: KeptBody, auth: Authenticator) -> None:
        self.app = app
        self.kept = kept
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self._kept_answer(scope) if scope["type"] == "http" else None
        if body is None:
            await self.app(scope, receive, send)
            return
        # The headers of the route's Response(body, media_type="application/json"), in its order.
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _kept_answer(self, scope: Scope) -> bytes | None:
        if scope["method"] != "GET" or scope.get("query_string"):
            return None
        match = _VERSION_PATH.fullmatch(scope["path"])
        if match is None or not self._may_read(scope):
            return None
        return self.kept(match[1], int(match[2]))

    def _may_read(self, scope: Scope) -> bool:
        if not self.auth.required:
            return True
        caller = caller_of(scope)
        return caller is not None and caller.role is not None and allows(caller.role, Permission.READ)
