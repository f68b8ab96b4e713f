"""FastAPI application: registry, deploys, health and metrics. No business logic here."""

import math
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from controlplane.api import schemas
from controlplane.api.auth import ANONYMOUS_CALLER, Authenticator, caller_of
from controlplane.api.errors import error_body, install_error_handlers
from controlplane.api.guard import ApiLimits, RequestGuard
from controlplane.api.rollouts import rollouts_router
from controlplane.artifacts.ingest import UploadSink
from controlplane.artifacts.signatures import MAX_SIGNATURE_BYTES
from controlplane.domain.auth import Permission
from controlplane.domain.limits import MAX_ID, MAX_LIST_ITEMS, validate_text
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

# Routes that stream their own (larger) bodies; every other body is JSON under ApiLimits.max_json_bytes.
UPLOAD_ROUTES = (
    ("POST", re.compile(r"/v1/models/[^/]+/versions")),
    ("PUT", re.compile(r"/v1/models/[^/]+/versions/[^/]+/signature")),
)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s]*@")


def _valid_model(model: Annotated[str, PathParam(max_length=256)]) -> str:
    """Every route checks the model name before anything reaches the registry (422 otherwise)."""
    return validate_model_name(model)


ModelParam = Annotated[str, Depends(_valid_model)]
VersionParam = Annotated[int, PathParam(ge=1, le=MAX_ID)]


def masked(text: str) -> str:
    """``text`` with any password in a URL replaced by ***."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def _storage_check(directory: Path, min_free: int) -> str:
    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        return f"cannot read the free space of {directory}: {exc.strerror}"
    if free < min_free:
        return f"{free} bytes free under {directory}, below the minimum of {min_free}"
    return "ok"


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
    limits: ApiLimits | None = None,
    storage_dir: Path | None = None,
) -> FastAPI:
    """Build the API around a ControlPlane.

    ``storage_dir`` (default: the parent of the uploads folder, the state
    directory) is the filesystem whose free space ``/readyz`` checks.
    """
    app = FastAPI(
        title="Triton Control Plane",
        version="0.1.0",
        description="Model registry, safe ingest and deploys for NVIDIA Triton Inference Server.",
    )
    install_error_handlers(app)
    auth = auth or Authenticator(cp.db)
    app.state.auth = auth
    app.state.limits = limits or ApiLimits()
    checked_dir = storage_dir or cp.uploads_dir.parent
    app.add_middleware(
        RequestGuard, auth=auth, limits=lambda: app.state.limits, upload_routes=UPLOAD_ROUTES
    )

    def trusted(request: Request) -> bool:
        """Whether the caller may see details: a valid token, or no authentication configured."""
        return not auth.required or (caller_of(request.scope) or ANONYMOUS_CALLER).role is not None
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
    def get_model(model: ModelParam, _actor: Reader) -> schemas.ModelOut:
        return schemas.model_out(cp.get_model(model))

    @app.get("/v1/models/{model}/versions", response_model=list[schemas.VersionSummaryOut], tags=["registry"])
    def list_versions(model: ModelParam, _actor: Reader) -> list[schemas.VersionSummaryOut]:
        return [schemas.version_summary(v) for v in cp.list_versions(model)]

    @app.get("/v1/models/{model}/versions/{version}", response_model=schemas.VersionOut, tags=["registry"])
    def get_version(model: ModelParam, version: VersionParam, _actor: Reader) -> schemas.VersionOut:
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
    def deploy(
        model: ModelParam,
        version: VersionParam,
        actor: Deployer,
        pool: Annotated[str | None, Query(max_length=64)] = None,
    ) -> schemas.DeploymentOut:
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
    async def attach_signature(
        model: ModelParam, version: VersionParam, request: Request, actor: Publisher
    ) -> JSONResponse:
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
    def get_signature(model: ModelParam, version: VersionParam, _actor: Reader) -> schemas.SigningOut:
        record = cp.signature_of(model, version)
        if record is None:
            raise NotFound(f"{model} version {version} has no signature", code="signature_not_found")
        return schemas.signing_out(record)

    @app.get("/v1/models/{model}/policy", response_model=schemas.PolicyOut, tags=["signatures"])
    def get_policy(model: ModelParam, _actor: Reader) -> schemas.PolicyOut:
        own, effective = cp.policy_of(model)
        return schemas.policy_out(own, effective)

    @app.put("/v1/models/{model}/policy", response_model=schemas.PolicyOut, tags=["signatures"])
    def set_policy(model: ModelParam, body: schemas.PolicyIn, actor: Admin) -> schemas.PolicyOut:
        """Set the model's policy (signatures, code backends); null fields follow the global policy."""
        cp.set_policy(
            model,
            ModelPolicy(
                require_signature=body.require_signature,
                allowed_signers=tuple(body.allowed_signers) if body.allowed_signers is not None else None,
                allow_code_backends=body.allow_code_backends,
                code_backends_require_signature=body.code_backends_require_signature,
            ),
            actor=actor,
        )
        own, effective = cp.policy_of(model)
        return schemas.policy_out(own, effective)

    @app.get("/v1/events", response_model=list[schemas.EventOut], tags=["audit"])
    def events(
        _actor: Reader,
        after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[schemas.EventOut]:
        return [schemas.event_out(e) for e in cp.events(after_id=after, limit=limit)]

    @app.get("/healthz", response_model=schemas.HealthOut, tags=["health"])
    def healthz(
        request: Request, model: Annotated[str | None, Query(max_length=256)] = None
    ) -> JSONResponse:
        """Liveness; with ``model=NAME`` (a viewer token unless reads are open): 200 only if that
        model is READY on every pool that serves it."""
        if model is None:
            return JSONResponse(schemas.HealthOut(status="ok").model_dump(exclude_none=True))
        validate_model_name(model)
        detailed = trusted(request)
        try:
            health = cp.model_health(model)
        except NotFound as exc:
            if detailed:
                return JSONResponse(error_body(exc.code, exc.message), status_code=404)
            # Without a token an unknown model looks exactly like one that does not serve.
            health = None
        ready = health is not None and health.ready
        body = schemas.HealthOut(status="ok" if ready else "unavailable", model=model)
        if detailed and health is not None:
            body = body.model_copy(update={"reason": health.reason, "pools": dict(health.pools)})
        return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503)

    @app.get("/readyz", response_model=schemas.HealthOut, tags=["health"])
    def readyz(request: Request) -> JSONResponse:
        """Ready when the database schema is current, the state directory has room, and every pool
        and the proxy answer. Details only for a valid token; others see each check as ok/failing."""
        checks: dict[str, str] = {}
        try:
            cp.db.check_schema()
            checks["database"] = "ok"
        except (ControlPlaneError, SQLAlchemyError) as exc:
            checks["database"] = masked(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        checks["storage"] = _storage_check(checked_dir, app.state.limits.min_free_bytes)
        if readiness is not None:
            checks.update({name: masked(value) for name, value in readiness().items()})
        ok = all(v == "ok" for v in checks.values())
        if not trusted(request):
            checks = {name: "ok" if value == "ok" else "failing" for name, value in checks.items()}
        body = schemas.HealthOut(status="ok" if ok else "unavailable", checks=checks)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app
