"""Stack versus plain Python: the same HTTP load on the stack and on a FastAPI + onnxruntime server.

    python bench/versus_fastapi.py [--models small,medium] [--connections 16,64] [--seconds 10]
                                   [--warmup 3] [--rounds 2] [--plain-workers 2,1]

The two MLPs of ``bench/mlp_models.py`` are built from fixed seeds into a
temporary directory (FP32, batch axis dynamic, ``max_batch_size`` 64, backend
``onnxruntime``, dynamic batching on): ``small`` 256-512-512-10 and
``medium`` 1024-2048-2048-2048-10.

The stack is the embedded one (``local_services``: the registry on SQLite, a
real tritonserver serving through the ``onnxruntime`` stand-in backend, and
HAProxy in front); each model is pushed and deployed through the control
plane, and the load goes to the proxy's HTTP port. The baseline is
``bench/plain_server.py``, run by uvicorn with 2 workers (the first of
``--plain-workers``) and, as a further row, with 1 worker; each worker holds
one onnxruntime session per model with one intra-op thread, as each Triton
instance does. Both sides answer the same KServe v2 JSON request (one row of
seeded random inputs) at ``/v2/models/<model>/infer``; before the load, their
answers are checked to agree.

``wrk`` (2 threads) sends the request body with a Lua script; each point is
``--warmup`` seconds of load not counted, then ``--seconds`` measured, then
the server may finish what wrk left behind. Rounds alternate the order of
the sides. Printed per model and concurrency: req/s, p50, p99 and errors
(socket errors, timeouts, non-2xx answers) of each side, over the rounds
averaged (req/s), the median (latencies) or summed (errors), and each
side's figures as a ratio of the baseline's. The machine is shared and wrk
runs on it too, so only ratios within one run mean something.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from mlp_models import SHAPES, MlpShape, build_mlp_folder
from registry_api import WRK_REPORT, Load, ensure_wrk, parse_wrk, settle_with

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.models import VersionMetadata
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import local_services
from controlplane.settings import Settings

BENCH = Path(__file__).resolve().parent
INPUT, OUTPUT = "INPUT0", "OUTPUT0"


INPUT_SEED = 13


def request_body(spec: MlpShape) -> bytes:
    """The KServe v2 JSON request both sides answer: one row of seeded standard-normal FP32 inputs."""
    row = np.random.default_rng(INPUT_SEED).standard_normal(spec.input_width).astype(np.float32)
    tensor = {"name": INPUT, "shape": [1, spec.input_width], "datatype": "FP32", "data": row.tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def answer_of(url: str, body: bytes) -> np.ndarray:
    """``OUTPUT0`` of one request to ``url``."""
    reply = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=60)
    reply.raise_for_status()
    [output] = [o for o in reply.json()["outputs"] if o["name"] == OUTPUT]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


# -- wrk ---------------------------------------------------------------------------------------

POST_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = file:read("*a")
file:close()
"""


