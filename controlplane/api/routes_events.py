"""Audit log endpoint."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from controlplane.api import schemas
from controlplane.api.auth import Authenticator
from controlplane.domain.auth import Permission
from controlplane.domain.limits import MAX_ID
from controlplane.services.registry import Registry


def events_router(registry: Registry, auth: Authenticator) -> APIRouter:
    """GET /v1/events: audit events after an id, oldest first."""
    router = APIRouter(tags=["audit"])
    Reader = Annotated[str, Depends(auth.require(Permission.READ))]

    @router.get("/v1/events", response_model=list[schemas.EventOut])
    def events(
        _actor: Reader,
        after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[schemas.EventOut]:
        return [schemas.event_out(e) for e in registry.events(after_id=after, limit=limit)]

    return router
