"""FastAPI application: assembles the routers, the error handlers and the request guard.

No business logic here and no routes: each resource has its router module
(``routes_models``, ``routes_deploys``, ``routes_signatures``, ``routes_events``,
``routes_health``, ``rollouts``).
"""

import re
from pathlib import Path

from fastapi import FastAPI

from controlplane.api.auth import Authenticator
from controlplane.api.errors import install_error_handlers
from controlplane.api.guard import ApiLimits, RequestGuard
from controlplane.api.rollouts import rollouts_router
from controlplane.api.routes_deploys import deploys_router
from controlplane.api.routes_events import events_router
from controlplane.api.routes_health import ReadinessCheck, health_router
from controlplane.api.routes_models import models_router
from controlplane.api.routes_signatures import signatures_router
from controlplane.rollout.engine import RolloutEngine
from controlplane.service import ControlPlane

# Routes that stream their own (larger) bodies; every other body is JSON under ApiLimits.max_json_bytes.
UPLOAD_ROUTES = (
    ("POST", re.compile(r"/v1/models/[^/]+/versions")),
    ("PUT", re.compile(r"/v1/models/[^/]+/versions/[^/]+/signature")),
)


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
    app.add_middleware(
        RequestGuard, auth=auth, limits=lambda: app.state.limits, upload_routes=UPLOAD_ROUTES
    )
    # Inclusion order is the order of the OpenAPI paths.
    if engine is not None:
        app.include_router(rollouts_router(engine, auth))
    app.include_router(models_router(cp, auth, max_upload_bytes=max_upload_bytes))
    app.include_router(deploys_router(cp, auth))
    app.include_router(signatures_router(cp, auth))
    app.include_router(events_router(cp, auth))
    app.include_router(
        health_router(cp, auth, readiness=readiness, checked_dir=storage_dir or cp.uploads_dir.parent)
    )
    return app
