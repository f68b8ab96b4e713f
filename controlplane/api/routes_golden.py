"""Golden set endpoints: attach one to a version, and describe the one it has."""

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from controlplane.api.auth import Authenticator, Credentials, caller_of
from controlplane.api.params import ModelParam, VersionParam, receive_upload
from controlplane.artifacts.golden_upload import MAX_GOLDEN_BYTES, golden_format
from controlplane.domain.auth import Permission, allows
from controlplane.domain.golden_records import DEFAULT_ATOL, DEFAULT_RTOL, GoldenRecord
from controlplane.services.golden import GoldenSets


class ToleranceOut(BaseModel):
    atol: float
    rtol: float


class GoldenOut(BaseModel):
    model: str
    version: int
    digest: str
    size: int
    format: str
    rows: int
    outputs: dict[str, ToleranceOut]
    source: str
    signed: bool
    actor: str
    created_at: datetime


def golden_out(record: GoldenRecord) -> GoldenOut:
    return GoldenOut(
        model=record.model,
        version=record.version,
        digest=record.digest,
        size=record.size,
        format=record.format.value,
        rows=record.rows,
        outputs={name: ToleranceOut(atol=t.atol, rtol=t.rtol) for name, t in record.outputs.items()},
        source=record.source.value,
        signed=record.signed,
        actor=record.actor,
        created_at=record.created_at,
    )


def _publisher_or_deployer(auth: Authenticator) -> Callable[..., str]:
    """A dependency: the caller's name if its role may push versions or deploy them."""
    push = auth.check(Permission.PUSH)
    deploy = auth.check(Permission.DEPLOY)

    def dependency(request: Request, credentials: Credentials) -> str:
        caller = caller_of(request.scope)
        if caller is not None and caller.role is not None and allows(caller.role, Permission.DEPLOY):
            return deploy(request, credentials)
        return push(request, credentials)

    return dependency


def golden_router(golden: GoldenSets, auth: Authenticator) -> APIRouter:
    """Routes under /v1/models/{model}/versions/{version}/golden."""
    router = APIRouter(tags=["golden"])
    Reader = Annotated[str, Depends(auth.require(Permission.READ))]
    Attacher = Annotated[str, Depends(_publisher_or_deployer(auth))]

    @router.put(
        "/v1/models/{model}/versions/{version}/golden",
        response_model=GoldenOut,
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "A golden set: .npz (inputs/NAME, outputs/NAME, optional atol/NAME, "
                "rtol/NAME) or .json ({inputs, outputs, tolerances, datatypes}). Tolerances default to "
                f"atol {DEFAULT_ATOL:g}, rtol {DEFAULT_RTOL:g}.",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "application/x-npz": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def attach_golden(
        model: ModelParam,
        version: VersionParam,
        request: Request,
        actor: Attacher,
        format_: Annotated[
            str | None, Query(alias="format", description="npz or json, when the content type is unclear")
        ] = None,
    ) -> GoldenOut:
        """Check a golden set against the version's signature and attach it (replacing one attached)."""
        fmt = golden_format(format_param=format_, content_type=request.headers.get("content-type", ""))
        sink = await receive_upload(
            request, golden.uploads_dir, max_bytes=MAX_GOLDEN_BYTES, what="the golden set file"
        )
        try:
            record = await run_in_threadpool(
                golden.attach, model, version, upload=sink.path, fmt=fmt, actor=actor
            )
        finally:
            sink.discard()
        return golden_out(record)

    @router.get("/v1/models/{model}/versions/{version}/golden", response_model=GoldenOut)
    def get_golden(model: ModelParam, version: VersionParam, _actor: Reader) -> GoldenOut:
        """The version's golden set: its file's digest, rows, outputs with tolerances, where it came from."""
        return golden_out(golden.describe(model, version))

    return router
