"""Pool sampling against a real tritonserver behind a real haproxy: what each source counts.

One Triton pool "blue" serves ``mlp`` and ``mlp_loose`` (the same MLP with
INPUT0 dims [-1], so a wrong width reaches the backend and comes back as an
error *response*). Requests go through HAProxy with plain tritonclient; the
analysis window between two ``sample_pool`` readings must count them.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from triton_helpers import TritonServer, load_examples_module, running_triton, stop_process, wait_until
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from controlplane.domain.analysis import Gates, PoolSample, evaluate, measure
from controlplane.rollout.sampling import sample_pool
from controlplane.runtime.ports import free_ports
from controlplane.traffic.haproxy import (
    HAProxyRuntime,
    PoolEndpoint,
    ProxyConfig,
    haproxy_binary,
    haproxy_command,
    render_config,
)
from controlplane.triton.metrics import TritonMetricsClient

pytestmark = pytest.mark.integration

examples = load_examples_module()
POOL = "blue"
MODELS = ("mlp", "mlp_loose")


@dataclass
class ProxiedPool:
    triton: TritonServer
    runtime: HAProxyRuntime
    grpc_url: str
    http_url: str


def _build_repository(repo: Path) -> Path:
    examples.build_mlp(repo)
    loose = examples.build_mlp(repo, name="mlp_loose")
    config_path = loose / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    config.input[0].dims[:] = [-1]
    config_path.write_text(text_format.MessageToString(config))
    return repo


def _servers_up(runtime: HAProxyRuntime) -> bool:
    rows = [r for r in runtime.server_stats() if r.kind == "server" and r.svname == POOL]
    # L7OK: a health check has passed, so no request races the first check.
    return len(rows) == 2 and all(r.status == "UP" and r.check_status == "L7OK" for r in rows)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[ProxiedPool]:
    haproxy_binary()  # fails with an install hint if haproxy is missing
    repo = _build_repository(tmp_path / "repo")
    with running_triton(repo, tmp_path / "triton") as triton:
        client = triton.grpc_client()
        try:
            # Load before HAProxy starts: Triton is "not ready" while it loads.
            with ThreadPoolExecutor(len(MODELS)) as loaders:
                list(loaders.map(client.load_model, MODELS))
        finally:
            client.close()
        # A short directory for the admin socket: sun_path holds 107 bytes.
        sockdir = Path(tempfile.mkdtemp(prefix="cpps", dir="/tmp"))
        grpc_port, http_port = free_ports(2)
        cfg = ProxyConfig(
            grpc_bind=("127.0.0.1", grpc_port),
            http_bind=("127.0.0.1", http_port),
            admin_socket=sockdir / "admin.sock",
            pools=(
                PoolEndpoint(
                    name=POOL,
                    host="127.0.0.1",
                    grpc_port=triton.grpc_port,
                    http_port=triton.http_port,
                    weight=1,
                ),
            ),
        )
        config_path = tmp_path / "haproxy.cfg"
        config_path.write_text(render_config(cfg))
        log_path = tmp_path / "haproxy.log"
        with log_path.open("wb") as log:
            haproxy = subprocess.Popen(
                haproxy_command(config_path), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        runtime = HAProxyRuntime(cfg.admin_socket)
        try:
            try:
                wait_until(lambda: _servers_up(runtime), timeout=10, what="haproxy servers UP")
            except TimeoutError:
                pytest.fail(f"haproxy servers not UP:\n{log_path.read_text(errors='replace')}")
            yield ProxiedPool(
                triton=triton,
                runtime=runtime,
                grpc_url=f"127.0.0.1:{grpc_port}",
                http_url=f"127.0.0.1:{http_port}",
            )
        finally:
            stop_process(haproxy)
            shutil.rmtree(sockdir, ignore_errors=True)


def _grpc_call(
    client: grpcclient.InferenceServerClient, model: str, name: str, shape: tuple[int, ...]
) -> str:
    tensor = grpcclient.InferInput(name, list(shape), "FP32")
    tensor.set_data_from_numpy(np.ones(shape, dtype=np.float32))
    try:
        client.infer(model, [tensor])
    except InferenceServerException as exc:
        return str(exc.status())
    return "OK"


def _http_call(client: httpclient.InferenceServerClient, shape: tuple[int, ...]) -> str:
    tensor = httpclient.InferInput("INPUT0", list(shape), "FP32")
    tensor.set_data_from_numpy(np.ones(shape, dtype=np.float32))
    try:
        client.infer("mlp", [tensor])
    except InferenceServerException as exc:
        return str(exc.status())
    return "OK"


def test_window_counts_every_proxied_request_and_every_failed_grpc_call(pool: ProxiedPool) -> None:
    good, wrong_shape, wrong_name, backend_error = 24, 3, 2, 3
    http_good, http_wrong_shape = 4, 2
    metrics = TritonMetricsClient(f"http://127.0.0.1:{pool.triton.metrics_port}")
    grpc_proxy = grpcclient.InferenceServerClient(pool.grpc_url)
    http_proxy = httpclient.InferenceServerClient(pool.http_url)
    try:

        def take() -> PoolSample:
            return sample_pool(pool=POOL, runtime=pool.runtime, triton=metrics, models=MODELS)

        before = take()
        outcomes = (
            [_grpc_call(grpc_proxy, "mlp", "INPUT0", (1, 16)) for _ in range(good)]
            + [_grpc_call(grpc_proxy, "mlp", "INPUT0", (1, 8)) for _ in range(wrong_shape)]
            + [_grpc_call(grpc_proxy, "mlp", "WRONG", (1, 16)) for _ in range(wrong_name)]
            + [_grpc_call(grpc_proxy, "mlp_loose", "INPUT0", (1, 8)) for _ in range(backend_error)]
        )
        http_outcomes = [_http_call(http_proxy, (1, 16)) for _ in range(http_good)] + [
            _http_call(http_proxy, (1, 8)) for _ in range(http_wrong_shape)
        ]
        # Triton counts a request after its response went out: on a busy machine the last one may lag.
        after = take()
        deadline = time.monotonic() + 5
        while measure(before, after).triton_requests < good + backend_error + http_good:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
            after = take()
    finally:
        grpc_proxy.close()
        http_proxy.close()
        metrics.close()

    failed = wrong_shape + wrong_name + backend_error
    assert outcomes.count("OK") == good
    assert outcomes.count("StatusCode.INVALID_ARGUMENT") == failed
    assert http_outcomes == ["OK"] * http_good + ["400"] * http_wrong_shape

    m = measure(before, after)
    # HAProxy: one stot per gRPC call (an h2 stream) and per HTTP request;
    # health checks are not counted.
    assert m.proxy_requests == good + failed + http_good + http_wrong_shape
    # Every failed gRPC call is in the stick table, the backend's error
    # response included; HTTP 400s are not pool errors.
    assert m.proxy_errors == failed
    # Triton: refused requests (wrong shape or name) are in neither counter,
    # and the backend's error responses count as successes.
    assert m.triton_requests == good + backend_error + http_good
    assert m.triton_failures == 0
    assert m.requests == good + failed + http_good + http_wrong_shape
    assert m.errors == failed
    assert not m.proxy_restarted and not m.triton_restarted
    assert m.p99_ms is not None and m.p99_ms > 0

    verdict = evaluate(m, Gates(max_error_rate=0.05))
    assert not verdict.passed
    assert verdict.breaches == (
        f"error rate {m.error_rate:.4g} > max 0.05 ({failed} of {m.requests} requests)",
    )
