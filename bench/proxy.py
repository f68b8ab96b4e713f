"""Proxy cost benchmark: the same load straight to a Triton pool and through the proxies in front of it.

    python bench/proxy.py [--seconds 15] [--warmup 3] [--rounds 1] [--points small-grpc-4,...]

Starts the embedded stack (one real tritonserver pool, HAProxy as the control
plane renders it) with two models, ``small`` (256-512-512-10) and ``medium``
(1024-2048x3-10), and measures each point with C load generators: ``h2load``
(nghttp2) for gRPC unary ``ModelInfer`` calls and ``wrk`` for KServe v2 JSON
``POST /v2/models/{m}/infer``. Every point runs against, in one run:

* ``direct``: the pool's own ports, the baseline of every ratio;
* ``haproxy``: the stack's proxy ports (allowlist, ``grpc-status`` capture,
  weights, health checks: what serves clients);
* ``hap before``: the same configuration with HAProxy's defaults for threads
  (one per CPU) and connection reuse to Triton (``http-reuse safe``), as the
  stack rendered it before;
* ``l4 relay``: HAProxy in ``mode tcp`` relaying bytes to the same pool, a
  proxy hop doing nothing above TCP (the floor of any proxy on this machine;
  it cannot shift gRPC traffic per call, so it is a yardstick, not an option);
* ``nginx``: nginx's ``grpc_pass`` / ``proxy_pass`` to the same pool, the other
  real proxy (when the ``nginx`` binary is installed).

Printed per point: req/s, p50 and p99 latency, failed calls, the ratio to
direct, the added p50, and CPU microseconds per call of the proxy process and
of Triton (its server and backend stubs) read from /proc around the run.
Every target of a point runs back to back, the order alternating across
rounds. A gRPC call counts as failed when h2load saw no 2xx or when the data
bytes per call differ from direct's (a gRPC error answers without a message).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlp_models import SHAPES, MlpShape, build_mlp_folder
from registry_api import WRK_REPORT
from versus_fastapi import POST_SCRIPT, request_body, run_wrk

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.models import VersionMetadata
from controlplane.procfs import PROC, read_stat
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import local_services
from controlplane.settings import Settings
from controlplane.traffic.haproxy_config import ProxyConfig, render_config

GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
TICKS = os.sysconf("SC_CLK_TCK")
DEFAULT_POINTS = (
    "small-grpc-4",
    "small-grpc-16",
    "small-grpc-64",
    "small-http-16",
    "small-http-64",
    "medium-grpc-16",
    "medium-grpc-64",
)


@dataclass(frozen=True)
class Point:
    """One load point: a model, a protocol and a number of connections (one call in flight on each)."""

    model: MlpShape
    protocol: str
    connections: int

    @classmethod
    def parse(cls, text: str) -> Point:
        """``small-grpc-16`` -> Point(SMALL, "grpc", 16)."""
        model, protocol, connections = text.split("-")
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be grpc or http: {text}")
        return cls(SHAPES[model], protocol, int(connections))

    @property
    def label(self) -> str:
        """As the table prints it."""
        return f"{self.model.name} {'gRPC' if self.protocol == 'grpc' else 'HTTP'} c={self.connections}"


@dataclass(frozen=True)
class Target:
    """Where a point's load goes, and whose CPU time it is charged with."""

    name: str
    grpc_port: int
    http_port: int
    proxy_pids: Callable[[], list[int]]


@dataclass(frozen=True)
class Run:
    """One measured run's figures."""

    rps: float
    p50_ms: float
    p99_ms: float
    calls: int
    failed: int
    proxy_cpu_us: float
    triton_cpu_us: float


# -- processes and CPU ---------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir(PROC):
        stat = read_stat(int(entry)) if entry.isdigit() else None
        if stat is not None:
            parents.setdefault(stat.ppid, []).append(stat.pid)
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue += parents.get(current, [])
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of ``pids`` (threads included), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def pid_in(path: Path) -> int:
    """The process id a pid file names."""
    return int(path.read_text().split()[0])


# -- payloads and load generators ----------------------------------------------------------------


