"""The API's front door: a pure ASGI middleware that checks before the application reads.

FastAPI reads and parses a JSON body before it solves dependencies such as
authentication, so an anonymous client could make it hold hundreds of
megabytes. This guard runs first, for every request:

1. the bearer token is resolved (401 JSON when it is needed and missing or
   unknown) without receiving a byte of the body;
2. a JSON (non-upload) body is read here, at most ``max_json_bytes``
   (413 on Content-Length or as soon as the stream passes it), and replayed to
   the application;
3. every body read (uploads too) is paced: a client that stops sending or
   trickles slower than ``min_bytes_per_second`` once ``idle_timeout`` has
   passed gets 408 and its connection closed.

Every answer carries ``X-Request-ID``: the client's own when it sent a short
token, otherwise a new one. The id tags every log line of the request
(``controlplane.logs``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from starlette.datastructures import Headers, QueryParams

from controlplane.api.auth import ANONYMOUS_CALLER, CALLER_KEY, MESSAGES, Authenticator, Caller
from controlplane.api.errors import error_body
from controlplane.errors import DatabaseUnavailable, RequestTimeout
from controlplane.logs import REQUEST_ID, REQUEST_ID_HEADER, accepted_request_id

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Above this much unread body a refusal closes the connection instead of draining the rest.
_DRAIN_LIMIT = 64 * 1024


@dataclass(frozen=True)
class ApiLimits:
    """Limits of the API's request handling (see Settings for their meaning)."""

    max_json_bytes: int = 1024**2
    body_idle_timeout: float = 30.0
    min_bytes_per_second: int = 16 * 1024
    min_free_bytes: int = 1024**3


