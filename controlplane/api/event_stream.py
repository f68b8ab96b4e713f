"""The live audit log as server-sent events: polling, formatting, limits.

One stream polls the audit table every ``poll_seconds`` (at most ``batch``
rows a read, read again at once while a backlog lasts), each read in a worker
thread so the event loop never waits on the database. Every event goes out
as ``id:`` (its id), ``event:`` (its action) and ``data:`` (the JSON of
``GET /v1/events``), so a client that reconnects with ``Last-Event-ID``
resumes exactly after what it saw. A comment line goes out when nothing else
has for ``heartbeat_seconds``, so proxies keep the connection open.

A stream ends when its client goes away, when the server shuts down (see
``GuardedH11Protocol.shutdown``), or when the token it was opened with stops
allowing reads (checked every ``recheck_seconds``). At most ``max_streams``
are open at once per application.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from controlplane.api import schemas
from controlplane.domain.event_cursor import DEFAULT_GAP_GRACE_SECONDS, EventCursor
from controlplane.domain.models import AuditEvent
from controlplane.errors import ControlPlaneError

log = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"


@dataclass(frozen=True)
class StreamSettings:
    """How live event streams poll, keep alive and are bounded."""

    poll_seconds: float = 0.5
    batch: int = 100
    heartbeat_seconds: float = 15.0
    recheck_seconds: float = 15.0
    max_streams: int = 32
    gap_grace_seconds: float = DEFAULT_GAP_GRACE_SECONDS
    retry_ms: int = 2000
    """How long a browser's EventSource waits before it reconnects."""


Fetch = Callable[[int, int], Sequence[AuditEvent]]
"""(after_id, limit) -> the events with ids above ``after_id``, oldest first (blocking)."""


class StreamSlots:
    """How many streams are open; taken and given back on the event loop only."""

    def __init__(self) -> None:
        self.open = 0

    def take(self, limit: int) -> bool:
        """Take a slot unless ``limit`` are taken."""
        if self.open >= limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def sse_message(event: AuditEvent) -> bytes:
    """One audit event as a server-sent event (the JSON holds no raw newline)."""
    data = schemas.event_out(event).model_dump_json()
    return f"id: {event.id}\nevent: {_one_line(event.action)}\ndata: {data}\n\n".encode()


async def event_messages(
    fetch: Fetch,
    cursor: EventCursor,
    settings: StreamSettings,
    *,
    still_allowed: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[bytes]:
    """The stream's bytes: a retry hint, then events after ``cursor`` and heartbeats, until cancelled.

    Ends on its own only when ``still_allowed`` (run in a thread every
    ``recheck_seconds``) answers False. A database out of reach is waited out.
    """
    yield f"retry: {settings.retry_ms}\n: stream open after event {cursor.after}\n\n".encode()
    last_sent = last_check = clock()
    while True:
        try:
            events = await anyio.to_thread.run_sync(fetch, cursor.after, settings.batch)
        except ControlPlaneError as exc:
            if not exc.retryable:
                raise
            log.debug("event stream waits: %s", exc.message)
            events = []
        taken = cursor.take([e.id for e in events], clock())
        for event in events[:taken]:
            yield sse_message(event)
        now = clock()
        if taken:
            last_sent = now
        elif now - last_sent >= settings.heartbeat_seconds:
            yield b": heartbeat\n\n"
            last_sent = now
        if still_allowed is not None and now - last_check >= settings.recheck_seconds:
            last_check = now
            if not await anyio.to_thread.run_sync(still_allowed):
                yield b": the token no longer allows reading events\n\n"
                return
        if len(events) < settings.batch or taken < len(events):
            await anyio.sleep(settings.poll_seconds)


class EventStreamResponse(StreamingResponse):
    """A streaming response that calls ``on_close`` once it has ended, whichever way it ended."""

    media_type = MEDIA_TYPE

    def __init__(self, content: AsyncIterator[bytes], *, on_close: Callable[[], None]) -> None:
        super().__init__(
            content,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            media_type=MEDIA_TYPE,
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
