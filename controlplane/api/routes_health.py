"""Health endpoints: /healthz (optionally per model), /readyz and /metrics.

They answer without a token; what a caller without a valid token sees is
reduced (no reasons, no per-pool states, checks only as ok/failing).
"""

import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from controlplane.api import schemas
from controlplane.api.auth import ANONYMOUS_CALLER, Authenticator, caller_of
from controlplane.api.errors import error_body
from controlplane.domain.models import validate_model_name
from controlplane.errors import ControlPlaneError, NotFound
from controlplane.metrics import REGISTRY
from controlplane.registry.db import Database
from controlplane.services.health import Health, ModelHealth

ReadinessCheck = Callable[[], Mapping[str, str]]

_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s]*@")


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


def health_router(
    health: Health,
    db: Database,
    auth: Authenticator,
    *,
    readiness: ReadinessCheck | None,
    checked_dir: Path,
) -> APIRouter:
    """/healthz, /readyz and /metrics; ``checked_dir`` is the filesystem whose free space /readyz checks."""
    router = APIRouter(tags=["health"])

    def trusted(request: Request) -> bool:
        """Whether the caller may see details: a valid token, or no authentication configured."""
        return not auth.required or (caller_of(request.scope) or ANONYMOUS_CALLER).role is not None

    @router.get("/healthz", response_model=schemas.HealthOut)
    def healthz(request: Request, model: Annotated[str | None, Query(max_length=256)] = None) -> JSONResponse:
        """Liveness; with ``model=NAME`` (a viewer token unless reads are open): 200 only if that
        model is READY on every pool that serves it."""
        if model is None:
            return JSONResponse(schemas.HealthOut(status="ok").model_dump(exclude_none=True))
        validate_model_name(model)
        detailed = trusted(request)
        answer: ModelHealth | None
        try:
            answer = health.model_health(model)
        except NotFound as exc:
            if detailed:
                return JSONResponse(error_body(exc.code, exc.message), status_code=404)
            # Without a token an unknown model looks exactly like one that does not serve.
            answer = None
        ready = answer is not None and answer.ready
        body = schemas.HealthOut(status="ok" if ready else "unavailable", model=model)
        if detailed and answer is not None:
            body = body.model_copy(update={"reason": answer.reason, "pools": dict(answer.pools)})
        return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503)

    @router.get("/readyz", response_model=schemas.HealthOut)
    def readyz(request: Request) -> JSONResponse:
        """Ready when the database schema is current, the state directory has room, and every pool
        and the proxy answer. Details only for a valid token; others see each check as ok/failing."""
        checks: dict[str, str] = {}
        try:
            db.check_schema()
            checks["database"] = "ok"
        except (ControlPlaneError, SQLAlchemyError) as exc:
            checks["database"] = masked(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        checks["storage"] = _storage_check(checked_dir, request.app.state.limits.min_free_bytes)
        if readiness is not None:
            checks.update({name: masked(value) for name, value in readiness().items()})
        ok = all(v == "ok" for v in checks.values())
        if not trusted(request):
            checks = {name: "ok" if value == "ok" else "failing" for name, value in checks.items()}
        body = schemas.HealthOut(status="ok" if ok else "unavailable", checks=checks)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ok else 503)

    @router.get("/metrics", response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router
