"""Failover benchmark: kill -9 of the serving Triton under sustained gRPC load through HAProxy.

    python bench/failover.py [--streams 8] [--seconds 12]

Runs the embedded stack's pieces in-process (two real tritonservers, HAProxy,
the registry on SQLite), deploys the example ``mlp`` on the live pool and
keeps ``--streams`` tritonclient processes sending requests through the
proxy. Halfway through, the serving tritonserver gets SIGKILL; the supervisor
restarts it. Measured twice in one run:

* **standby cold** (the baseline): the pool without traffic holds no models,
  as after a rollout before the standby was kept warm;
* **standby warm** (the default): the pool without traffic holds the
  production release, so the proxy fails over to it.

Prints total and failed requests of each, and the failures' time span.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from common import examples_module

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.models import VersionMetadata
from controlplane.registry import rollout_store
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import local_services
from controlplane.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def _client(url: str, stop, out) -> None:  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.full((1, 16), 0.25, dtype=np.float32))
    ok, failed_at, first_error = 0, [], ""
    while not stop.is_set():
        try:
            client.infer("mlp", [tensor], client_timeout=10)
            ok += 1
        except Exception as exc:  # noqa: BLE001 - counted: failures are the figure this benchmark reports
            failed_at.append(time.time())
            first_error = first_error or str(exc)[:160]
    client.close()
    out.put((ok, failed_at, first_error))


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def run_case(*, warm: bool, streams: int, seconds: float, work: Path) -> dict[str, object]:
    """One stack, one kill -9 of the serving Triton under load; the counts."""
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(
        state_dir=work / ("warm" if warm else "cold"),
        api_port=api_port,
        grpc_port=grpc_port,
        http_port=http_port,
        standby_warm=warm,
    )
    with local_services(settings, pool_names=("blue", "green")) as (stack, services):
        folder = examples_module().build_mlp(work / f"mlp-{warm}", seed=1)
        archive = pack_directory(folder, work / f"mlp-{warm}.tar.gz")
        services.registry.push(model="mlp", archive=archive, metadata=VersionMetadata())
        services.deployer.deploy("mlp", 1)
        services.reconciler.run_once()
        with services.db.transaction() as session:
            live = rollout_store.live_pool(session)
        standby = next(p for p in stack.pools if p != live)
        standby_ready = services.pools[standby].triton.is_model_ready("mlp", 1)
        assert standby_ready == warm, f"standby {standby} ready={standby_ready}, expected {warm}"
        _wait(lambda: services.router.pool_up(standby), 30, f"{standby} passing health checks")

        ctx = mp.get_context("spawn")
        stop, out = ctx.Event(), ctx.Queue()
        clients = [
            ctx.Process(target=_client, args=(f"127.0.0.1:{grpc_port}", stop, out)) for _ in range(streams)
        ]
        for c in clients:
            c.start()
        time.sleep(seconds / 2)
        process = stack.pools[live].process
        assert process is not None
        pid = process.pid
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        time.sleep(seconds / 2)
        _wait(
            lambda: services.pools[live].triton.is_model_ready("mlp", 1), 60, f"{live} serving mlp again"
        )
        stop.set()
        results = [out.get(timeout=60) for _ in clients]
        for c in clients:
            c.join(10)
    ok = sum(r[0] for r in results)
    failed_at = sorted(t for r in results for t in r[1])
    errors = sorted({r[2] for r in results if r[2]})
    return {
        "ok": ok,
        "failed": len(failed_at),
        "span": (failed_at[-1] - failed_at[0]) if failed_at else 0.0,
        "after_kill": (failed_at[0] - killed_at) if failed_at else 0.0,
        "error": errors[0] if errors else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=16.0, help="load per case; the kill is halfway")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cp-failover-"))
    try:
        cold = run_case(warm=False, streams=args.streams, seconds=args.seconds, work=work)
        warm = run_case(warm=True, streams=args.streams, seconds=args.seconds, work=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"kill -9 of the serving Triton, {args.streams} gRPC streams through HAProxy, "
        f"{args.seconds:.0f} s each"
    )
    for name, case in (("standby cold (baseline)", cold), ("standby warm", warm)):
        total = int(case["ok"]) + int(case["failed"])  # type: ignore[call-overload]
        line = f"  {name:24} {total:7,} requests  {case['failed']:6,} failed"
        if case["failed"]:
            line += (
                f"  over {case['span']:.2f} s from {case['after_kill']:+.2f} s after the kill:"
                f" {case['error']}"
            )
        print(line, flush=True)
    cold_failed, warm_failed = int(cold["failed"]), int(warm["failed"])  # type: ignore[call-overload]
    if cold_failed:
        print(f"  failed requests warm / cold: {warm_failed / cold_failed:.4f}x")


if __name__ == "__main__":
    main()
