"""Parsing Triton's /metrics text, against text captured from a real tritonserver 2.51.

The fixtures' header comments say how they were captured: which models were
loaded and which requests were sent (good ones, and ones failing in each way
seen in practice). What Triton counted, as these tests record:

* Requests refused before the model runs (wrong shape, wrong input name, wrong
  dtype, batch over max_batch_size, unknown version) appear in NEITHER
  ``nv_inference_request_success`` NOR ``nv_inference_request_failure``.
* A Python-backend response carrying an error (the onnxruntime stand-in
  answering a wrong-width input, or a model returning
  ``InferenceResponse(error=...)``) counts as a SUCCESS.
* Only an exception escaping ``execute`` counts as a failure (reason BACKEND).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from controlplane.errors import TritonUnavailable
from controlplane.runtime.ports import free_ports
from controlplane.triton.metrics import (
    TritonCounters,
    TritonMetricsClient,
    combine_counters,
    parse_triton_metrics,
)

FIXTURES = Path(__file__).parent / "fixtures"
TRAFFIC = (FIXTURES / "triton_metrics_traffic.txt").read_text()
IDLE = (FIXTURES / "triton_metrics_idle.txt").read_text()


def test_mlp_counts_only_its_good_requests_over_both_versions() -> None:
    # 10 good requests (5 to v1, 5 to v2) and 8 refused ones were sent.
    counters = parse_triton_metrics(TRAFFIC, ["mlp"])
    assert counters.success == 10
    assert counters.failure == 0
    assert counters.models_seen == frozenset({"mlp"})


def test_refused_requests_are_in_neither_triton_counter() -> None:
    good, refused = 10, 3 + 2 + 1 + 1 + 1  # shape, input name, dtype, batch size, version
    counters = parse_triton_metrics(TRAFFIC, ["mlp"])
    assert counters.success + counters.failure == good
    assert counters.success + counters.failure != good + refused


def test_backend_error_responses_count_as_successes() -> None:
    # mlp_loose: 4 good + 5 answered with onnxruntime's INVALID_ARGUMENT error.
    loose = parse_triton_metrics(TRAFFIC, ["mlp_loose"])
    assert (loose.success, loose.failure) == (4 + 5, 0)
    # py_raises: 2 good + 4 error responses are successes; 3 raised in execute().
    raises = parse_triton_metrics(TRAFFIC, ["py_raises"])
    assert (raises.success, raises.failure) == (2 + 4, 3)


def test_counters_sum_over_the_given_models() -> None:
    counters = parse_triton_metrics(TRAFFIC, {"mlp", "mlp_loose", "py_raises"})
    assert counters.success == 10 + 9 + 6
    assert counters.failure == 3
    assert counters.models_seen == frozenset({"mlp", "mlp_loose", "py_raises"})


def test_failures_of_every_reason_are_added() -> None:
    # Triton reports REJECTED, CANCELED, BACKEND and OTHER as separate series.
    text = TRAFFIC.replace(
        'nv_inference_request_failure{model="py_raises",reason="OTHER",version="1"} 0',
        'nv_inference_request_failure{model="py_raises",reason="OTHER",version="1"} 2',
    ).replace(
        'nv_inference_request_failure{model="py_raises",reason="REJECTED",version="1"} 0',
        'nv_inference_request_failure{model="py_raises",reason="REJECTED",version="1"} 5',
    )
    assert text != TRAFFIC
    assert parse_triton_metrics(text, ["py_raises"]).failure == 3 + 2 + 5


def test_p99_is_the_worst_over_models_and_versions() -> None:
    assert parse_triton_metrics(TRAFFIC, ["mlp"]).p99_us == 563.0  # v1 453, v2 563
    assert parse_triton_metrics(TRAFFIC, ["py_raises"]).p99_us == 376.0
    assert parse_triton_metrics(TRAFFIC, ["mlp", "mlp_loose", "py_raises"]).p99_us == 982.0


def test_idle_models_have_zero_counters_and_no_p99() -> None:
    # Triton prints "Nan" for quantiles of a summary without recent requests.
    assert 'quantile="0.99"} Nan' in IDLE
    counters = parse_triton_metrics(IDLE, ["mlp", "mlp_loose", "py_raises"])
    assert counters == TritonCounters(
        success=0,
        failure=0,
        p99_us=None,
        models_seen=frozenset({"mlp", "mlp_loose", "py_raises"}),
    )


def test_nan_p99_of_one_version_is_ignored() -> None:
    text = TRAFFIC.replace(
        'nv_inference_request_summary_us{model="mlp",version="2",quantile="0.99"} 563',
        'nv_inference_request_summary_us{model="mlp",version="2",quantile="0.99"} Nan',
    )
    assert text != TRAFFIC
    assert parse_triton_metrics(text, ["mlp"]).p99_us == 453.0


def test_p99_is_none_without_the_summary_family() -> None:
    # A Triton started without summary_latencies=true exports no summaries.
    text = "\n".join(line for line in TRAFFIC.splitlines() if "summary" not in line) + "\n"
    counters = parse_triton_metrics(text, ["mlp"])
    assert counters.p99_us is None
    assert counters.success == 10


def test_other_quantiles_are_not_taken_for_p99() -> None:
    text = "\n".join(line for line in TRAFFIC.splitlines() if 'quantile="0.99"' not in line) + "\n"
    assert parse_triton_metrics(text, ["mlp"]).p99_us is None


def test_a_model_that_is_not_loaded_contributes_nothing() -> None:
    counters = parse_triton_metrics(TRAFFIC, ["not_loaded"])
    assert counters == TritonCounters(success=0, failure=0, p99_us=None, models_seen=frozenset())
    assert parse_triton_metrics(TRAFFIC, ["mlp", "not_loaded"]).models_seen == frozenset({"mlp"})


def test_model_names_are_matched_exactly() -> None:
    # "mlp" must not pick up "mlp_loose".
    assert parse_triton_metrics(TRAFFIC, ["mlp"]).success == 10
    assert parse_triton_metrics(TRAFFIC, ["ml"]).models_seen == frozenset()


def test_a_bare_string_is_refused_as_models() -> None:
    with pytest.raises(TypeError, match="collection of model names"):
        parse_triton_metrics(TRAFFIC, "mlp")


def test_an_empty_model_set_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one model"):
        parse_triton_metrics(TRAFFIC, [])


def test_text_that_is_not_prometheus_format_raises_value_error() -> None:
    with pytest.raises(ValueError):
        parse_triton_metrics("<html>not metrics</html>\n", ["mlp"])


# -- TritonMetricsClient -------------------------------------------------------------------


def _client(handler: httpx.MockTransport) -> TritonMetricsClient:
    return TritonMetricsClient("http://triton:8002", transport=handler)


def test_scrape_gets_metrics_path_and_parses_it() -> None:
    requested: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requested.append(request)
        return httpx.Response(200, text=TRAFFIC, headers={"content-type": "text/plain; charset=utf-8"})

    with _client(httpx.MockTransport(handler)) as client:
        counters = client.scrape(["mlp"])
    assert counters == parse_triton_metrics(TRAFFIC, ["mlp"])
    assert [str(r.url) for r in requested] == ["http://triton:8002/metrics"]


@pytest.mark.parametrize("url", ["http://h:1", "http://h:1/", "http://h:1/metrics"])
def test_client_url_may_include_the_metrics_path_or_not(url: str) -> None:
    client = TritonMetricsClient(url)
    try:
        assert client.url == "http://h:1/metrics"
    finally:
        client.close()


def test_non_200_answer_is_triton_unavailable() -> None:
    client = _client(httpx.MockTransport(lambda request: httpx.Response(404, text="Not Found")))
    with pytest.raises(TritonUnavailable, match="HTTP 404") as info:
        client.scrape(["mlp"])
    assert info.value.details["status"] == 404


def test_timeout_is_triton_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(TritonUnavailable, match="did not answer: ReadTimeout"):
        _client(httpx.MockTransport(handler)).scrape(["mlp"])


def test_garbage_answer_is_triton_unavailable() -> None:
    client = _client(httpx.MockTransport(lambda request: httpx.Response(200, text="<html>hi</html>\n")))
    with pytest.raises(TritonUnavailable, match="not Prometheus text"):
        client.scrape(["mlp"])


def test_closed_port_is_triton_unavailable() -> None:
    (port,) = free_ports(1)
    with (
        TritonMetricsClient(f"http://127.0.0.1:{port}", timeout=1.0) as client,
        pytest.raises(TritonUnavailable, match="did not answer: ConnectError"),
    ):
        client.scrape(["mlp"])


def test_scrape_refuses_a_bare_string_before_any_request() -> None:
    requested: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requested.append(request)
        return httpx.Response(200, text=TRAFFIC)

    with pytest.raises(TypeError):
        _client(httpx.MockTransport(handler)).scrape("mlp")
    assert requested == []


def test_replica_counters_add_up_and_the_pools_p99_is_the_largest() -> None:
    busy = parse_triton_metrics(TRAFFIC, ["mlp"])
    idle = parse_triton_metrics(IDLE, ["mlp"])
    combined = combine_counters([busy, idle, busy])
    assert (combined.success, combined.failure) == (2 * busy.success, 2 * busy.failure)
    # The idle replica has no p99 (no recent request): it neither lowers nor hides the others'.
    assert idle.p99_us is None
    assert combined.p99_us == busy.p99_us
    assert combined.models_seen == busy.models_seen | idle.models_seen
    assert combine_counters([idle]).p99_us is None
    with pytest.raises(ValueError):
        combine_counters([])
