"""Registry API benchmark: the version GET and the version list under ``wrk``, per history length.

    python bench/registry_api.py [--versions 10,1000,10000] [--connections 16,64]
                                 [--seconds 10] [--warmup 2] [--rounds 2] [--no-rollout]
    python bench/registry_api.py --in-process 20000 [--versions 10,10000]

For each history length N it builds a registry (SQLite, in a temporary state
directory) holding one model ``mlp`` of N versions: version 1 is the example
model pushed through ``Registry.push``, versions 2..N are registered in one
transaction through the store (``store.register_version`` with version 1's
manifest, signature and source directory, a digest of their own, metadata,
and the ``push`` audit event a push writes), so their rows are those of pushed
versions without archiving N folders. Version 1 serves production on the live
pool, so the answer for version N carries its compatibility with it.

The API is the product's: ``create_app`` with the ``Authenticator`` that
``controlplane up`` builds, served by uvicorn with ``server_config`` (the
guarded h11 protocol, the request guard, the same limits) in a process of
its own; ``wrk`` sends a viewer token as ``Authorization: Bearer``. The
baseline runs in the same run on the same uvicorn configuration: a bare
Starlette route answering the very bytes of each route (the floor of server
and framework), and the API's cheapest authenticated route (``/v1/whoami``).

Nothing else writes to the registry while a route is measured, so the API
may answer from what it keeps until the next commit; ``GET version +writes``
measures the version GET again while this process commits an audit event
every 5 ms, as a busy control plane would, so that reads go to the database.

Then (unless ``--no-rollout``) the API and the control loop share a process
as in ``controlplane up``: the stack (two real tritonservers, HAProxy), the
rollout engine and the API served by uvicorn in a thread, with versions 1 and
2 of the example model. Canary rollouts (steps 10, 50, 100 %, 3 s each) move
production back and forth, each with the API idle, with ``wrk`` on the
version GET (c=16), and with the same ``wrk`` load on a bare server in
another process (the baseline: what the machine's share alone costs a
rollout), alternating the order; printed: each step's duration, start to
success, and what the load got meanwhile.

``--in-process CALLS`` measures instead, without sockets or wrk, what one
version GET costs in this process: raw ASGI calls to the API's app (built
as for ``serve_api``) and to the bare route with its bytes, the best of five
averages over CALLS calls each.

Each measurement: ``--warmup`` seconds of load not counted, then
``--seconds`` measured, at each of ``--connections`` (2 wrk threads), for
``--rounds`` rounds; then the server may finish what wrk left behind before
the next one. Printed per N: req/s, p50 and p99 latency, errors (socket
errors, timeouts and non-2xx answers) and bytes per call, the API's req/s as
a ratio of the bare route's, and a summary against the goal. ``wrk`` is the
Debian package of that name; run as root with apt-get at hand, this installs
it when missing.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp

    from controlplane.settings import Settings

REPO = Path(__file__).resolve().parents[1]
MODEL = "mlp"
GOAL_RPS = 2500
GOAL_P99_MS = 20.0
LIST_QUERY = "order=desc&limit=100"
# The version GET again while another process commits this often (a busy control plane's writes).
COMMIT_EVERY = 0.005
WRITING = "GET version +writes"
ROLLOUT_STEPS = (10, 50, 100)
ROLLOUT_STEP_SECONDS = 3.0  # what the web console asks for: the newest page
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


# -- the registry -------------------------------------------------------------------------------


def build_registry(state_dir: Path, versions: int) -> str:
    """A registry of one model with ``versions`` versions, version 1 serving; returns a viewer token."""
    from controlplane.artifacts.archive import ArchiveLimits, pack_directory
    from controlplane.artifacts.blobs import BlobStore
    from controlplane.domain.auth import Role
    from controlplane.domain.models import ModelName, VersionMetadata
    from controlplane.domain.versions import VersionEvent
    from controlplane.registry import rollout_store, store, token_store
    from controlplane.registry.db import Database
    from controlplane.services.registry import Registry
    from controlplane.services.signing import Signing
    from controlplane.settings import Settings

    settings = Settings(state_dir=state_dir)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.effective_database_url)
    try:
        db.upgrade()
        blobs = BlobStore(settings.artifacts_dir)
        registry = Registry(
            db=db,
            blobs=blobs,
            uploads_dir=settings.uploads_dir,
            signing=Signing(db=db, blobs=blobs, uploads_dir=settings.uploads_dir),
            limits=ArchiveLimits(),
        )
        archive = pack_directory(REPO / "model_repository" / MODEL, state_dir / "mlp.tar.gz")
        first, _created = registry.push(
            model=MODEL, archive=archive, metadata=VersionMetadata(labels={"source": "bench"}), actor="bench"
        )
        with db.transaction() as session:
            for n in range(2, versions + 1):
                version, _created = store.register_version(
                    session,
                    model=ModelName(MODEL),
                    digest=hashlib.sha256(f"{first.digest}/{n}".encode()).hexdigest(),
                    manifest=first.manifest,
                    source_version_dir=first.source_version_dir,
                    signature=first.signature,
                    metadata=VersionMetadata(
                        labels={"source": "bench", "build": str(n)},
                        metrics={"accuracy": 0.9 + n / (versions * 100)},
                        api_version="1",
                    ),
                )
                store.append_event(
                    session,
                    actor="bench",
                    action="push",
                    target=f"{MODEL}/{version.number}",
                    outcome="created",
                    details={"digest": version.digest, "files": len(version.manifest)},
                )
            rollout_store.ensure_pools(session, ("blue", "green"))
            rollout_store.set_pool_release(session, "blue", {MODEL: first.number})
            store.change_version_state(session, model=MODEL, number=first.number, event=VersionEvent.SERVED)
            secret, _info = token_store.create_token(
                session, name="bench", role=Role.VIEWER, created_by="bench"
            )
        return secret
    finally:
        db.dispose()


# -- the servers (each in a process of its own) ------------------------------------------------


def api_app(state_dir: str, port: int) -> tuple[FastAPI, Settings]:
    """The product's API on the registry in ``state_dir`` as ``controlplane up`` builds it; its settings."""
    from controlplane.api.app import ApiServices, create_app
    from controlplane.api.auth import Authenticator
    from controlplane.artifacts.archive import ArchiveLimits
    from controlplane.artifacts.blobs import BlobStore
    from controlplane.registry.db import Database
    from controlplane.services.health import Health
    from controlplane.services.registry import Registry
    from controlplane.services.signing import Signing
    from controlplane.settings import Settings

    settings = Settings(state_dir=Path(state_dir), api_port=port)
    db = Database(settings.effective_database_url)
    db.check_schema()
    blobs = BlobStore(settings.artifacts_dir)
    signing = Signing(db=db, blobs=blobs, uploads_dir=settings.uploads_dir)
    services = ApiServices(
        db=db,
        registry=Registry(
            db=db, blobs=blobs, uploads_dir=settings.uploads_dir, signing=signing, limits=ArchiveLimits()
        ),
        signing=signing,
        health=Health(db=db, pools={}),
    )
    app = create_app(
        services,
        max_upload_bytes=settings.max_upload_bytes,
        auth=Authenticator(db, required=settings.auth_required, open_reads=settings.open_reads),
    )
    return app, settings