def grpc_payload(shape: MlpShape, out: Path) -> Path:
    """A length-prefixed ``ModelInferRequest`` for one row of ones: the body of a unary gRPC call."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=shape.name)
    tensor = request.inputs.add(name="INPUT0", datatype="FP32")
    tensor.shape.extend([1, shape.input_width])
    request.outputs.add(name="OUTPUT0")
    request.raw_input_contents.append(np.ones((1, shape.input_width), dtype=np.float32).tobytes())
    message = request.SerializeToString()
    out.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    return out


FAILED_CALL_US = 10**9
"""The latency ``h2load`` reports here for a call that failed: it counts as slower than any answer."""


def call_figures(latencies_us: list[int]) -> tuple[float, float, int]:
    """p50 and p99 in ms of ``h2load``'s per-call latencies, and how many of the calls failed."""
    p50, p99 = np.percentile(np.array(latencies_us, dtype=np.float64), [50, 99]) / 1000
    return float(p50), float(p99), sum(1 for value in latencies_us if value >= FAILED_CALL_US)


def h2load(
    port: int, payload: Path, connections: int, seconds: float, log: Path
) -> tuple[float, list[int], int]:
    """Unary gRPC calls for ``seconds``: (req/s, per-call latencies in us, data bytes per call), or raise."""
    command = [
        "h2load", "-c", str(connections), "-m", "1", "-D", str(max(1, round(seconds))), "-d", str(payload),
        "-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file", str(log),
        f"http://127.0.0.1:{port}{GRPC_PATH}",
    ]  # fmt: skip
    log.unlink(missing_ok=True)  # h2load appends to its log
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    summary = next(line for line in out.splitlines() if line.startswith("finished in"))
    rps = float(summary.split(", ")[1].split()[0])
    data_line = next(line for line in out.splitlines() if line.startswith("traffic:"))
    data = int(data_line.split("(")[-1].split(")")[0])
    ok, failed_status = [], 0
    for line in log.read_text().splitlines():
        _, status, elapsed = line.split("\t")
        if status.startswith("2"):
            ok.append(int(elapsed))
        else:
            failed_status += 1
    calls = len(ok) + failed_status
    return rps, ok + [FAILED_CALL_US] * failed_status, round(data / max(calls, 1))


# -- the proxies beside the stack's own ----------------------------------------------------------


