"""``controlplane up``: registry, local Triton pool and HAProxy, REST API, in one process tree.

Shutdown order on Ctrl-C or SIGTERM: the API stops accepting requests, the
proxy stops, then each Triton (its leftovers cleaned). A signal during
start-up also tears down whatever had started.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

import uvicorn

from controlplane.api.app import create_app
from controlplane.artifacts.archive import ArchiveLimits
from controlplane.artifacts.blobs import BlobStore
from controlplane.errors import Conflict, ControlPlaneError
from controlplane.registry.db import Database
from controlplane.runtime.local import LocalStack
from controlplane.service import ControlPlane, Pool
from controlplane.settings import Settings
from controlplane.triton.client import TritonClient

log = logging.getLogger("controlplane")


def build_control_plane(settings: Settings, db: Database, stack: LocalStack) -> ControlPlane:
    """The service layer wired to the local stack's pools."""
    pools = {
        name: Pool(name=name, repository=p.repository, triton=TritonClient(p.grpc_url))
        for name, p in stack.pools.items()
    }
    return ControlPlane(
        db=db,
        blobs=BlobStore(settings.artifacts_dir),
        uploads_dir=settings.uploads_dir,
        pools=pools,
        default_pool=settings.pool_name,
        limits=ArchiveLimits(
            max_total_bytes=settings.max_unpacked_bytes,
            max_file_bytes=settings.max_file_bytes,
            max_members=settings.max_archive_members,
        ),
        load_timeout=settings.load_timeout_seconds,
    )


def _reconcile_after_restart(cp: ControlPlane, pool: str, stop: threading.Event) -> None:
    """A restarted Triton starts empty: wait for it, then load what it should serve."""
    while not stop.is_set():
        try:
            cp.pools[pool].triton.wait_server_ready(60)
            for change in cp.reconcile():
                log.info("reconcile: %s", change)
            return
        except Conflict:
            stop.wait(1.0)
        except ControlPlaneError as exc:
            log.warning("reconcile after restart of %s failed: %s; retrying", pool, exc)
            stop.wait(2.0)


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_embedded(settings: Settings) -> None:
    """Run until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Until uvicorn installs its own handlers, SIGTERM must unwind like Ctrl-C so children are stopped.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.effective_database_url)
    if settings.auto_migrate:
        db.upgrade()
    db.check_schema()

    stack = LocalStack(
        settings.state_dir,
        host=settings.host,
        grpc_port=settings.grpc_port,
        http_port=settings.http_port,
        pool_names=(settings.pool_name,),
        ports_base=settings.triton_ports_base,
    )
    stopping = threading.Event()
    try:
        started = time.monotonic()
        stack.start()
        cp = build_control_plane(settings, db, stack)
        for name, pool in stack.pools.items():
            assert pool.process is not None
            pool.process.on_restart = lambda n=name: _reconcile_after_restart(cp, n, stopping)
        for change in cp.reconcile():
            log.info("reconcile: %s", change)
        app = create_app(cp, max_upload_bytes=settings.max_upload_bytes, readiness=stack.readiness)
        server = uvicorn.Server(
            uvicorn.Config(app, host=settings.host, port=settings.api_port, log_level="warning")
        )
        print(f"REST API           http://{settings.host}:{settings.api_port}  (docs: /docs)", flush=True)
        print(f"Triton gRPC proxy  {settings.host}:{settings.grpc_port}", flush=True)
        print(f"Triton HTTP proxy  http://{settings.host}:{settings.http_port}", flush=True)
        print(
            f"state in {settings.state_dir}; started in {time.monotonic() - started:.1f} s; Ctrl-C stops",
            flush=True,
        )
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        stopping.set()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
        db.dispose()
        print("stopped", flush=True)
