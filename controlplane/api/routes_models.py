"""Registry endpoints: models, their versions, and pushing a new version."""

import math
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from controlplane.api import schemas
from controlplane.api.auth import Authenticator
from controlplane.api.params import ModelParam, VersionParam, receive_upload
from controlplane.domain.auth import Permission
from controlplane.domain.limits import MAX_LIST_ITEMS, validate_text
from controlplane.domain.models import VersionMetadata
from controlplane.errors import InvalidInput, UnsupportedMediaType
from controlplane.services.registry import Registry

ARCHIVE_TYPES = {
    "application/gzip",
    "application/x-gzip",
    "application/x-tar",
    "application/x-compressed-tar",
    "application/zip",
    "application/octet-stream",
}


def _pairs(items: list[str], what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{what} {item!r} is not of the form name=value", code=f"invalid_{what}")
        validate_text(key, what=what)
        validate_text(value, what=what)
        result[key] = value
    return result


def _metadata(labels: list[str], metrics: list[str], api_version: str | None) -> VersionMetadata:
    parsed_metrics: dict[str, float] = {}
    for key, value in _pairs(metrics, "metric").items():
        try:
            number = float(value)
        except ValueError:
            raise InvalidInput(f"metric {key!r} is not a number: {value!r}", code="invalid_metric") from None
        if not math.isfinite(number):
            raise InvalidInput(f"metric {key!r} is not finite", code="invalid_metric")
        parsed_metrics[key] = number
    return VersionMetadata(labels=_pairs(labels, "label"), metrics=parsed_metrics, api_version=api_version)


def models_router(registry: Registry, auth: Authenticator, *, max_upload_bytes: int) -> APIRouter:
    """Routes under /v1/models: list and read models and versions, push a version."""
    router = APIRouter(tags=["registry"])
    Reader = Annotated[str, Depends(auth.require(Permission.READ))]
    Publisher = Annotated[str, Depends(auth.require(Permission.PUSH))]

    @router.get("/v1/models", response_model=list[schemas.ModelOut])
    def list_models(_actor: Reader) -> list[schemas.ModelOut]:
        return [schemas.model_out(m) for m in registry.list_models()]

    @router.get("/v1/models/{model}", response_model=schemas.ModelOut)
    def get_model(model: ModelParam, _actor: Reader) -> schemas.ModelOut:
        return schemas.model_out(registry.get_model(model))

    @router.get("/v1/models/{model}/versions", response_model=list[schemas.VersionSummaryOut])
    def list_versions(model: ModelParam, _actor: Reader) -> list[schemas.VersionSummaryOut]:
        return [schemas.version_summary(v) for v in registry.list_versions(model)]

    @router.get("/v1/models/{model}/versions/{version}", response_model=schemas.VersionOut)
    def get_version(model: ModelParam, version: VersionParam, _actor: Reader) -> schemas.VersionOut:
        return schemas.version_out(registry.get_version(model, version))

    @router.post(
        "/v1/models/{model}/versions",
        response_model=schemas.PushOut,
        status_code=201,
        responses={200: {"description": "identical content was pushed before: the existing version"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "A Triton model folder (config.pbtxt and one version directory) as "
                "tar, tar.gz or zip.",
                "content": {
                    t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(ARCHIVE_TYPES)
                },
            }
        },
    )
    async def push_version(
        model: ModelParam,
        request: Request,
        actor: Publisher,
        label: Annotated[
            list[str], Query(description="name=value, repeatable", max_length=MAX_LIST_ITEMS)
        ] = [],  # noqa: B006
        metric: Annotated[
            list[str], Query(description="name=number, repeatable", max_length=MAX_LIST_ITEMS)
        ] = [],  # noqa: B006
        api_version: Annotated[str | None, Query(max_length=64)] = None,
    ) -> Response:
        if api_version is not None:
            validate_text(api_version, what="api_version")
        metadata = _metadata(label, metric, api_version)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ARCHIVE_TYPES:
            accepted = ", ".join(sorted(ARCHIVE_TYPES))
            raise UnsupportedMediaType(
                f"content type {content_type or 'none'!r} is not an archive; send one of: {accepted}"
            )
        sink = await receive_upload(
            request, registry.uploads_dir, max_bytes=max_upload_bytes, what="the model archive"
        )
        try:
            version, created = await run_in_threadpool(
                registry.push, model=model, archive=sink.path, metadata=metadata, actor=actor
            )
        finally:
            sink.discard()
        body = schemas.PushOut(**schemas.version_out(version).model_dump(), created=created)
        return JSONResponse(body.model_dump(mode="json"), status_code=201 if created else 200)

    return router
