"""Sampling one pool from HAProxy's statistics and Triton's metrics (captured answers).

``fixtures/haproxy_show_stat_two_pools.txt`` and
``fixtures/haproxy_show_table_grpc_errors.txt`` are the answers of Debian's
haproxy 2.6 (config from ``render_config``) with pools "blue" and "green"
(weight 1 each, both in front of one tritonserver with ``mlp`` and a variant
``mlp_loose`` whose INPUT0 accepts any width), after, through the proxy:
10 good gRPC calls, 6 gRPC calls with a wrong shape, 3 gRPC calls to
``mlp_loose`` that its backend answered with an error, 4 good HTTP calls and 2
HTTP calls with a wrong shape (400). Round robin gave blue 10 gRPC calls (5
failed) and 3 HTTP ones (1 answered 400), green 9 gRPC (4 failed) and 3 HTTP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controlplane.domain.analysis import PoolSample
from controlplane.errors import ProxyError, TritonUnavailable
from controlplane.rollout.sampling import PoolSampler, sample_pool
from controlplane.traffic.haproxy_runtime import HAProxyRuntime, StatRow, parse_stat_csv, parse_table
from controlplane.triton.metrics import TritonMetricsClient

FIXTURES = Path(__file__).parent / "fixtures"
SHOW_STAT = (FIXTURES / "haproxy_show_stat_two_pools.txt").read_text()
SHOW_TABLE = (FIXTURES / "haproxy_show_table_grpc_errors.txt").read_text()
TRITON_TRAFFIC = (FIXTURES / "triton_metrics_traffic.txt").read_text()


class CannedRuntime(HAProxyRuntime):
    """An HAProxyRuntime whose reads return captured answers instead of asking a socket."""

    def __init__(self, rows: list[StatRow], table: str = SHOW_TABLE) -> None:
        super().__init__(Path("/nonexistent/admin.sock"))
        self.rows = rows
        self.table_text = table

    def server_stats(self) -> list[StatRow]:
        return list(self.rows)

    def grpc_error_counts(self) -> dict[str, int]:
        return {e.key: e.data.get("http_req_cnt", 0) for e in parse_table(self.table_text)}


@pytest.fixture
def triton() -> Iterator[TritonMetricsClient]:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text=TRITON_TRAFFIC))
    client = TritonMetricsClient("http://triton:8002", transport=transport)
    yield client
    client.close()


def test_sample_sums_the_pools_server_rows_of_both_backends(triton: TritonMetricsClient) -> None:
    runtime = CannedRuntime(parse_stat_csv(SHOW_STAT))
    sample = sample_pool(pool="blue", runtime=runtime, triton=triton, models=["mlp"], clock=lambda: 42.0)
    assert sample == PoolSample(
        at=42.0,
        proxy_requests=10 + 3,
        # gRPC errors from the table; the HTTP 400 is not a pool error.
        proxy_errors=5,
        triton_success=10,
        triton_failure=0,
        p99_us=563.0,
    )


def test_other_pools_and_backend_totals_are_not_counted(triton: TritonMetricsClient) -> None:
    runtime = CannedRuntime(parse_stat_csv(SHOW_STAT))
    green = sample_pool(pool="green", runtime=runtime, triton=triton, models=["mlp"])
    assert (green.proxy_requests, green.proxy_errors) == (9 + 3, 4)


def test_http_5xx_and_response_errors_count_as_proxy_errors(triton: TritonMetricsClient) -> None:
    rows = [
        dataclasses.replace(r, hrsp_5xx=2, eresp=1, econ=7) if r.svname == "blue" else r
        for r in parse_stat_csv(SHOW_STAT)
    ]
    sample = sample_pool(pool="blue", runtime=CannedRuntime(rows), triton=triton, models=["mlp"])
    # Both blue rows (gRPC and HTTP) got 2 + 1; econ (retried elsewhere) is left out.
    assert sample.proxy_errors == 5 + 2 * (2 + 1)


def test_traffic_and_errors_of_the_pools_standby_count_for_the_pool(triton: TritonMetricsClient) -> None:
    rows = parse_stat_csv(SHOW_STAT)
    # What the standby of blue carried while no weighted server was usable.
    standby = [
        dataclasses.replace(r, svname="blue_standby", stot=4, hrsp_5xx=1, eresp=0)
        for r in rows
        if r.svname == "blue" and r.kind == "server"
    ]
    table = SHOW_TABLE.rstrip("\n") + "\n0x55d0c0ffee00: key=blue_standby use=0 exp=0 http_req_cnt=3\n\n"
    runtime = CannedRuntime(rows + standby, table=table)
    sample = sample_pool(pool="blue", runtime=runtime, triton=triton, models=["mlp"])
    assert sample.proxy_requests == 10 + 3 + 2 * 4
    assert sample.proxy_errors == 5 + 3 + 2 * 1
    # Green is untouched by blue's standby.
    green = sample_pool(pool="green", runtime=runtime, triton=triton, models=["mlp"])
    assert (green.proxy_requests, green.proxy_errors) == (9 + 3, 4)


def test_a_pool_without_table_entry_has_no_grpc_errors(triton: TritonMetricsClient) -> None:
    empty_table = "# table: grpc_errors, type: string, size:1024, used:0\n\n"
    runtime = CannedRuntime(parse_stat_csv(SHOW_STAT), table=empty_table)
    assert sample_pool(pool="blue", runtime=runtime, triton=triton, models=["mlp"]).proxy_errors == 0


def test_a_pool_unknown_to_the_proxy_is_an_error_not_zero_traffic(triton: TritonMetricsClient) -> None:
    runtime = CannedRuntime(parse_stat_csv(SHOW_STAT))
    with pytest.raises(ProxyError, match="pool 'purple' has no server in backend"):
        sample_pool(pool="purple", runtime=runtime, triton=triton, models=["mlp"])


def test_a_pool_missing_from_one_backend_is_an_error(triton: TritonMetricsClient) -> None:
    rows = [r for r in parse_stat_csv(SHOW_STAT) if not (r.pxname == "triton_http" and r.svname == "blue")]
    with pytest.raises(ProxyError, match="triton_http") as info:
        sample_pool(pool="blue", runtime=CannedRuntime(rows), triton=triton, models=["mlp"])
    assert info.value.details == {"pool": "blue", "missing_backends": ["triton_http"]}


def test_triton_unavailable_propagates() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with TritonMetricsClient("http://triton:8002", transport=httpx.MockTransport(refuse)) as down:
        runtime = CannedRuntime(parse_stat_csv(SHOW_STAT))
        with pytest.raises(TritonUnavailable):
            sample_pool(pool="blue", runtime=runtime, triton=down, models=["mlp"])


def test_pool_sampler_uses_each_pools_triton(triton: TritonMetricsClient) -> None:
    idle_text = (FIXTURES / "triton_metrics_idle.txt").read_text()
    idle = TritonMetricsClient(
        "http://green:8002",
        transport=httpx.MockTransport(lambda request: httpx.Response(200, text=idle_text)),
    )
    with idle:
        sampler = PoolSampler(
            CannedRuntime(parse_stat_csv(SHOW_STAT)), {"blue": triton, "green": idle}, clock=lambda: 7.0
        )
        blue = sampler("blue", ["mlp"])
        green = sampler("green", ["mlp"])
    assert (blue.at, blue.triton_success, blue.proxy_requests) == (7.0, 10, 13)
    assert (green.triton_success, green.p99_us, green.proxy_requests) == (0, None, 12)


def test_pool_sampler_without_a_triton_for_the_pool_says_so(triton: TritonMetricsClient) -> None:
    sampler = PoolSampler(CannedRuntime(parse_stat_csv(SHOW_STAT)), {"blue": triton})
    with pytest.raises(KeyError, match="no Triton metrics client for pool 'green'"):
        sampler("green", ["mlp"])


# --------------------------------------------------------------------------
# A pool of two replicas: fixtures/haproxy_show_stat_two_replicas.txt (see test_haproxy_config)

STAT_TWO_REPLICAS = (FIXTURES / "haproxy_show_stat_two_replicas.txt").read_text()


def _metrics_client(text: str, host: str) -> TritonMetricsClient:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text=text))
    return TritonMetricsClient(f"http://{host}:8002", transport=transport)


def _two_replica_rows() -> list[StatRow]:
    """Blue's traffic spread over both replicas, one standby, both backends; green's on its first replica."""
    traffic = {
        ("triton_grpc", "blue_r1"): (7, 1, 0),
        ("triton_grpc", "blue_r2"): (6, 0, 1),
        ("triton_grpc", "blue_r2_standby"): (2, 0, 0),
        ("triton_http", "blue_r1"): (3, 1, 0),
        ("triton_http", "blue_r1_standby"): (1, 0, 0),
        ("triton_grpc", "green_r1"): (50, 9, 9),
    }
    rows = []
    for row in parse_stat_csv(STAT_TWO_REPLICAS):
        stot, hrsp_5xx, eresp = traffic.get((row.pxname, row.svname), (row.stot, row.hrsp_5xx, row.eresp))
        rows.append(dataclasses.replace(row, stot=stot, hrsp_5xx=hrsp_5xx, eresp=eresp))
    return rows


def test_a_pool_of_two_replicas_sums_every_replica_and_standby_row_and_table_entry() -> None:
    table = (
        "# table: grpc_errors, type: string, size:1024, used:4\n"
        "0x1: key=blue_r1 use=0 exp=0 http_req_cnt=2\n"
        "0x2: key=blue_r2 use=0 exp=0 http_req_cnt=3\n"
        "0x3: key=blue_r2_standby use=0 exp=0 http_req_cnt=1\n"
        "0x4: key=green_r1 use=0 exp=0 http_req_cnt=40\n\n"
    )
    runtime = CannedRuntime(_two_replica_rows(), table=table)
    slower = TRITON_TRAFFIC.replace(
        'nv_inference_request_summary_us{model="mlp",version="2",quantile="0.99"} 563',
        'nv_inference_request_summary_us{model="mlp",version="2",quantile="0.99"} 1200',
    )
    first, second = _metrics_client(TRITON_TRAFFIC, "r1"), _metrics_client(slower, "r2")
    with first, second:
        sample = sample_pool(
            pool="blue", runtime=runtime, triton=[first, second], models=["mlp"], clock=lambda: 1.0
        )
    assert sample == PoolSample(
        at=1.0,
        proxy_requests=7 + 6 + 2 + 3 + 1,
        # Table entries of every blue server (replicas and standbys), then 5xx and eresp of their rows.
        proxy_errors=(2 + 3 + 1) + (1 + 1) + 1,
        # Each replica counted 10 successes of mlp.
        triton_success=20,
        triton_failure=0,
        # The slower replica's p99 is the pool's.
        p99_us=1200.0,
    )


def test_a_replica_whose_metrics_do_not_answer_fails_the_pools_reading() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    good = _metrics_client(TRITON_TRAFFIC, "r1")
    down = TritonMetricsClient("http://r2:8002", transport=httpx.MockTransport(refuse))
    with good, down:
        sampler = PoolSampler(CannedRuntime(_two_replica_rows()), {"blue": [good, down]})
        with pytest.raises(TritonUnavailable, match="r2"):
            sampler("blue", ["mlp"])


def test_a_pool_of_replicas_missing_from_one_backend_is_an_error() -> None:
    rows = [
        r
        for r in _two_replica_rows()
        if not (r.pxname == "triton_http" and r.svname in ("blue_r1", "blue_r2"))
    ]
    with _metrics_client(TRITON_TRAFFIC, "r1") as client, pytest.raises(ProxyError, match="triton_http"):
        # A standby row alone does not make the pool present: it serves only when its replica is down.
        sample_pool(pool="blue", runtime=CannedRuntime(rows), triton=[client], models=["mlp"])