class Pacer:
    """Deadlines for the next chunk of one request body."""

    def __init__(self, limits: ApiLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.started: float | None = None
        self.received = 0

    def timeout(self) -> float:
        """Seconds the next chunk may take: the idle timeout, or less when the average rate is too low."""
        now = self.clock()
        if self.started is None:
            self.started = now
        wait = self.limits.body_idle_timeout
        if self.limits.min_bytes_per_second > 0:
            # By time t the client must have sent min_rate * (t - start - idle) bytes.
            due = self.started + wait + self.received / self.limits.min_bytes_per_second
            wait = min(wait, due - now)
        return max(wait, 0.0)

    async def receive(self, receive: Receive) -> Message:
        """The next message from ``receive``, or RequestTimeout when it comes too late."""
        try:
            message = await asyncio.wait_for(receive(), self.timeout())
        except TimeoutError:
            raise RequestTimeout(
                "the request body arrived too slowly; the connection is closed",
                details={"received_bytes": self.received},
            ) from None
        self.received += len(message.get("body", b""))
        return message


def _declared_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


def _has_body(headers: Headers) -> bool:
    length = _declared_length(headers)
    return (length is not None and length > 0) or "chunked" in headers.get("transfer-encoding", "").lower()


async def send_error(
    send: Send, status: int, code: str, message: str, *, close: bool = False, extra: Sequence = ()
) -> None:
    """Answer with the API's JSON error shape straight from ASGI."""
    body = json.dumps(error_body(code, message)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Authenticate, bound and pace a request before the application sees it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: Authenticator,
        limits: Callable[[], ApiLimits],
        upload_routes: Sequence[tuple[str, re.Pattern[str]]],
    ) -> None:
        self.app = app
        self.auth = auth
        self.limits = limits
        self.upload_routes = tuple(upload_routes)
        # Lookups under way, by Authorization header and freshness: requests with the same token wait for
        # one instead of each taking a worker thread (a burst of them would hold the event loop's GIL turns).
        self._lookups: dict[tuple[str, int | None, int], asyncio.Future[Caller | str]] = {}

    def _is_upload(self, method: str, path: str) -> bool:
        return any(method == m and pattern.fullmatch(path) for m, pattern in self.upload_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accepted_request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        token = REQUEST_ID.set(request_id)
        await self._guard(scope, receive, _echo_request_id(request_id, send))
        # Not reset when the application raised: the 500 handler runs after this frame, in the same
        # task, and its log line and answer need the id. uvicorn gives each request a fresh task.
        REQUEST_ID.reset(token)

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        unread = _declared_length(headers) or 0
        drain_would_be_costly = unread > _DRAIN_LIMIT or "chunked" in headers.get("transfer-encoding", "")
        try:
            caller = await self._authenticate(scope, headers)
        except DatabaseUnavailable as exc:
            await send_error(send, 503, exc.code, exc.message, close=drain_would_be_costly)
            return
        if isinstance(caller, str):
            await send_error(
                send,
                401,
                "unauthorized",
                MESSAGES[caller],
                close=drain_would_be_costly,
                extra=[(b"www-authenticate", b"Bearer")],
            )
            return
        scope.setdefault("state", {})[CALLER_KEY] = caller

        limits = self.limits()
        pacer = Pacer(limits)
        if self._is_upload(scope["method"], scope["path"]):
            # The route streams the body itself under its own size limit; only the pace is enforced here.
            await self.app(scope, lambda: pacer.receive(receive), send)
            return
        if not _has_body(headers):
            await self.app(scope, receive, send)
            return
        if unread > limits.max_json_bytes:
            await send_error(send, 413, "payload_too_large", self._too_large(limits), close=True)
            return
        try:
            body = await self._read_json_body(pacer, receive, limits)
        except RequestTimeout as exc:
            await send_error(send, 408, exc.code, exc.message, close=True)
            return
        if body is None:
            await send_error(send, 413, "payload_too_large", self._too_large(limits), close=True)
            return
        await self.app(scope, _replay(body, receive), send)

    @staticmethod
    def _too_large(limits: ApiLimits) -> str:
        return f"the request body is larger than the limit of {limits.max_json_bytes} bytes for JSON"

    async def _authenticate(self, scope: Scope, headers: Headers) -> Caller | str:
        """The caller, or the reason for a 401 (already recorded)."""
        authorization = headers.get("authorization")
        query = QueryParams(scope.get("query_string", b""))
        needs = self.auth.needs_token(
            method=scope["method"], path=scope["path"], query=query, has_credentials=authorization is not None
        )
        if not needs:
            if authorization is None or not self.auth.required:
                return ANONYMOUS_CALLER
            # An open route with a token (readiness details): a bad token just means anonymous.
            try:
                found = self.auth.cached(authorization) or await self._lookup(authorization)
            except DatabaseUnavailable:
                return ANONYMOUS_CALLER
            return found if isinstance(found, Caller) else ANONYMOUS_CALLER

        # A token read recently needs no worker thread (and no database): most requests end here.
        known = self.auth.cached(authorization)
        if isinstance(known, Caller):
            return known
        found = await self._lookup(authorization)
        if isinstance(found, str):
            await anyio.to_thread.run_sync(partial(self.auth.refuse, scope, status=401, reason=found))
        return found

    async def _lookup(self, authorization: str | None) -> Caller | str:
        """``auth.lookup`` in a worker thread, one at a time per header: the others wait for its answer.

        The lookup is a task of its own, so a request that goes away cancels only its wait.
        """
        if authorization is None:
            return self.auth.lookup(None)  # needs no database
        # Never joined across a commit or a revoke: a request after one reads after it.
        key = (authorization, *self.auth.freshness())
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(anyio.to_thread.run_sync(self.auth.lookup, authorization))
            self._lookups[key] = lookup
            lookup.add_done_callback(partial(self._lookup_done, key))
        return await asyncio.shield(lookup)

    def _lookup_done(self, key: tuple[str, int | None, int], lookup: asyncio.Future[Caller | str]) -> None:
        del self._lookups[key]
        if not lookup.cancelled():
            lookup.exception()  # retrieved here too: every request waiting for it may have gone

    @staticmethod
    async def _read_json_body(pacer: Pacer, receive: Receive, limits: ApiLimits) -> bytes | None:
        """The whole body, or None as soon as it passes the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await pacer.receive(receive)
            if message["type"] != "http.request":
                # The client went away: let the application see the same.
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limits.max_json_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _echo_request_id(request_id: str, send: Send) -> Send:
    """A send that adds the request id header to the response (every answer, refusals too)."""
    header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

    async def echo(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return echo


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands over the buffered body once, then defers to the server's."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
