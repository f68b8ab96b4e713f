"""Tuning benchmark: the batching sweep of the example ``mlp`` on the idle pool of an embedded stack.

    python bench/tune.py [--p99-ms 50] [--delays 0,500,2000] [--batch-sizes 0,8] [--instances 1,2]
                         [--threads 1,2] [--seconds 4] [--concurrency 16]

Runs the stack's pieces in-process (two real tritonservers, HAProxy, the
registry on SQLite), deploys ``mlp`` on the live pool (the other one holds
it as the warm standby) and runs the tuner exactly as ``controlplane tune``
does: every configuration loaded under ``mlp~tune`` on the standby pool and
measured with the built-in gRPC load generator. The baseline is the
version's own configuration, measured first in the same run; every figure is
printed as a ratio to it (the machine is shared, so absolute numbers move
from run to run and only ratios within one run mean something). Then the
chart of throughput against p99, and the version the best configuration
became.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import examples_module

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.models import VersionMetadata
from controlplane.domain.tuning import SweepSpec
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import local_services
from controlplane.settings import Settings
from controlplane.tuning.report import chart, ratios, table
from controlplane.tuning.tuner import TuningState


def _numbers(value: str) -> tuple[int, ...]:
    return tuple(int(part) for part in value.split(",") if part.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p99-ms", type=float, default=50.0, help="latency objective")
    parser.add_argument("--delays", default="0,500,2000", help="max_queue_delay_microseconds values")
    parser.add_argument("--batch-sizes", default="0,8", help="preferred batch sizes (0: none)")
    parser.add_argument("--instances", default="1,2", help="instance counts")
    parser.add_argument("--threads", default="", help="onnxruntime session threads (default: the version's)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per configuration")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    args = parser.parse_args()
    spec = SweepSpec(
        p99_ms=args.p99_ms,
        delays_us=_numbers(args.delays),
        preferred_batch_sizes=_numbers(args.batch_sizes),
        instance_counts=_numbers(args.instances),
        backend_threads=_numbers(args.threads),
        concurrency=args.concurrency,
        seconds_per_config=args.seconds,
    )
    work = Path(tempfile.mkdtemp(prefix="cp-tune-"))
    try:
        api_port, grpc_port, http_port = free_ports(3)
        settings = Settings(
            state_dir=work / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port
        )
        with local_services(settings, pool_names=("blue", "green")) as (_stack, services):
            folder = examples_module().build_mlp(work / "mlp", seed=1)
            archive = pack_directory(folder, work / "mlp.tar.gz")
            services.registry.push(model="mlp", archive=archive, metadata=VersionMetadata())
            services.deployer.deploy("mlp", 1)
            services.reconciler.run_once()
            started = services.tuner.start("mlp", spec, actor="bench")
            print(
                f"tuning mlp v1 on pool {started.pool}: the default configuration, then "
                f"{len(started.planned)} others; {spec.concurrency} concurrent batch-1 gRPC requests, "
                f"{spec.seconds_per_config:g} s each (after a {spec.warmup_seconds:g} s warm-up)",
                flush=True,
            )
            run = services.tuner.wait(started.id, timeout=3600)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    for line in table(run.trials, p99_ms=spec.p99_ms, best=run.best):
        print(line)
    print()
    for line in chart(run.trials, p99_ms=spec.p99_ms, best=run.best):
        print(line)
    print()
    if run.state is not TuningState.SUCCEEDED or run.best is None:
        error = run.error or {}
        print(f"no version written: {error.get('message', run.state.value)}")
        return
    print(f"best: #{run.best.index} {run.best.config.describe()}: {ratios(run.best, run.baseline())}")
    print(f"mlp: {run.phase}")


if __name__ == "__main__":
    main()