def serve_api(state_dir: str, port: int) -> None:
    """The product's API on the registry in ``state_dir``, as ``controlplane up`` serves it."""
    import uvicorn

    from controlplane.api.server import freeze_startup_heap, server_config

    app, settings = api_app(state_dir, port)
    server = uvicorn.Server(server_config(app, settings))
    freeze_startup_heap()
    server.run()


def serve_bare(port: int, bodies: dict[str, bytes]) -> None:
    """A Starlette app answering ``bodies`` (path -> bytes) on the API's uvicorn configuration."""
    import uvicorn

    from controlplane.api.server import protocol_class
    from controlplane.settings import Settings

    settings = Settings(api_port=port)
    config = uvicorn.Config(
        bare_app(bodies),
        host=settings.host,
        port=port,
        log_level="warning",
        log_config=None,
        http=protocol_class(settings.header_timeout_seconds),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keep_alive_seconds,
    )
    uvicorn.Server(config).run()


def bare_app(bodies: dict[str, bytes]) -> ASGIApp:
    """A Starlette app answering ``bodies`` (path -> bytes): the floor of framework costs."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def route(body: bytes):  # type: ignore[no-untyped-def]
        async def answer(_request: Request) -> Response:
            return Response(body, media_type="application/json")

        return answer

    return Starlette(routes=[Route(path, route(body)) for path, body in bodies.items()])


def start(target, *args: object) -> mp.process.BaseProcess:  # type: ignore[no-untyped-def]
    process = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    process.start()
    return process


def wait_ready(url: str, headers: dict[str, str], process: mp.process.BaseProcess | None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process is not None and not process.is_alive():
            raise RuntimeError(f"the server for {url} exited with {process.exitcode}")
        try:
            if httpx.get(url, headers=headers, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within 60 s")


def stop(process: mp.process.BaseProcess) -> None:
    process.terminate()
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join()


# -- wrk ---------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """The path of ``wrk``; installs Debian's package when missing and possible."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "wrk"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
            subprocess.run(install, env=env, check=True, capture_output=True)
        found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is not installed: apt-get install wrk (Debian), or put it on PATH")
    return found


