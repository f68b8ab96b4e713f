"""The tuner's load generator against a real tritonserver: what it sends, counts and measures.

One tritonserver (explicit model control) serves the example ``mlp`` (one
input) and ``two_inputs`` (two inputs, two outputs). Triton's own inference
statistics are the witness of how many requests arrived.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from triton_helpers import TritonServer, load_examples_module, running_triton, wait_until

from controlplane.artifacts.model_config import read_signature
from controlplane.domain.models import ModelSignature
from controlplane.tuning.loadgen import LoadShape, LoadTarget, measure

pytestmark = pytest.mark.integration

examples = load_examples_module()


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("loadgen")
    repository = root / "repository"
    examples.build_mlp(repository)
    examples.build_two_inputs(repository)
    with running_triton(repository, root) as server:
        client = server.grpc_client()
        for model in ("mlp", "two_inputs"):
            client.load_model(model)
        client.close()
        yield server


def _signature(server: TritonServer, model: str) -> ModelSignature:
    return read_signature((server.repository / model / "config.pbtxt").read_bytes(), model_name=model)


def _successes(server: TritonServer, model: str) -> int:
    client = server.grpc_client()
    try:
        stats = client.get_inference_statistics(model, as_json=True)
    finally:
        client.close()
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


def test_it_keeps_requests_in_flight_for_the_duration_and_every_answer_is_one_triton_counted(
    triton: TritonServer,
) -> None:
    before = _successes(triton, "mlp")
    target = LoadTarget(url=triton.grpc_url, model="mlp", version=1, signature=_signature(triton, "mlp"))

    measured = measure(target, LoadShape(concurrency=4, seconds=1.5))

    assert measured.errors == 0
    assert measured.requests > 50
    # Triton updates its statistics just after it answers: wait for the last answers to be counted.
    wait_until(lambda: _successes(triton, "mlp") - before >= measured.requests, timeout=10, what="counted")
    assert _successes(triton, "mlp") - before == measured.requests
    # The measured span is the requested one plus the last requests' completion (slow on a busy machine).
    assert 1.5 <= measured.seconds < 6.0
    assert measured.throughput_rps == pytest.approx(measured.requests / measured.seconds)
    assert measured.p50_ms is not None and measured.p99_ms is not None
    assert 0 < measured.p50_ms <= measured.p99_ms


def test_the_warm_up_is_sent_but_not_measured(triton: TritonServer) -> None:
    before = _successes(triton, "mlp")
    target = LoadTarget(url=triton.grpc_url, model="mlp", version=1, signature=_signature(triton, "mlp"))

    measured = measure(target, LoadShape(concurrency=2, seconds=0.5, warmup_seconds=0.5))

    wait_until(lambda: _successes(triton, "mlp") - before > measured.requests, timeout=10, what="counted")
    sent = _successes(triton, "mlp") - before
    assert measured.errors == 0
    assert sent > measured.requests > 0


def test_inputs_follow_the_declared_names_types_and_dims_of_a_model_with_several(
    triton: TritonServer,
) -> None:
    target = LoadTarget(
        url=triton.grpc_url, model="two_inputs", version=1, signature=_signature(triton, "two_inputs")
    )

    measured = measure(target, LoadShape(concurrency=2, seconds=0.5))

    assert measured.errors == 0, measured.first_error
    assert measured.requests > 10


def test_failed_requests_are_counted_as_errors_with_the_first_reason_and_give_no_latency(
    triton: TritonServer,
) -> None:
    target = LoadTarget(
        url=triton.grpc_url, model="not_loaded", version=1, signature=_signature(triton, "mlp")
    )

    measured = measure(target, LoadShape(concurrency=3, seconds=0.5))

    assert measured.requests == 0
    assert measured.errors > 0
    assert measured.p99_ms is None and measured.throughput_rps == 0
    assert measured.first_error is not None and "not_loaded" in measured.first_error


def test_a_stop_ends_the_load_early(triton: TritonServer) -> None:
    stop = threading.Event()
    target = LoadTarget(url=triton.grpc_url, model="mlp", version=1, signature=_signature(triton, "mlp"))
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    started = time.monotonic()

    measured = measure(target, LoadShape(concurrency=2, seconds=30.0), stop=stop)

    assert time.monotonic() - started < 5.0
    assert measured.requests > 0 and measured.errors == 0


def test_it_runs_from_a_worker_thread_one_event_loop_after_another(triton: TritonServer) -> None:
    target = LoadTarget(url=triton.grpc_url, model="mlp", version=1, signature=_signature(triton, "mlp"))
    results: list[int] = []

    def twice() -> None:
        for _ in range(2):
            results.append(measure(target, LoadShape(concurrency=2, seconds=0.3)).requests)

    worker = threading.Thread(target=twice)
    worker.start()
    worker.join(20)

    assert len(results) == 2 and all(r > 0 for r in results)
