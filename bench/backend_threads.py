"""Session threads of the CPU stand-in backend: one per instance (the default) against more.

    python bench/backend_threads.py [--models small,medium] [--threads 1,2,0] [--connections 4,16]
                                    [--seconds 10] [--warmup 3] [--rounds 2]

One real tritonserver (explicit model control, every model loaded at start)
serves each model of ``bench/mlp_models.py`` once per thread setting: the
same folder with the native onnxruntime backend's ``intra_op_thread_count``
parameter set to N (0: onnxruntime's own default, one thread per core), as
its own model ``<model>_t<N>``. ``h2load`` sends unary gRPC ``ModelInfer``
calls of one row straight to Triton (no proxy) at each number of
connections, ``--warmup`` seconds not counted, then ``--seconds`` measured,
settings in turn and in reverse order the next round. The baseline is the
default (1 thread), measured in the same run: every figure is also printed
as a ratio to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from mlp_models import SHAPES, MlpShape, build_mlp_folder
from proxy import call_figures, grpc_payload, h2load

from controlplane.runtime.ports import free_ports
from controlplane.triton.backend_dir import build_backend_directory
from controlplane.triton.server_command import tritonserver_command

DEFAULT_THREADS = 1


def variant(folder: Path, repository: Path, threads: int) -> str:
    """Copy the model ``folder`` into ``repository`` as ``<name>_t<threads>``; its name."""
    name = f"{folder.name}_t{threads}"
    target = repository / name
    shutil.copytree(folder, target)
    config = (target / "config.pbtxt").read_text()
    config = config.replace(f'name: "{folder.name}"', f'name: "{name}"', 1)
    if threads != DEFAULT_THREADS:
        config += f'parameters {{ key: "intra_op_thread_count" value {{ string_value: "{threads}" }} }}\n'
    (target / "config.pbtxt").write_text(config)
    return name


def start_triton(repository: Path, work: Path, models: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """tritonserver loading every model of ``repository``: the process and its gRPC port, all READY."""
    http_port, grpc_port, metrics_port = free_ports(3)
    argv, env = tritonserver_command(
        model_repository=repository,
        backend_directory=build_backend_directory(work / "backends"),
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        shm_prefix=f"cpbench{http_port}_",
        load_all_models=True,
    )
    log = (work / "tritonserver.log").open("ab")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=2) as client:
        for model in models:
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"tritonserver exited; see {work / 'tritonserver.log'}")
                try:
                    if client.get(f"/v2/models/{model}/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{model} not ready; see {work / 'tritonserver.log'}")
                time.sleep(0.2)
    return process, grpc_port


@dataclasses.dataclass(frozen=True)
class Run:
    """One measured run of one setting: req/s, latency percentiles, failed calls, data bytes per call."""

    rps: float
    p50_ms: float
    p99_ms: float
    failed: int
    data_bytes: int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small,medium")
    parser.add_argument("--threads", default="1,2,0", help="intra-op thread settings (0: onnxruntime's)")
    parser.add_argument("--connections", default="4,16")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    shapes: list[MlpShape] = [SHAPES[name] for name in args.models.split(",")]
    settings = [int(t) for t in args.threads.split(",")]
    if DEFAULT_THREADS not in settings:
        settings.insert(0, DEFAULT_THREADS)
    connections = [int(c) for c in args.connections.split(",")]

    work = Path(tempfile.mkdtemp(prefix="cp-bench-threads-"))
    repository = work / "repository"
    repository.mkdir()
    names: dict[tuple[str, int], str] = {}
    for shape in shapes:
        folder = build_mlp_folder(work / "built", shape)
        for threads in settings:
            names[(shape.name, threads)] = variant(folder, repository, threads)
    process, grpc_port = start_triton(repository, work, list(names.values()))
    results: dict[tuple[str, int, int], list[Run]] = {}
    try:
        for shape in shapes:
            for conns in connections:
                for round_ in range(args.rounds):
                    order = settings if round_ % 2 == 0 else list(reversed(settings))
                    for threads in order:
                        model = dataclasses.replace(shape, name=names[(shape.name, threads)])
                        payload = grpc_payload(model, work / f"{model.name}.grpc")
                        h2load(grpc_port, payload, conns, args.warmup, work / "warmup.log")
                        measured = h2load(grpc_port, payload, conns, args.seconds, work / "h2.log")
                        rps, latencies, data = measured
                        run = Run(rps, *call_figures(latencies), data_bytes=data)
                        results.setdefault((shape.name, conns, threads), []).append(run)
                        print(
                            f"{shape.name} c={conns} intra-op threads {threads or 'ort default'}:"
                            f" {run.rps:8.0f} req/s  p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms"
                            f"  {run.failed} failed",
                            flush=True,
                        )
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(work, ignore_errors=True)

    print("\nsummary (mean of rounds; ratio against 1 thread, the default, in the same run)")
    for shape in shapes:
        # Every setting runs the same network: the same answer bytes per call, or a call went wrong.
        answers = {run.data_bytes for key, runs in results.items() if key[0] == shape.name for run in runs}
        if len(answers) > 1:
            print(f"  {shape.name}: answers differ between settings ({sorted(answers)} bytes per call)")
        for conns in connections:
            base = results[(shape.name, conns, DEFAULT_THREADS)]
            base_rps = statistics.mean(r.rps for r in base)
            base_p99 = statistics.mean(r.p99_ms for r in base)
            for threads in settings:
                runs = results[(shape.name, conns, threads)]
                rps = statistics.mean(r.rps for r in runs)
                p99 = statistics.mean(r.p99_ms for r in runs)
                failed = sum(r.failed for r in runs)
                label = "ort default" if threads == 0 else f"{threads} thread{'s' if threads > 1 else ''}"
                print(
                    f"  {shape.name:6s} c={conns:<3d} {label:12s} {rps:8.0f} req/s ({rps / base_rps:.2f}x)"
                    f"  p99 {p99:6.2f} ms ({p99 / base_p99:.2f}x)  {failed} failed"
                )


if __name__ == "__main__":
    main()