@dataclass(frozen=True)
class Load:
    """One wrk run's figures."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    bytes_per_call: float
    requests: int


def wrk_command(wrk: str, script: Path, url: str, *, token: str, connections: int, seconds: int) -> list[str]:
    return [
        wrk,
        "-t",
        "2",
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        "-H",
        f"Authorization: Bearer {token}",
        url,
    ]


def run_wrk(wrk: str, script: Path, url: str, *, token: str, connections: int, seconds: int) -> Load:
    command = wrk_command(wrk, script, url, token=token, connections=connections, seconds=seconds)
    return parse_wrk(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def parse_wrk(out: str) -> Load:
    """The figures the report script (``WRK_REPORT``) printed as its last line."""
    r = json.loads(out.strip().splitlines()[-1])
    calls = max(r["requests"], 1)
    return Load(
        rps=r["requests"] / (r["duration_us"] / 1e6),
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        errors=r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"],
        bytes_per_call=r["bytes"] / calls,
        requests=r["requests"],
    )


def measure(
    wrk: str, script: Path, url: str, *, token: str, connections: int, args: argparse.Namespace
) -> Load:
    """Warm-up, then the measured run, then wait until the server has worked off what wrk left behind."""
    alone = answer_seconds(url, token)
    if args.warmup > 0:
        run_wrk(wrk, script, url, token=token, connections=connections, seconds=args.warmup)
    load = run_wrk(wrk, script, url, token=token, connections=connections, seconds=args.seconds)
    settle(url, token, within=max(1.0, 3 * alone))
    return load


def answer_seconds(url: str, token: str) -> float:
    """How long one request to ``url`` takes (the best of three), the server otherwise idle."""
    times = []
    for _ in range(3):
        started = time.monotonic()
        httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=300)
        times.append(time.monotonic() - started)
    return min(times)


def settle(url: str, token: str, *, within: float = 1.0, limit: float = 300.0) -> None:
    """Wait until one GET of ``url`` is answered within ``within`` seconds again (at most ``limit``)."""
    headers = {"Authorization": f"Bearer {token}"}
    settle_with(
        lambda timeout: httpx.get(url, headers=headers, timeout=timeout), url, within=within, limit=limit
    )


def settle_with(
    request: Callable[[float], object], what: str, *, within: float = 1.0, limit: float = 300.0
) -> None:
    """Wait until ``request(timeout)`` returns within ``within`` seconds again (at most ``limit``).

    A server that fell behind still works on the requests of connections wrk
    closed; the next measurement must not pay for them.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            request(limit)
        except httpx.TransportError:
            time.sleep(within)
            continue
        if time.monotonic() - started < within:
            return
    print(f"  (the server still answered {what} slowly after {limit:.0f} s)", flush=True)


