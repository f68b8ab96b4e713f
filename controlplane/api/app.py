"""FastAPI application: assembles the routers, the error handlers and the request guard.

No business logic here and no routes: each resource has its router module
(``routes_models``, ``routes_deploys``, ``routes_signatures``, ``routes_events``,
``routes_health``, ``rollouts``).
"""

import re
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from controlplane.api.auth import Authenticator
from controlplane.api.console import mount_console
from controlplane.api.errors import install_error_handlers
from controlplane.api.guard import ApiLimits, RequestGuard
from controlplane.api.read_shortcut import VersionReadShortcut
from controlplane.api.rollouts import rollouts_router
from controlplane.api.routes_aliases import aliases_router
from controlplane.api.routes_deploys import deploys_router
from controlplane.api.routes_events import events_router
from controlplane.api.routes_golden import golden_router
from controlplane.api.routes_health import ReadinessCheck, health_router
from controlplane.api.routes_models import VersionBodies, models_router
from controlplane.api.routes_pools import pools_router
from controlplane.api.routes_signatures import signatures_router
from controlplane.api.routes_traffic import traffic_router
from controlplane.api.routes_tuning import tuning_router
from controlplane.api.routes_webhooks import webhooks_router
from controlplane.api.routes_whoami import whoami_router
from controlplane.registry.db import Database
from controlplane.rollout.engine import RolloutEngine
from controlplane.services.aliases import Aliases
from controlplane.services.deploys import Deployer
from controlplane.services.golden import GoldenSets
from controlplane.services.health import Health
from controlplane.services.recycle import PoolRecycler
from controlplane.services.registry import Registry
from controlplane.services.signing import Signing
from controlplane.services.traffic_monitor import TrafficMonitor
from controlplane.services.webhooks import Webhooks
from controlplane.tuning.tuner import Tuner

# Routes that stream their own (larger) bodies; every other body is JSON under ApiLimits.max_json_bytes.
UPLOAD_ROUTES = (
    ("POST", re.compile(r"/v1/models/[^/]+/versions")),
    ("PUT", re.compile(r"/v1/models/[^/]+/versions/[^/]+/signature")),
    ("PUT", re.compile(r"/v1/models/[^/]+/versions/[^/]+/golden")),
)


@dataclass(frozen=True)
class ApiServices:
    """What the routes call. Without the engine, deployer, recycler or golden sets the API lacks those routes.

    ``golden`` and ``aliases`` are optional like them: their routes exist only where they are given.
    """

    db: Database
    registry: Registry
    signing: Signing
    health: Health
    engine: RolloutEngine | None = None
    deployer: Deployer | None = None
    recycler: PoolRecycler | None = None
    golden: GoldenSets | None = None
    aliases: Aliases | None = None
    webhooks: Webhooks | None = None
    traffic: TrafficMonitor | None = None
    tuner: Tuner | None = None


class ControlPlaneApi(FastAPI):
    """FastAPI with a layer in front of everything, its own middlewares and telemetry included.

    Middlewares added with ``add_middleware`` run inside Starlette's error
    middleware, itself inside FastAPI's telemetry check; ``front`` runs
    before all of them (``read_shortcut``: the answer of a kept read costs
    less than those layers).
    """

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is None:
            await super().__call__(scope, receive, send)
        else:
            await self.front(scope, receive, send)

    async def behind_front(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The application without ``front``: what ``front`` hands a request on to."""
        await super().__call__(scope, receive, send)


def create_app(
    services: ApiServices,
    *,
    max_upload_bytes: int,
    readiness: ReadinessCheck | None = None,
    auth: Authenticator | None = None,
    limits: ApiLimits | None = None,
    storage_dir: Path | None = None,
) -> FastAPI:
    """Build the API around the services.

    ``storage_dir`` (default: the parent of the uploads folder, the state
    directory) is the filesystem whose free space ``/readyz`` checks.
    """
    app = ControlPlaneApi(
        title="Triton Control Plane",
        version="0.1.0",
        description="Model registry, safe ingest and deploys for NVIDIA Triton Inference Server.",
    )
    install_error_handlers(app)
    auth = auth or Authenticator(services.db)
    app.state.auth = auth
    app.state.limits = limits or ApiLimits()
    version_bodies = VersionBodies(services.registry)
    if isinstance(services.registry, Registry) and services.registry.db is auth.db:
        # One commit mark per request answers for both the caller's token and the kept answer.
        auth.share_commits(services.registry.commits)
    app.front = VersionReadShortcut(app.behind_front, kept=version_bodies, auth=auth)
    app.add_middleware(RequestGuard, auth=auth, limits=lambda: app.state.limits, upload_routes=UPLOAD_ROUTES)
    # Inclusion order is the order of the OpenAPI paths.
    if services.engine is not None:
        app.include_router(rollouts_router(services.engine, auth, services.aliases))
    app.include_router(
        models_router(
            services.registry, auth, max_upload_bytes=max_upload_bytes, version_bodies=version_bodies
        )
    )
    if services.deployer is not None:
        app.include_router(deploys_router(services.deployer, auth))
    if services.recycler is not None:
        app.include_router(pools_router(services.recycler, auth))
    app.include_router(signatures_router(services.signing, auth))
    if services.golden is not None:
        app.include_router(golden_router(services.golden, auth))
    if services.aliases is not None:
        app.include_router(aliases_router(services.aliases, auth))
    app.include_router(events_router(services.registry, auth))
    if services.webhooks is not None:
        app.include_router(webhooks_router(services.webhooks, auth))
    if services.traffic is not None:
        app.include_router(traffic_router(services.traffic, auth))
    if services.tuner is not None:
        app.include_router(tuning_router(services.tuner, auth))
    app.include_router(whoami_router(auth))
    app.include_router(
        health_router(
            services.health,
            services.db,
            auth,
            readiness=readiness,
            checked_dir=storage_dir or services.registry.uploads_dir.parent,
        )
    )
    mount_console(app)
    return app