@contextmanager
def haproxy_before(work: Path, config: ProxyConfig) -> Iterator[Target]:
    """The stack's proxy configuration as it was before the tuning measured here: HAProxy's default
    thread count (one per CPU) and each client connection's calls on a connection of their own to
    Triton (``http-reuse safe``)."""
    grpc_port, http_port = free_ports(2)
    before = dataclasses.replace(
        config,
        grpc_bind=("127.0.0.1", grpc_port),
        http_bind=("127.0.0.1", http_port),
        admin_socket=work / "before.sock",
        pid_file=None,
        grpc_connection_reuse="safe",
        threads=None,
    )
    path = work / "before.cfg"
    path.write_text(render_config(before))
    process = subprocess.Popen([haproxy_binary(), "-db", "-f", str(path)], stdout=subprocess.DEVNULL)
    try:
        wait_port(grpc_port)
        time.sleep(1.5)  # health checks: rise 2 at 500 ms
        yield Target("hap before", grpc_port, http_port, lambda: [process.pid])
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def l4_relay(work: Path, direct_grpc: int, direct_http: int) -> Iterator[Target]:
    """HAProxy in mode tcp in front of the pool: the cost of one proxy hop with nothing above TCP."""
    grpc_port, http_port = free_ports(2)
    config = work / "l4.cfg"
    config.write_text(
        "global\n    nbthread 1\n"
        "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n"
        f"listen grpc\n    bind 127.0.0.1:{grpc_port}\n    server pool 127.0.0.1:{direct_grpc}\n"
        f"listen http\n    bind 127.0.0.1:{http_port}\n    server pool 127.0.0.1:{direct_http}\n"
    )
    process = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=subprocess.DEVNULL)
    try:
        wait_port(grpc_port)
        yield Target("l4 relay", grpc_port, http_port, lambda: [process.pid])
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def nginx(work: Path, direct_grpc: int, direct_http: int) -> Iterator[Target | None]:
    """nginx with one worker (like HAProxy's one thread here) proxying gRPC and HTTP to the pool."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        yield None
        return
    grpc_port, http_port = free_ports(2)
    (work / "nginx").mkdir(exist_ok=True)
    config = work / "nginx" / "nginx.conf"
    keepalive = "keepalive 64; keepalive_requests 100000000;"
    # keepalive_requests: nginx closes an HTTP/2 connection after 1,000 calls by default, which
    # h2load does not survive; the upstream keepalive keeps connections to Triton open like HAProxy's.
    config.write_text(
        f"worker_processes 1; daemon off; pid {work}/nginx/nginx.pid; error_log {work}/nginx/error.log;\n"
        "events { worker_connections 4096; }\n"
        "http {\n  access_log off; keepalive_requests 100000000;\n"
        f"  client_body_temp_path {work}/nginx/body;\n"
        f"  upstream grpc_pool {{ server 127.0.0.1:{direct_grpc}; {keepalive} }}\n"
        f"  upstream http_pool {{ server 127.0.0.1:{direct_http}; {keepalive} }}\n"
        f"  server {{ listen 127.0.0.1:{grpc_port} http2; location / {{ grpc_pass grpc://grpc_pool; }} }}\n"
        f"  server {{ listen 127.0.0.1:{http_port}; location / {{ proxy_pass http://http_pool;"
        ' proxy_http_version 1.1; proxy_set_header Connection ""; } }\n'
        "}\n"
    )
    process = subprocess.Popen(
        [binary, "-c", str(config), "-p", str(work / "nginx")], stdout=subprocess.DEVNULL
    )
    try:
        wait_port(grpc_port)
        yield Target(
            "nginx", grpc_port, http_port, lambda: [p for p in children(process.pid) if p != process.pid]
        )
    finally:
        process.send_signal(signal.SIGQUIT)
        process.wait(10)


def haproxy_binary() -> str:
    """HAProxy from PATH or Debian's /usr/sbin."""
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Until something accepts connections on 127.0.0.1:``port``."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- measuring -----------------------------------------------------------------------------------


def measure(point: Point, target: Target, triton: list[int], work: Path, args: argparse.Namespace) -> Run:
    """Warm up, then one measured run of ``point`` against ``target``."""
    name = point.model.name
    if point.protocol == "grpc":
        payload = work / f"{name}.grpc"
        log = work / "h2load.log"
        h2load(target.grpc_port, payload, point.connections, args.warmup, log)
        proxy, before = target.proxy_pids(), cpu_seconds(triton)
        proxy_before = cpu_seconds(proxy)
        rps, latencies, data = h2load(target.grpc_port, payload, point.connections, args.seconds, log)
        proxy_after, after = cpu_seconds(proxy), cpu_seconds(triton)
        p50_ms, p99_ms, failed = call_figures(latencies)
        calls = len(latencies)
        if data != args.expected_data[name]:
            failed = calls  # every call answered without the message a success carries
    else:
        url = f"http://127.0.0.1:{target.http_port}/v2/models/{name}/infer"
        body, script = work / f"{name}.json", work / "post.lua"
        run_wrk("wrk", script, url, body, connections=point.connections, seconds=args.warmup)
        proxy, before = target.proxy_pids(), cpu_seconds(triton)
        proxy_before = cpu_seconds(proxy)
        load = run_wrk("wrk", script, url, body, connections=point.connections, seconds=args.seconds)
        proxy_after, after = cpu_seconds(proxy), cpu_seconds(triton)
        calls, rps, failed = load.requests, load.rps, load.errors
        p50_ms, p99_ms = load.p50_ms, load.p99_ms
    per_call = 1e6 / max(calls, 1)
    return Run(
        rps=rps,
        p50_ms=p50_ms,
        p99_ms=p99_ms,
        calls=calls,
        failed=failed,
        proxy_cpu_us=(proxy_after - proxy_before) * per_call if target.name != "direct" else 0.0,
        triton_cpu_us=(after - before) * per_call,
    )