# -- the run -----------------------------------------------------------------------------------


def bench_history(wrk: str, script: Path, versions: int, args: argparse.Namespace) -> dict[str, list[Load]]:
    """Every route at every concurrency, ``args.rounds`` times, for a model of ``versions`` versions."""
    from controlplane.runtime.ports import free_ports

    results: dict[str, list[Load]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-registry-api-") as tmp:
        started = time.perf_counter()
        token = build_registry(Path(tmp), versions)
        built = time.perf_counter() - started
        api_port, bare_port = free_ports(2)
        api = f"http://127.0.0.1:{api_port}"
        routes = {
            "version": f"/v1/models/{MODEL}/versions/{versions}",
            "list": f"/v1/models/{MODEL}/versions?{LIST_QUERY}",
            "whoami": "/v1/whoami",
        }
        headers = {"Authorization": f"Bearer {token}"}
        api_process = start(serve_api, tmp, api_port)
        bare_process = None
        try:
            wait_ready(api + routes["whoami"], headers, api_process)
            bodies = {
                name: httpx.get(api + path, headers=headers, timeout=60).content
                for name, path in routes.items()
            }
            bare_process = start(serve_bare, bare_port, {f"/{name}": body for name, body in bodies.items()})
            bare = f"http://127.0.0.1:{bare_port}"
            wait_ready(bare + "/whoami", {}, bare_process)
            print(
                f"N={versions}: registry built in {built:.1f} s; version GET {len(bodies['version'])} B, "
                f"list ({LIST_QUERY}) {len(bodies['list'])} B",
                flush=True,
            )
            targets = {
                "bare version bytes": bare + "/version",
                "GET version": api + routes["version"],
                WRITING: api + routes["version"],
                "bare list bytes": bare + "/list",
                "GET list": api + routes["list"],
                "GET whoami": api + routes["whoami"],
            }
            for _ in range(args.rounds):
                for connections in args.connections:
                    for name, url in targets.items():
                        with committing(Path(tmp), every=COMMIT_EVERY if name == WRITING else None):
                            load = measure(wrk, script, url, token=token, connections=connections, args=args)
                        results.setdefault(f"{name} c={connections}", []).append(load)
        finally:
            stop(api_process)
            if bare_process is not None:
                stop(bare_process)
    return results


@contextmanager
def committing(state_dir: Path, *, every: float | None) -> Iterator[None]:
    """While the block runs, commit an audit event every ``every`` seconds (None: nothing), as a busy
    control plane writes: every commit ends the answers the API keeps, so reads go to the database again."""
    if every is None:
        yield
        return
    from controlplane.registry import store
    from controlplane.registry.db import Database
    from controlplane.settings import Settings

    db = Database(Settings(state_dir=state_dir).effective_database_url)
    stopping = threading.Event()

    def write() -> None:
        while not stopping.wait(every):
            with db.transaction() as session:
                store.append_event(session, actor="bench", action="bench.tick", target=MODEL, outcome="ok")

    writer = threading.Thread(target=write, name="bench-writer", daemon=True)
    writer.start()
    try:
        yield
    finally:
        stopping.set()
        writer.join(10)
        db.dispose()


def report(versions: int, results: dict[str, list[Load]], connections: list[int]) -> None:
    print(f"N={versions} versions")
    for c in connections:
        for name in (
            "bare version bytes",
            "GET version",
            WRITING,
            "bare list bytes",
            "GET list",
            "GET whoami",
        ):
            for i, load in enumerate(results[f"{name} c={c}"], start=1):
                print(
                    f"  c={c:<3} {name:<19} round {i}: {load.rps:>8.0f} req/s  p50 {load.p50_ms:>7.2f} ms  "
                    f"p99 {load.p99_ms:>8.2f} ms  errors {load.errors:>5}  {load.bytes_per_call:>8.0f} B/call"
                )
        for route, floor in (("GET version", "bare version bytes"), ("GET list", "bare list bytes")):
            ratios = [
                f"{api.rps / bare.rps:.2f}x"
                for api, bare in zip(results[f"{route} c={c}"], results[f"{floor} c={c}"], strict=True)
            ]
            print(f"  c={c:<3} {route} / {floor}: throughput {', '.join(ratios)}")


def summary(all_results: dict[int, dict[str, list[Load]]], connections: list[int]) -> None:
    """One line per route, history length and concurrency: every round's req/s, p50 and p99 side by side."""
    print(f"summary (goal for GET version at c=16: >= {GOAL_RPS} req/s with p99 <= {GOAL_P99_MS} ms)")
    for route in ("GET version", WRITING, "GET list"):
        for versions, results in all_results.items():
            for c in connections:
                loads = results[f"{route} c={c}"]
                figures = "  |  ".join(
                    f"{load.rps:>6.0f} req/s p50 {load.p50_ms:>7.2f} p99 {load.p99_ms:>8.2f} ms"
                    for load in loads
                )
                met = ""
                if route == "GET version" and c == 16:
                    met = "  goal " + ("met" if all(ok(load) for load in loads) else "NOT met")
                print(f"  {route:<19} N={versions:<6} c={c:<3} {figures}{met}")


def ok(load: Load) -> bool:
    return load.rps >= GOAL_RPS and load.p99_ms <= GOAL_P99_MS and load.errors == 0


# -- in process: the cost of one read without sockets or a server ---------------------------


async def asgi_get(app: ASGIApp, path: str, token: str) -> bytes:
    """One GET of ``path`` through ``app`` by raw ASGI calls, as uvicorn makes them; the body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"authorization", f"Bearer {token}".encode())],
    }
    body = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body.append(message["body"])

    await app(scope, receive, send)
    return b"".join(body)


async def microseconds_per_get(app: ASGIApp, path: str, token: str, *, calls: int, rounds: int = 5) -> float:
    """The best of ``rounds`` averages over ``calls`` GETs, after as many unmeasured."""
    for _ in range(calls):
        await asgi_get(app, path, token)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            await asgi_get(app, path, token)
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


def bench_in_process(versions: int, calls: int) -> None:
    """Microseconds per version GET in this process: the API's app, then a bare route with its bytes."""
    import asyncio
    import gc

    with tempfile.TemporaryDirectory(prefix="bench-registry-api-") as tmp:
        token = build_registry(Path(tmp), versions)
        app, _settings = api_app(tmp, 8000)
        path = f"/v1/models/{MODEL}/versions/{versions}"
        body = asyncio.run(asgi_get(app, path, token))
        bare = bare_app({"/version": body})
        gc.collect()
        gc.freeze()  # as serve_api does (freeze_startup_heap)
        api_us = asyncio.run(microseconds_per_get(app, path, token, calls=calls))
        bare_us = asyncio.run(microseconds_per_get(bare, "/version", token, calls=calls))
        gc.unfreeze()
    print(
        f"N={versions}: GET version in process {api_us:.1f} us/call, "
        f"bare Starlette with the same {len(body)} B {bare_us:.1f} us/call ({api_us / bare_us:.2f}x)",
        flush=True,
    )


# -- a rollout's steps while the API is under load ------------------------------------------


@dataclass(frozen=True)
class StepTiming:
    """One canary rollout: how long each step and the whole took, and the API load meanwhile."""

    label: str
    target: int
    steps: list[float]
    total: float
    load: Load | None


def bench_rollout(wrk: str, script: Path, args: argparse.Namespace) -> list[StepTiming]:
    """Canary rollouts of the example model with the API idle and under ``wrk``, in the one process.

    As ``controlplane up`` runs them: the stack (two real tritonservers, HAProxy), the rollout engine
    and the API (uvicorn with ``server_config``) in this process, so the API's load competes with the
    engine for the same interpreter. Production moves between versions 1 and 2 with each rollout.
    """
    import uvicorn
    from common import examples_module

    from controlplane.api.app import create_app
    from controlplane.api.auth import Authenticator
    from controlplane.api.server import freeze_startup_heap, server_config
    from controlplane.artifacts.archive import pack_directory
    from controlplane.domain.analysis import Gates
    from controlplane.domain.auth import Role
    from controlplane.domain.models import VersionMetadata
    from controlplane.domain.rollouts import RolloutSpec, RolloutState, Strategy
    from controlplane.registry import token_store
    from controlplane.runtime.ports import free_ports
    from controlplane.runtime.wiring import api_services, local_services
    from controlplane.settings import Settings

    timings: list[StepTiming] = []
    with tempfile.TemporaryDirectory(prefix="bench-registry-rollout-") as tmp:
        root = Path(tmp)
        api_port, grpc_port, http_port = free_ports(3)
        settings = Settings(
            state_dir=root / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port
        )
        with local_services(settings, pool_names=("blue", "green")) as (stack, services):
            build_examples = examples_module()
            for seed in (1, 2):
                folder = build_examples.build_mlp(root / f"v{seed}", seed=seed)
                archive = pack_directory(folder, root / f"v{seed}.tgz")
                services.registry.push(model=MODEL, archive=archive, metadata=VersionMetadata())
            services.deployer.deploy(MODEL, 1)
            with services.db.transaction() as session:
                token, _info = token_store.create_token(
                    session, name="bench", role=Role.VIEWER, created_by="bench"
                )
            app = create_app(
                api_services(services),
                max_upload_bytes=settings.max_upload_bytes,
                readiness=stack.readiness,
                auth=Authenticator(
                    services.db, required=settings.auth_required, open_reads=settings.open_reads
                ),
            )
            server = uvicorn.Server(server_config(app, settings))
            freeze_startup_heap()
            thread = threading.Thread(target=server.run, name="api", daemon=True)
            thread.start()
            bare_process = None
            try:
                url = f"http://{settings.host}:{api_port}/v1/models/{MODEL}/versions/2"
                headers = {"Authorization": f"Bearer {token}"}
                wait_ready(url, headers, None)
                # The control: the same load on the same machine, served by another process.
                (bare_port,) = free_ports(1)
                body = httpx.get(url, headers=headers, timeout=60).content
                bare_process = start(serve_bare, bare_port, {"/version": body})
                elsewhere = f"http://127.0.0.1:{bare_port}/version"
                wait_ready(elsewhere, {}, bare_process)
                loads = {"API idle": None, "API under load": url, "load elsewhere": elsewhere}
                target = 2
                for round_ in range(args.rounds):
                    order = list(loads) if round_ % 2 == 0 else list(reversed(loads))
                    for condition in order:
                        spec = RolloutSpec(
                            MODEL,
                            target,
                            Strategy.CANARY,
                            ROLLOUT_STEPS,
                            ROLLOUT_STEP_SECONDS,
                            1.0,
                            Gates(min_requests=0),
                        ).validate()
                        load_url = loads[condition]
                        load: subprocess.Popen[str] | None = None
                        if load_url is not None:
                            load = start_wrk(wrk, script, load_url, token=token, connections=16, seconds=600)
                            time.sleep(args.warmup)
                        started = time.time()
                        rollout = services.engine.wait(services.engine.start(spec, actor="bench").id, 600)
                        ended = time.time()
                        assert rollout.state is RolloutState.SUCCEEDED, rollout.reason
                        timings.append(
                            StepTiming(
                                label=condition,
                                target=target,
                                steps=step_durations(rollout.events),
                                total=ended - started,
                                load=stop_wrk(load) if load is not None else None,
                            )
                        )
                        target = 3 - target
                        settle(url, token)
            finally:
                server.should_exit = True
                thread.join(10)
                if bare_process is not None:
                    stop(bare_process)
    return timings


def step_durations(events: Sequence[Any]) -> list[float]:
    """Seconds from each step's first event to the next step's (the last: to baking)."""
    starts: dict[int, float] = {}
    baking = None
    for event in events:
        if event.to_state == "shifting" and event.step_index is not None:
            starts.setdefault(event.step_index, event.at.timestamp())
        elif event.to_state == "baking" and baking is None:
            baking = event.at.timestamp()
    marks = [starts[i] for i in sorted(starts)] + ([baking] if baking is not None else [])
    return [b - a for a, b in itertools.pairwise(marks)]


def start_wrk(
    wrk: str, script: Path, url: str, *, token: str, connections: int, seconds: int
) -> subprocess.Popen[str]:
    """``wrk`` in the background; ``stop_wrk`` ends it and reads its figures."""
    return subprocess.Popen(
        wrk_command(wrk, script, url, token=token, connections=connections, seconds=seconds),
        stdout=subprocess.PIPE,
        text=True,
    )


def stop_wrk(process: subprocess.Popen[str]) -> Load:
    process.send_signal(signal.SIGINT)  # wrk stops its threads and reports what they measured
    out, _err = process.communicate(timeout=60)
    return parse_wrk(out)


def report_rollout(timings: list[StepTiming]) -> None:
    steps = ", ".join(f"{p}%" for p in ROLLOUT_STEPS)
    print(
        f"rollout step timing: canary {steps}, {ROLLOUT_STEP_SECONDS:g} s per step; the API in the same "
        "process idle, under wrk (c=16, GET version), and the same wrk load on another process (the "
        "machine's share, the baseline of the load)"
    )
    for t in timings:
        figures = ", ".join(f"{d:5.2f}" for d in t.steps)
        load = f"  load {t.load.rps:.0f} req/s, p99 {t.load.p99_ms:.1f} ms" if t.load is not None else ""
        print(f"  v{t.target} {t.label:<15} steps {figures} s  start -> succeeded {t.total:6.2f} s{load}")
    for label in ("API idle", "API under load", "load elsewhere"):
        mine = [d for t in timings if t.label == label for d in t.steps]
        if mine:
            print(f"  {label:<15} mean step {sum(mine) / len(mine):.2f} s, longest {max(mine):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", default="10,1000,10000", help="history lengths, comma-separated")
    parser.add_argument("--connections", default="16,64", help="wrk connections, comma-separated")
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each measured run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--no-rollout",
        dest="rollout",
        action="store_false",
        help="skip the canary rollouts (real Triton and HAProxy) timed with the API idle and under load",
    )
    parser.add_argument(
        "--in-process",
        type=int,
        metavar="CALLS",
        default=0,
        help="instead of wrk: microseconds per version GET by raw ASGI calls (best of 5 x CALLS)",
    )
    args = parser.parse_args()
    if args.in_process > 0:
        for versions in (int(n) for n in args.versions.split(",")):
            bench_in_process(versions, args.in_process)
        return
    args.connections = [int(c) for c in args.connections.split(",")]
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "report.lua"
        script.write_text(WRK_REPORT)
        all_results = {}
        for versions in (int(n) for n in args.versions.split(",")):
            all_results[versions] = bench_history(wrk, script, versions, args)
        timings = bench_rollout(wrk, script, args) if args.rollout else []
    print(
        f"registry API benchmark: wrk, 2 threads, {args.seconds:g} s after {args.warmup:g} s warm-up, "
        f"{args.rounds} rounds; viewer token; baseline: bare Starlette on the same uvicorn configuration"
    )
    for versions, results in all_results.items():
        report(versions, results, args.connections)
    summary(all_results, args.connections)
    if timings:
        report_rollout(timings)


if __name__ == "__main__":
    main()
