"""Data-path benchmark: the same tritonclient gRPC load straight to Triton and through HAProxy.

    python bench/dataplane.py [--requests 40000] [--streams 8]

Starts the embedded stack's pieces (a real tritonserver with the example
``mlp`` deployed through the control plane, and HAProxy in front), then runs
``--streams`` client processes, each sending its share of ``--requests``
sequential requests, first direct (baseline) and then through the proxy,
alternating rounds so that drift affects both sides alike. Prints throughput
and latency percentiles of both and their ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.models import VersionMetadata
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import local_services
from controlplane.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def _worker(url: str, count: int, start: mp.synchronize.Event, out: mp.Queue) -> None:  # type: ignore[name-defined]
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    data = np.ones((1, 16), dtype=np.float32)
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(data)
    for _ in range(50):  # connection set-up and warm-up, not measured
        client.infer("mlp", [tensor])
    latencies = np.empty(count, dtype=np.float64)
    failures = 0
    start.wait()
    for i in range(count):
        t0 = time.perf_counter()
        try:
            client.infer("mlp", [tensor])
        except Exception:  # noqa: BLE001 - counted, the benchmark reports failures
            failures += 1
        latencies[i] = time.perf_counter() - t0
    client.close()
    out.put((latencies, failures))


def run_load(url: str, *, requests: int, streams: int) -> dict[str, float]:
    """Run ``streams`` processes against ``url``; return throughput and latency figures."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    per = requests // streams
    procs = [ctx.Process(target=_worker, args=(url, per, start, out)) for _ in range(streams)]
    for p in procs:
        p.start()
    time.sleep(3.0)  # let every worker finish connecting and warming up
    t0 = time.perf_counter()
    start.set()
    results = [out.get() for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    latencies = np.concatenate([r[0] for r in results])
    return {
        "requests": float(len(latencies)),
        "failed": float(sum(r[1] for r in results)),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50) * 1000),
        "p99_ms": float(np.percentile(latencies, 99) * 1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40_000, help="per side, split over the rounds")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-dataplane-") as tmp:
        api_port, grpc_port, http_port = free_ports(3)
        settings = Settings(state_dir=Path(tmp), api_port=api_port, grpc_port=grpc_port, http_port=http_port)
        with local_services(settings, pool_names=("blue",)) as (stack, services):
            archive = pack_directory(REPO / "model_repository" / "mlp", Path(tmp) / "mlp.tar.gz")
            version, _ = services.registry.push(model="mlp", archive=archive, metadata=VersionMetadata())
            services.deployer.deploy("mlp", version.number)
            direct_url = stack.pools["blue"].grpc_url
            proxy_url = f"127.0.0.1:{grpc_port}"
            per_round = args.requests // args.rounds
            sides: dict[str, list[dict[str, float]]] = {"direct": [], "proxy": []}
            for _ in range(args.rounds):
                sides["direct"].append(run_load(direct_url, requests=per_round, streams=args.streams))
                sides["proxy"].append(run_load(proxy_url, requests=per_round, streams=args.streams))

    def total(rows: list[dict[str, float]]) -> dict[str, float]:
        reqs = sum(r["requests"] for r in rows)
        secs = sum(r["seconds"] for r in rows)
        return {
            "requests": reqs,
            "failed": sum(r["failed"] for r in rows),
            "rps": reqs / secs,
            "p50_ms": float(np.median([r["p50_ms"] for r in rows])),
            "p99_ms": float(np.median([r["p99_ms"] for r in rows])),
        }

    direct, proxy = total(sides["direct"]), total(sides["proxy"])
    print(f"data path benchmark: {args.streams} gRPC streams, tritonclient, model mlp, {args.rounds} rounds")
    for name, row in (("direct (baseline)", direct), ("through HAProxy", proxy)):
        print(
            f"  {name:<18} {row['requests']:>8.0f} req  {row['failed']:>4.0f} failed  "
            f"{row['rps']:>8.0f} req/s  p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms"
        )
    print(
        f"  proxy/direct: throughput {proxy['rps'] / direct['rps']:.2f}x  "
        f"p50 {proxy['p50_ms'] / direct['p50_ms']:.2f}x  p99 {proxy['p99_ms'] / direct['p99_ms']:.2f}x"
    )


if __name__ == "__main__":
    main()