def run_wrk(wrk: str, script: Path, url: str, body: Path, *, connections: int, seconds: float) -> Load:
    """One wrk run POSTing ``body`` to ``url``."""
    command = [wrk, "-t", "2", "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "30s"]
    command += ["-s", str(script), url]
    env = {**os.environ, "BENCH_BODY": str(body)}
    return parse_wrk(subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout)


def settle(url: str, body: bytes, *, within: float = 1.0, limit: float = 120.0) -> None:
    """Wait until one request is answered within ``within`` seconds again (at most ``limit``)."""
    headers = {"Content-Type": "application/json"}
    settle_with(
        lambda timeout: httpx.post(url, content=body, headers=headers, timeout=timeout),
        url,
        within=within,
        limit=limit,
    )


# -- the two sides -----------------------------------------------------------------------------


@contextmanager
def plain_server(models: dict[str, Path], *, workers: int) -> Iterator[str]:
    """``plain_server.py`` under uvicorn with ``workers`` processes; yields its base URL."""
    (port,) = free_ports(1)
    spec = ",".join(f"{name}={folder / '1' / 'model.onnx'}" for name, folder in models.items())
    command = [sys.executable, "-m", "uvicorn", "plain_server:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    process = subprocess.Popen(
        command, cwd=BENCH, env={**os.environ, "PLAIN_MODELS": spec}, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the plain server exited with {process.returncode}")
            try:
                # Every worker loads the models before it accepts; one answer is not all workers.
                if httpx.get(f"{base}/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the plain server did not become ready within 120 s")
            time.sleep(0.2)
        time.sleep(2.0)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def stack_server(models: dict[str, Path], state_dir: Path) -> Iterator[str]:
    """The embedded stack with every model pushed and deployed; yields the proxy's HTTP base URL."""
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(state_dir=state_dir, api_port=api_port, grpc_port=grpc_port, http_port=http_port)
    with local_services(settings, pool_names=("blue",)) as (_stack, services):
        for name, folder in models.items():
            archive = pack_directory(folder, state_dir / f"{name}.tar.gz")
            version, _ = services.registry.push(model=name, archive=archive, metadata=VersionMetadata())
            services.deployer.deploy(name, version.number)
        yield f"http://127.0.0.1:{http_port}"


# -- the run -----------------------------------------------------------------------------------


def check_answers(urls: dict[str, str], bodies: dict[str, Path], baseline: str) -> None:
    """Exit unless every side answers every model's request as the baseline does."""
    for name, body_file in bodies.items():
        body = body_file.read_bytes()
        expected = answer_of(f"{urls[baseline]}/v2/models/{name}/infer", body)
        for side, base in urls.items():
            got = answer_of(f"{base}/v2/models/{name}/infer", body)
            if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
                sys.exit(f"{side} answers {name} differently from the baseline: {got} vs {expected}")


def measure(
    wrk: str, script: Path, url: str, body_file: Path, connections: int, args: argparse.Namespace
) -> Load:
    """Warm-up, the measured run, then wait until the server has worked off what wrk left behind."""
    if args.warmup > 0:
        run_wrk(wrk, script, url, body_file, connections=connections, seconds=args.warmup)
    load = run_wrk(wrk, script, url, body_file, connections=connections, seconds=args.seconds)
    settle(url, body_file.read_bytes())
    return load


@dataclass(frozen=True)
class Point:
    model: str
    connections: int


def combine(loads: Sequence[Load]) -> Load:
    """Rounds of one point: req/s averaged, latencies the median, errors summed."""
    return Load(
        rps=float(np.mean([load.rps for load in loads])),
        p50_ms=float(np.median([load.p50_ms for load in loads])),
        p99_ms=float(np.median([load.p99_ms for load in loads])),
        errors=sum(load.errors for load in loads),
        bytes_per_call=float(np.mean([load.bytes_per_call for load in loads])),
        requests=sum(load.requests for load in loads),
    )


def report(
    results: dict[Point, dict[str, list[Load]]], sides: Sequence[str], baseline: str, args: argparse.Namespace
) -> None:
    print(
        f"stack versus plain FastAPI + onnxruntime: wrk HTTP POST (KServe v2 JSON, batch 1), 2 threads, "
        f"{args.seconds:g} s after {args.warmup:g} s warm-up, {args.rounds} rounds alternating the order; "
        f"baseline: {baseline}"
    )
    for point, by_side in results.items():
        spec = SHAPES[point.model]
        base = combine(by_side[baseline])
        print(f"  {point.model} ({'-'.join(str(w) for w in spec.widths)}), c={point.connections}")
        for side in sides:
            row = combine(by_side[side])
            ratio = (
                ""
                if side == baseline
                else f"   vs baseline: req/s {row.rps / base.rps:.2f}x  "
                f"p50 {row.p50_ms / base.p50_ms:.2f}x  p99 {row.p99_ms / base.p99_ms:.2f}x"
            )
            print(
                f"    {side:<18} {row.rps:>8.0f} req/s  p50 {row.p50_ms:7.2f} ms  p99 {row.p99_ms:7.2f} ms  "
                f"{row.errors:>5d} errors{ratio}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small,medium", help=f"of {', '.join(SHAPES)}, comma-separated")
    parser.add_argument("--connections", default="16,64", help="wrk connections, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each point")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--plain-workers",
        default="2,1",
        help="uvicorn workers of the plain servers; the first is the baseline",
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    connections = [int(c) for c in args.connections.split(",")]
    workers = [int(w) for w in args.plain_workers.split(",")]
    wrk = ensure_wrk()

    with tempfile.TemporaryDirectory(prefix="bench-versus-") as tmp_name:
        tmp = Path(tmp_name)
        script = tmp / "post.lua"
        script.write_text(POST_SCRIPT + WRK_REPORT)
        models = {name: build_mlp_folder(tmp / "models", SHAPES[name]) for name in names}
        bodies = {name: tmp / f"{name}.json" for name in names}
        for name, path in bodies.items():
            path.write_bytes(request_body(SHAPES[name]))

        state_dir = tmp / "state"
        state_dir.mkdir()
        with stack_server(models, state_dir) as stack_url, _plains(models, workers) as plain_urls:
            urls = {"stack": stack_url} | {f"plain {w} worker{'s' * (w > 1)}": u for w, u in plain_urls}
            sides = list(urls)
            baseline = sides[1]
            check_answers(urls, bodies, baseline)
            results: dict[Point, dict[str, list[Load]]] = {
                Point(n, c): {side: [] for side in sides} for n in names for c in connections
            }
            for round_ in range(args.rounds):
                order = sides if round_ % 2 == 0 else list(reversed(sides))
                for point, by_side in results.items():
                    for side in order:
                        url = f"{urls[side]}/v2/models/{point.model}/infer"
                        load = measure(wrk, script, url, bodies[point.model], point.connections, args)
                        by_side[side].append(load)
                        print(
                            f"  round {round_ + 1} {point.model} c={point.connections} {side}: "
                            f"{load.rps:.0f} req/s, p99 {load.p99_ms:.1f} ms, {load.errors} errors",
                            flush=True,
                        )
    report(results, sides, baseline, args)


@contextmanager
def _plains(models: dict[str, Path], workers: Sequence[int]) -> Iterator[list[tuple[int, str]]]:
    # Started one after the other and left idle while the others are measured: an idle uvicorn costs nothing.
    if not workers:
        yield []
        return
    with plain_server(models, workers=workers[0]) as url, _plains(models, workers[1:]) as rest:
        yield [(workers[0], url), *rest]


if __name__ == "__main__":
    main()
