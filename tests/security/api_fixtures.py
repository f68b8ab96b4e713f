"""Fixtures of the API hardening tests: the API around a real registry, with no Triton behind it.

``in_process_api`` serves ``create_app`` through a real uvicorn server (the
product's own ``server_config``) on a free loopback port, so server limits,
the request guard and error mapping are exercised exactly as ``controlplane
up`` runs them; routes that need Triton answer 503 (``NoTritonDeployer``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.api.server import server_config
from controlplane.artifacts.archive import ArchiveLimits
from controlplane.artifacts.blobs import BlobStore
from controlplane.domain.auth import Role
from controlplane.domain.models import Deployment
from controlplane.errors import TritonUnavailable
from controlplane.registry import token_store
from controlplane.registry.db import Database
from controlplane.runtime.ports import free_ports
from controlplane.services.health import Health
from controlplane.services.registry import Registry
from controlplane.services.signing import Signing
from controlplane.settings import Settings


class NoTritonDeployer:
    """What deploys meet in an API with no Triton pool behind it: every deploy is unavailable."""

    def deploy(
        self,
        model: str,
        number: int,
        *,
        pool: str | None = None,
        actor: str = "",
        allow_breaking: bool = False,
    ) -> Deployment:
        raise TritonUnavailable(f"this API serves no Triton pool; {model} version {number} cannot deploy")


@dataclass
class ApiServer:
    """A running API: its URL, app, database and an admin and a viewer token."""

    url: str
    app: FastAPI
    db: Database
    settings: Settings
    admin: str
    viewer: str

    def client(self, token: str | None = None, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def make_token(db: Database, name: str, role: Role) -> str:
    with db.transaction() as session:
        secret, _info = token_store.create_token(session, name=name, role=role, created_by="tests")
    return secret


@contextlib.contextmanager
def serve_api(state_dir: Path, **overrides: object) -> Iterator[ApiServer]:
    """The API on a SQLite registry in ``state_dir``, served by uvicorn in a thread until the block ends."""
    (port,) = free_ports(1)
    settings = Settings(state_dir=state_dir, api_port=port, **overrides)  # type: ignore[arg-type]
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.effective_database_url)
    db.upgrade()
    blobs = BlobStore(settings.artifacts_dir)
    signing = Signing(db=db, blobs=blobs, uploads_dir=settings.uploads_dir)
    services = ApiServices(
        db=db,
        registry=Registry(
            db=db, blobs=blobs, uploads_dir=settings.uploads_dir, signing=signing, limits=ArchiveLimits()
        ),
        signing=signing,
        health=Health(db=db, pools={}),
        deployer=NoTritonDeployer(),  # type: ignore[arg-type]
    )
    auth = Authenticator(db, required=settings.auth_required, open_reads=settings.open_reads)
    app = create_app(services, max_upload_bytes=settings.max_upload_bytes, auth=auth)
    server = uvicorn.Server(server_config(app, settings))
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    try:
        yield ApiServer(
            url=f"http://127.0.0.1:{port}",
            app=app,
            db=db,
            settings=settings,
            admin=make_token(db, "admin", Role.ADMIN),
            viewer=make_token(db, "viewer", Role.VIEWER),
        )
    finally:
        server.should_exit = True
        thread.join(10)
        db.dispose()