def combine(runs: list[Run]) -> Run:
    """Rounds of one target at one point: summed calls, median figures."""
    return Run(
        rps=statistics.median(r.rps for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        calls=sum(r.calls for r in runs),
        failed=sum(r.failed for r in runs),
        proxy_cpu_us=statistics.median(r.proxy_cpu_us for r in runs),
        triton_cpu_us=statistics.median(r.triton_cpu_us for r in runs),
    )


def report(results: dict[Point, dict[str, Run]], args: argparse.Namespace) -> None:
    print(
        f"proxy cost: {args.seconds:g} s per run after {args.warmup:g} s of warm-up, {args.rounds} round(s), "
        "one call in flight per connection; ratio and +p50 against direct; CPU in us per call"
    )
    header = (
        f"  {'point':<18} {'target':<10} {'req/s':>8} {'ratio':>6} {'p50 ms':>7} {'+p50':>6} {'p99 ms':>7}"
        f" {'failed':>6} {'proxy cpu':>9} {'triton cpu':>10}"
    )
    print(header)
    for point, runs in results.items():
        direct = runs["direct"]
        for name, run in runs.items():
            added = run.p50_ms - direct.p50_ms
            print(
                f"  {point.label:<18} {name:<10} {run.rps:8.0f} {run.rps / direct.rps:5.2f}x"
                f" {run.p50_ms:7.2f} {added:+6.2f} {run.p99_ms:7.2f} {run.failed:6d} {run.proxy_cpu_us:9.1f}"
                f" {run.triton_cpu_us:10.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--points", default=",".join(DEFAULT_POINTS), help="model-protocol-connections, ...")
    parser.add_argument("--no-others", action="store_true", help="only direct and the stack's HAProxy")
    args = parser.parse_args()
    points = [Point.parse(text) for text in args.points.split(",")]
    for tool in ("h2load", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: apt-get install nghttp2-client wrk (Debian)")

    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        work = Path(tmp)
        api_port, grpc_port, http_port = free_ports(3)
        settings = Settings(
            state_dir=work / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port
        )
        with local_services(settings, pool_names=("blue",)) as (stack, services):
            for shape in SHAPES.values():
                folder = build_mlp_folder(work / "models", shape)
                archive = pack_directory(folder, work / f"{shape.name}.tar.gz")
                version, _ = services.registry.push(
                    model=shape.name, archive=archive, metadata=VersionMetadata()
                )
                services.deployer.deploy(shape.name, version.number)
                grpc_payload(shape, work / f"{shape.name}.grpc")
                (work / f"{shape.name}.json").write_bytes(request_body(shape))
            (work / "post.lua").write_text(POST_SCRIPT + WRK_REPORT)
            pool = stack.pools["blue"]
            triton = children(pid_in(pool.pid_file))
            haproxy_pid_file = stack.proxy_dir / "haproxy.pid"
            direct = Target("direct", pool.grpc_port, pool.http_port, lambda: [])
            stack_proxy = Target("haproxy", grpc_port, http_port, lambda: [pid_in(haproxy_pid_file)])
            args.expected_data = {}
            for shape in SHAPES.values():
                _, _, args.expected_data[shape.name] = h2load(
                    direct.grpc_port, work / f"{shape.name}.grpc", 1, 1, work / "h2load.log"
                )
            with (
                haproxy_before(work, stack.proxy_config()) as before,
                l4_relay(work, pool.grpc_port, pool.http_port) as relay,
                nginx(work, pool.grpc_port, pool.http_port) as other,
            ):
                targets = [direct, stack_proxy, before]
                if not args.no_others:
                    targets += [relay] + ([other] if other is not None else [])
                results: dict[Point, dict[str, Run]] = {}
                for point in points:
                    rounds: dict[str, list[Run]] = {t.name: [] for t in targets}
                    for round_ in range(args.rounds):
                        for target in targets if round_ % 2 == 0 else list(reversed(targets)):
                            rounds[target.name].append(measure(point, target, triton, work, args))
                    results[point] = {name: combine(runs) for name, runs in rounds.items()}
                    print(f"  measured {point.label}", file=sys.stderr, flush=True)
    report(results, args)


if __name__ == "__main__":
    main()
