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
from pathlib import Path
from types import FrameType

import uvicorn

from controlplane.api.app import create_app
from controlplane.api.auth import Authenticator
from controlplane.api.server import freeze_startup_heap, server_config
from controlplane.collector import collect_garbage, run_periodically, sweep_stale_uploads
from controlplane.domain.gitops import WatchLimits
from controlplane.errors import ControlPlaneError
from controlplane.logs import configure_logging
from controlplane.registry import token_store
from controlplane.registry.db import Database
from controlplane.runtime.wiring import Services, api_services, local_services
from controlplane.services.repair import PoolRepair
from controlplane.settings import Settings

log = logging.getLogger("controlplane")


def _reconcile_after_restart(repair: PoolRepair, pool: str, stop: threading.Event) -> None:
    """A restarted Triton starts empty: wait for it, then load what it should serve.

    Runs in the supervisor's thread, so nothing may escape it: every failure
    is logged and retried (the reconciler's periodic pass is the backstop).
    """
    while not stop.is_set():
        try:
            repair.pools[pool].triton.wait_server_ready(60)
            for change in repair.reconcile(only=pool, block=True):
                log.info("reconcile: %s", change)
            return
        except ControlPlaneError as exc:
            log.warning("reconcile after restart of %s failed: %s; retrying", pool, exc)
        except Exception:
            log.exception("reconcile after restart of %s failed unexpectedly; retrying", pool)
        stop.wait(2.0)


def _any_token(db: Database) -> bool:
    with db.transaction() as session:
        return any(t.active for t in token_store.list_tokens(session))


def _start_watcher(
    watch_path: Path, settings: Settings, services: Services, stop: threading.Event
) -> threading.Thread:
    """Follow CONTROLPLANE_WATCH_PATH with this process's registry and engine, until ``stop``."""
    # Imported here so that a control plane watching nothing never loads the git and YAML readers.
    from controlplane.gitops.transports import InProcessTransport
    from controlplane.gitops.watcher import Watcher, open_source

    source = open_source(
        watch_path,
        git=settings.watch_git,
        branch=settings.watch_branch or None,
        limits=WatchLimits(max_file_bytes=settings.max_file_bytes, max_files=settings.max_archive_members),
    )
    # Staged folders and archives go where uploads do: on the state directory's disk, not a small /tmp.
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    watcher = Watcher(
        source, InProcessTransport(services.registry, services.engine), work_dir=settings.uploads_dir
    )
    thread = threading.Thread(
        target=watcher.run,
        args=(stop,),
        kwargs={"interval": settings.watch_interval_seconds},
        name="watcher",
        daemon=True,
    )
    thread.start()
    return thread


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_embedded(settings: Settings) -> None:
    """Run until interrupted."""
    # Upload leftovers older than this are from an earlier process (killed mid-push).
    process_started = time.time()
    configure_logging(settings.log_format, settings.log_level)
    # Until uvicorn installs its own handlers, SIGTERM must unwind like Ctrl-C so children are stopped.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    stopping = threading.Event()
    watching: list[threading.Thread] = []

    def before_stop() -> None:
        stopping.set()
        # A second Ctrl-C must not cut the teardown short and leave Triton or HAProxy behind.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # A push the watcher is in the middle of ends before the registry closes under it.
        for thread in watching:
            thread.join(timeout=30)

    started = time.monotonic()
    try:
        with local_services(settings, before_stop=before_stop) as (stack, services):
            db = services.db
            weights = services.initial_weights
            for name, pool in stack.pools.items():
                if pool.process is None:
                    # Not ours to restart (external runtime): a restarted Triton reloads its repository.
                    continue
                pool.process.on_restart = lambda n=name: _reconcile_after_restart(
                    services.repair, n, stopping
                )
            try:
                for change in services.reconciler.run_once():
                    log.info("reconcile: %s", change)
            except ControlPlaneError as exc:
                # Tritons started beside us (compose) may still be starting: the reconciler loop retries.
                log.warning("first reconcile pass: %s; the reconciler retries", exc.message)
            threading.Thread(
                target=services.reconciler.run_forever, args=(stopping,), name="reconciler", daemon=True
            ).start()
            services.webhook_delivery.start(stopping)
            sweep_stale_uploads(settings.uploads_dir, started_at=process_started)
            run_periodically(
                lambda: collect_garbage(
                    db,
                    services.blobs,
                    linked_roots=(settings.pools_dir, settings.uploads_dir),
                    grace_seconds=settings.gc_grace_seconds,
                ),
                interval=settings.gc_interval_seconds,
                stop=stopping,
            )
            if settings.watch_path is not None:
                watching.append(_start_watcher(settings.watch_path, settings, services, stopping))
            app = create_app(
                api_services(services),
                max_upload_bytes=settings.max_upload_bytes,
                readiness=stack.readiness,
                auth=Authenticator(db, required=settings.auth_required, open_reads=settings.open_reads),
            )
            server = uvicorn.Server(server_config(app, settings))
            print(f"REST API           http://{settings.host}:{settings.api_port}  (docs: /docs)", flush=True)
            print(f"web console        http://{settings.host}:{settings.api_port}/ui/", flush=True)
            print(f"Triton gRPC proxy  {settings.host}:{settings.grpc_port}", flush=True)
            print(f"Triton HTTP proxy  http://{settings.host}:{settings.http_port}", flush=True)
            print(f"pools              {', '.join(f'{p}={w}' for p, w in weights.items())}", flush=True)
            if settings.auth_required and not _any_token(db):
                print(
                    "no API token yet: create the first one with "
                    f"`controlplane token create admin --role admin --state-dir {settings.state_dir}`",
                    flush=True,
                )
            print(
                f"state in {settings.state_dir}; started in {time.monotonic() - started:.1f} s; Ctrl-C stops",
                flush=True,
            )
            freeze_startup_heap()
            server.run()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopped", flush=True)
