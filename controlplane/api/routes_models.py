"""Registry endpoints: models, their versions, and pushing a new version."""

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from controlplane.api import schemas
from controlplane.api.auth import Authenticator
from controlplane.api.params import ModelParam, VersionParam, receive_upload
from controlplane.domain.auth import Permission
from controlplane.domain.limits import MAX_LIST_ITEMS, validate_text
from controlplane.domain.models import VersionMetadata
from controlplane.domain.version_metadata import MetadataChange
from controlplane.errors import InvalidInput, UnsupportedMediaType
from controlplane.services.admission import compare_with_production
from controlplane.services.registry import Registry
from controlplane.services.version_metadata import change_metadata

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
    # Metrics decide promotions (the metric gate), so changing them after the push is a deployer's act.
    Deployer = Annotated[str, Depends(auth.require(Permission.DEPLOY))]

    def compatibility(model: str, number: int) -> dict[str, Any] | None:
        comparison = compare_with_production(registry.db, model, number)
        return comparison.as_dict() if comparison is not None else None

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
        found = registry.get_version(model, version)
        return schemas.version_out(found, compatibility(model, version))

    @router.patch(
        "/v1/models/{model}/versions/{version}/metadata",
        response_model=schemas.VersionOut,
        responses={422: {"description": "An invalid name or value, or an attempt to change api_version."}},
    )
    def change_version_metadata(
        model: ModelParam, version: VersionParam, body: schemas.MetadataPatchIn, actor: Deployer
    ) -> schemas.VersionOut:
        """Set (a value) or remove (null) metrics and labels of a version; api_version is fixed at push."""
        if "api_version" in body.model_fields_set:
            raise InvalidInput(
                "api_version is fixed at push: it describes the version's interface, which never changes; "
                "push a new version to declare another",
                code="api_version_fixed",
            )
        changed = change_metadata(
            registry.db,
            model=model,
            number=version,
            change=MetadataChange(metrics=body.metrics, labels=body.labels),
            actor=actor,
        )
        return schemas.version_out(changed, compatibility(model, version))

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
        against = await run_in_threadpool(compatibility, version.model, version.number)
        body = schemas.PushOut(**schemas.version_out(version, against).model_dump(), created=created)
        return JSONResponse(body.model_dump(mode="json"), status_code=201 if created else 200)

    return router
