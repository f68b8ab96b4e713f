"""Alias endpoints: named pointers to a model's versions, and every move they made."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from controlplane.api import schemas
from controlplane.api.auth import Authenticator
from controlplane.api.params import ModelParam
from controlplane.domain.aliases import MAX_REASON_CHARS, Alias, AliasMove
from controlplane.domain.auth import Permission
from controlplane.domain.limits import MAX_ID
from controlplane.services.aliases import Aliases, AliasView

AliasParam = Annotated[str, PathParam(max_length=256, description="1-64 of a-z, 0-9, '_', '-'")]


class AliasIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_ID, description="the version the alias points to from now on")
    reason: str = Field(default="", max_length=MAX_REASON_CHARS, description="kept in the alias's history")


class AliasOut(BaseModel):
    model: str
    alias: str
    version: int
    actor: str
    updated_at: datetime


class AliasDetailOut(AliasOut):
    version_summary: schemas.VersionSummaryOut


class AliasMoveOut(BaseModel):
    id: int
    model: str
    alias: str
    version: int | None = Field(description="where it pointed from then on; null: deleted")
    previous: int | None
    actor: str
    reason: str
    rollout: int | None = Field(description="the rollout whose success moved it (production)")
    at: datetime


def alias_out(alias: Alias) -> AliasOut:
    return AliasOut(
        model=alias.model,
        alias=alias.name,
        version=alias.version,
        actor=alias.actor,
        updated_at=alias.updated_at,
    )


def alias_detail_out(view: AliasView) -> AliasDetailOut:
    return AliasDetailOut(
        **alias_out(view.alias).model_dump(), version_summary=schemas.version_summary(view.version)
    )


def alias_move_out(move: AliasMove) -> AliasMoveOut:
    return AliasMoveOut(
        id=move.id,
        model=move.model,
        alias=move.name,
        version=move.version,
        previous=move.previous,
        actor=move.actor,
        reason=move.reason,
        rollout=move.rollout,
        at=move.at,
    )


def aliases_router(aliases: Aliases, auth: Authenticator) -> APIRouter:
    """Routes under /v1/models/{model}/aliases."""
    router = APIRouter(tags=["aliases"])
    Reader = Annotated[str, Depends(auth.require(Permission.READ))]
    Mover = Annotated[str, Depends(auth.require(Permission.DEPLOY))]

    @router.get("/v1/models/{model}/aliases", response_model=list[AliasOut])
    def list_aliases(model: ModelParam, _actor: Reader) -> list[AliasOut]:
        """Every alias of the model, by name (``production`` among them once a rollout has succeeded)."""
        return [alias_out(a) for a in aliases.list_aliases(model)]

    @router.get(
        "/v1/models/{model}/aliases/{alias}",
        response_model=AliasDetailOut,
        responses={404: {"description": "No such model or alias (alias_not_found names it)."}},
    )
    def get_alias(model: ModelParam, alias: AliasParam, _actor: Reader) -> AliasDetailOut:
        """The version the alias points to, with that version's summary."""
        return alias_detail_out(aliases.get(model, alias))

    @router.put(
        "/v1/models/{model}/aliases/{alias}",
        response_model=AliasDetailOut,
        responses={409: {"description": "The alias is reserved (alias_reserved): production."}},
    )
    def set_alias(model: ModelParam, alias: AliasParam, body: AliasIn, actor: Mover) -> AliasDetailOut:
        """Point the alias at a version (creating or moving it); recorded in its history and audited."""
        return alias_detail_out(aliases.set(model, alias, body.version, actor=actor, reason=body.reason))

    @router.delete(
        "/v1/models/{model}/aliases/{alias}",
        response_model=AliasMoveOut,
        responses={409: {"description": "The alias is reserved (alias_reserved): production."}},
    )
    def delete_alias(
        model: ModelParam,
        alias: AliasParam,
        actor: Mover,
        reason: Annotated[str, Query(max_length=MAX_REASON_CHARS)] = "",
    ) -> AliasMoveOut:
        """Remove the alias; its history stays."""
        return alias_move_out(aliases.delete(model, alias, actor=actor, reason=reason))

    @router.get("/v1/models/{model}/aliases/{alias}/history", response_model=list[AliasMoveOut])
    def alias_history(
        model: ModelParam,
        alias: AliasParam,
        _actor: Reader,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AliasMoveOut]:
        """Every move of the alias, oldest first (the last ``limit``): when, who, why, to which version."""
        return [alias_move_out(m) for m in aliases.history(model, alias, limit=limit)]

    return router
