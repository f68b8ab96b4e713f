"""Audit log endpoints: a filtered page of events (oldest or newest first), and the live stream of them."""

from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from controlplane.api import schemas
from controlplane.api.auth import Authenticator, Caller, caller_of
from controlplane.api.errors import error_body
from controlplane.api.event_stream import (
    MEDIA_TYPE,
    EventStreamResponse,
    StreamSettings,
    StreamSlots,
    event_messages,
)
from controlplane.domain.auth import Permission, allows
from controlplane.domain.event_cursor import EventCursor
from controlplane.domain.limits import MAX_ID, validate_text
from controlplane.errors import DatabaseUnavailable, InvalidInput
from controlplane.registry import event_feed
from controlplane.services.registry import Registry

# Longest value of a text filter (model, actor, action); longer than any stored one.
_MAX_FILTER = 256


def _last_event_id(header: str | None) -> int | None:
    """The id a reconnecting client last saw; InvalidInput unless it is one of ours."""
    if header is None or not header.strip():
        return None
    value = header.strip()
    if not value.isdigit() or int(value) > MAX_ID:
        raise InvalidInput(
            f"Last-Event-ID must be an event id (0..{MAX_ID}), got {value[:40]!r}",
            code="invalid_last_event_id",
        )
    return int(value)


def events_router(registry: Registry, auth: Authenticator) -> APIRouter:
    """GET /v1/events (a page after an id) and GET /v1/events/stream (server-sent events)."""
    router = APIRouter(tags=["audit"])
    Reader = Annotated[str, Depends(auth.require(Permission.READ))]
    slots = StreamSlots()

    @router.get("/v1/events", response_model=list[schemas.EventOut])
    def events(
        _actor: Reader,
        after: Annotated[int, Query(ge=0, le=MAX_ID, description="only events with a larger id")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        model: Annotated[
            str | None,
            Query(
                max_length=_MAX_FILTER,
                description="only events about this model: its versions, aliases, and releases on pools",
            ),
        ] = None,
        actor: Annotated[str | None, Query(max_length=_MAX_FILTER, description="only this actor's")] = None,
        action: Annotated[
            str | None,
            Query(
                max_length=_MAX_FILTER, description="only this action, or a prefix ending in .* (rollout.*)"
            ),
        ] = None,
        before: Annotated[
            int | None, Query(ge=0, le=MAX_ID, description="only events with a smaller id")
        ] = None,
        order: Annotated[
            Literal["asc", "desc"],
            Query(description="asc: oldest first; desc: newest first (the next page: before=the last id)"),
        ] = "asc",
    ) -> list[schemas.EventOut]:
        """A page of the audit log, filtered; oldest first unless order=desc."""
        for what, value in (("model", model), ("actor", actor), ("action", action)):
            if value is not None:
                validate_text(value, what=what, max_length=_MAX_FILTER)
        found = registry.events(
            after_id=after,
            limit=limit,
            before_id=before,
            model=model,
            actor=actor,
            action=action,
            newest_first=order == "desc",
        )
        return [schemas.event_out(e) for e in found]

    def latest_id() -> int:
        with registry.db.transaction() as session:
            return event_feed.latest_event_id(session)

    def token_check(request: Request) -> Callable[[], bool] | None:
        """Whether the token the stream was opened with still allows reads (None: nothing to recheck)."""
        caller = caller_of(request.scope)
        authorization = request.headers.get("authorization")
        if (
            not auth.required
            or authorization is None
            or not isinstance(caller, Caller)
            or caller.role is None
        ):
            return None

        def still_allowed() -> bool:
            try:
                found = auth.lookup(authorization)
            except DatabaseUnavailable:
                return True  # not known to be revoked: asked again at the next check
            return (
                isinstance(found, Caller) and found.role is not None and allows(found.role, Permission.READ)
            )

        return still_allowed

    @router.get(
        "/v1/events/stream",
        response_class=Response,
        responses={
            200: {
                "content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
                "description": "Server-sent events: `id:` the event id, `event:` its action, `data:` the "
                "event as in GET /v1/events; a `: heartbeat` comment when idle. Without Last-Event-ID "
                "or `after`, the stream starts at the newest event.",
            },
            503: {"description": "Too many streams are open (too_many_streams); retry later."},
        },
    )
    async def stream(
        request: Request,
        _actor: Reader,
        after: Annotated[int | None, Query(ge=0, le=MAX_ID, description="resume after this event id")] = None,
        last_event_id: Annotated[
            str | None, Header(alias="Last-Event-ID", description="set by a reconnecting EventSource")
        ] = None,
    ) -> Response:
        """Follow the audit log live: each new event as it is committed, resumable by event id."""
        settings: StreamSettings = getattr(request.app.state, "event_stream", None) or StreamSettings()
        resume = _last_event_id(last_event_id)
        start = resume if resume is not None else after
        if not slots.take(settings.max_streams):
            return JSONResponse(
                error_body(
                    "too_many_streams",
                    f"{settings.max_streams} event streams are open, the most this server keeps; retry later",
                ),
                status_code=503,
                headers={"Retry-After": "5"},
            )
        try:
            if start is None:
                start = await run_in_threadpool(latest_id)
            messages = event_messages(
                lambda after_id, limit: registry.events(after_id=after_id, limit=limit),
                EventCursor(start, gap_grace=settings.gap_grace_seconds),
                settings,
                still_allowed=token_check(request),
            )
        except BaseException:
            slots.give_back()
            raise
        return EventStreamResponse(messages, on_close=slots.give_back)

    return router
