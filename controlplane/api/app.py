"""FastAPI application: registry, deploys, health and metrics. No business logic here."""

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from controlplane.api import schemas
from controlplane.api.auth import Authenticator
from controlplane.api.errors import error_body, install_error_handlers
from controlplane.api.rollouts import rollouts_router
from controlplane.artifacts.ingest import UploadSink
from controlplane.artifacts.signatures import MAX_SIGNATURE_BYTES
from controlplane.domain.auth import Permission
from controlplane.domain.models import VersionMetadata, validate_model_name
from controlplane.domain.policy import ModelPolicy
from controlplane.errors import (
    ControlPlaneError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from controlplane.metrics import REGISTRY
from controlplane.rollout.engine import RolloutEngine
from controlplane.service import ControlPlane

ARCHIVE_TYPES = {
    "application/gzip",
    "application/x-gzip",
    "application/x-tar",
    "application/x-compressed-tar",
    "application/zip",
    "application/octet-stream",
}

ReadinessCheck = Callable[[], Mapping[str, str]]


def _pairs(items: list[str], what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{what} {item!r} is not of the form name=value", code=f"invalid_{what}")
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


async def _receive(request: Request, directory: Path, *, max_bytes: int, what: str) -> UploadSink:
    """Stream the request body to a file (never whole in memory); 413 past ``max_bytes``, 422 if empty."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"upload of {declared} bytes is over the limit of {max_bytes}")
    sink = UploadSink(directory, max_bytes=max_bytes)
    try:
        async for chunk in request.stream():
            sink.write(chunk)
        sink.close()
        if sink.size == 0:
            raise InvalidInput(f"the request body is empty; send {what}", code="empty_upload")
    except BaseException:
        sink.discard()
        raise
    return sink


def create_app(
    cp: ControlPlane,
    *,
    max_upload_bytes: int,
    readiness: ReadinessCheck | None = None,
    engine: RolloutEngine | None = None,
    auth: Authenticator | None = None,
) -> FastAPI:
    """Build the API around a ControlPlane."""
    app = FastAPI(
        title="Triton Control Plane",
        version="0.1.0",
        description="Model registry, safe ingest and deploys for NVIDIA Triton Inference Server.",
    )
    install_error_handlers(app)
    auth = auth or Authenticator(cp.db)
    Reader = Annotated[str, Depends(auth.require(Permission.READ))]
    Publisher = Annotated[str, Depends(auth.require(Permission.PUSH))]
    Deployer = Annotated[str, Depends(auth.require(Permission.DEPLOY))]
    Admin = Annotated[str, Depends(auth.require(Permission.ADMIN))]
    if engine is not None:
        app.include_router(rollouts_router(engine, auth))

    @app.get("/v1/models", response_model=list[schemas.ModelOut], tags=["registry"])
    def list_models(_actor: Reader) -> list[schemas.ModelOut]:
        return [schemas.model_out(m) for m in cp.list_models()]

    @app.get("/v1/models/{model}", response_model=schemas.ModelOut, tags=["registry"])
    def get_model(model: str, _actor: Reader) -> schemas.ModelOut:
        return schemas.model_out(cp.get_model(model))

    @app.get("/v1/models/{model}/versions", response_model=list[schemas.VersionSummaryOut], tags=["registry"])
    def list_versions(model: str, _actor: Reader) -> list[schemas.VersionSummaryOut]:
        return [schemas.version_summary(v) for v in cp.list_versions(model)]

    @app.get("/v1/models/{model}/versions/{version}", response_model=schemas.VersionOut, tags=["registry"])
    def get_version(model: str, version: int, _actor: Reader) -> schemas.VersionOut:
        return schemas.version_out(cp.get_version(model, version))

    @app.post(
        "/v1/models/{model}/versions",
        response_model=schemas.PushOut,
        status_code=201,
        tags=["registry"],
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
        model: str,
        request: Request,
        actor: Publisher,
        label: Annotated[list[str], Query(description="name=value, repeatable")] = [],  # noqa: B006
        metric: Annotated[list[str], Query(description="name=number, repeatable")] = [],  # noqa: B006
        api_version: Annotated[str | None, Query(max_length=64)] = None,
    ) -> Response:
        validate_model_name(model)
        metadata = _metadata(label, metric, api_version)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ARCHIVE_TYPES:
            accepted = ", ".join(sorted(ARCHIVE_TYPES))
            raise UnsupportedMediaType(
                f"content type {content_type or 'none'!r} is not an archive; send one of: {accepted}"
            )
        sink = await _receive(request, cp.uploads_dir, max_bytes=max_upload_bytes, what="the model archive")
        try:
            version, created = await run_in_threadpool(
                cp.push, model=model, archive=sink.path, metadata=metadata, actor=actor
            )
        finally:
            sink.discard()
        body = schemas.PushOut(**schemas.version_out(version).model_dump(), created=created)
        return JSONResponse(body.model_dump(mode="json"), status_code=201 if created else 200)

    @app.post(
        "/v1/models/{model}/versions/{version}/deploy", response_model=schemas.DeploymentOut, tags=["deploy"]
    )
    def deploy(model: str, version: int, actor: Deployer, pool: str | None = None) -> schemas.DeploymentOut:
        return schemas.deployment_out(cp.deploy(model, version, pool=pool, actor=actor))

    @app.put(
        "/v1/models/{model}/versions/{version}/signature",
        response_model=schemas.SigningOut,
        tags=["signatures"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "An OpenSSF model-signing bundle (Sigstore JSON) over the pushed folder.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
    async def attach_signature(model: str, version: int, request: Request, actor: Publisher) -> JSONResponse:
        """Verify a signature of the version's files and record it (with the signer's identity)."""
        sink = await _receive(
            request, cp.uploads_dir, max_bytes=MAX_SIGNATURE_BYTES, what="the signature bundle"
        )
        try:
            record = await run_in_threadpool(
                cp.attach_signature, model, version, bundle=sink.path, actor=actor
            )
        finally:
            sink.discard()
        return JSONResponse(schemas.signing_out(record).model_dump(mode="json"))

    @app.get(
        "/v1/models/{model}/versions/{version}/signature",
        response_model=schemas.SigningOut,
        tags=["signatures"],
    )
    def get_signature(model: str, version: int, _actor: Reader) -> schemas.SigningOut:
        record = cp.signature_of(model, version)
        if record is None:
            raise NotFound(f"{model} version {version} has no signature", code="signature_not_found")
        return schemas.signing_out(record)

    @app.get("/v1/models/{model}/policy", response_model=schemas.PolicyOut, tags=["signatures"])
    def get_policy(model: str, _actor: Reader) -> schemas.PolicyOut:
        own, effective = cp.policy_of(model)
        return schemas.policy_out(own, effective)

    @app.put("/v1/models/{model}/policy", response_model=schemas.PolicyOut, tags=["signatures"])
    def set_policy(model: str, body: schemas.PolicyIn, actor: Admin) -> schemas.PolicyOut:
        """Set the model's signature policy; null fields follow the global policy."""
        cp.set_policy(
            model,
            ModelPolicy(
                require_signature=body.require_signature,
                allowed_signers=tuple(body.allowed_signers) if body.allowed_signers is not None else None,
            ),
            actor=actor,
        )
        own, effective = cp.policy_of(model)
        return schemas.policy_out(own, effective)

    @app.get("/v1/events", response_model=list[schemas.EventOut], tags=["audit"])
    def events(
        _actor: Reader,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[schemas.EventOut]:
        return [schemas.event_out(e) for e in cp.events(after_id=after, limit=limit)]

    @app.get("/healthz", response_model=schemas.HealthOut, tags=["health"])
    def healthz(model: str | None = None) -> JSONResponse:
        """Liveness; with ``model=NAME``: 200 only if that model is READY on every pool that serves it."""
        if model is None:
            return JSONResponse(schemas.HealthOut(status="ok").model_dump(exclude_none=True))
        try:
            health = cp.model_health(model)
        except NotFound as exc:
            return JSONResponse(error_body(exc.code, exc.message), status_code=404)
        body = schemas.HealthOut(
            status="ok" if health.ready else "unavailable",
            model=model,
            reason=health.reason,
            pools=dict(health.pools),
        )
        return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if health.ready else 503)

    @app.get("/readyz", response_model=schemas.HealthOut, tags=["health"])
    def readyz() -> JSONResponse:
        """Ready when the database schema is current and every pool and the proxy answer."""
        checks: dict[str, str] = {}
        try:
            cp.db.check_schema()
            checks["database"] = "ok"
        except (ControlPlaneError, SQLAlchemyError) as exc:
            checks["database"] = str(exc).splitlines()[0]
        if readiness is not None:
            checks.update(readiness())
        ok = all(v == "ok" for v in checks.values())
        body = schemas.HealthOut(status="ok" if ok else "unavailable", checks=checks)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app
