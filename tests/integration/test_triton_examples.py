"""The example models load and infer correctly on a real tritonserver (CPU, Python-based ORT)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from triton_helpers import (
    REPO_ROOT,
    TritonServer,
    load_examples_module,
    shm_files,
    start_triton,
    stub_processes,
)
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration

examples = load_examples_module()
RNG_SEED = 1234


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with both examples, a faulty model and test-only variants."""
    repo = tmp_path_factory.mktemp("repo")
    examples.build_mlp(repo)
    examples.build_two_inputs(repo)
    examples.build_faulty(repo, "faulty")
    examples.build_mlp(repo, name="mlp_versions", seed=11, version=1)

    # A queue delay makes concurrent requests land in one execute() call, so
    # the concatenate-run-split path runs for sure.
    batched = examples.build_mlp(repo, name="mlp_batched")
    _edit_config(batched, lambda c: setattr(c.dynamic_batching, "max_queue_delay_microseconds", 300_000))

    def no_batching(config: mc.ModelConfig) -> None:
        config.max_batch_size = 0
        config.ClearField("dynamic_batching")
        config.input[0].dims[:] = [-1, 16]
        config.output[0].dims[:] = [-1, 4]

    _edit_config(examples.build_mlp(repo, name="mlp_nobatch"), no_batching)

    def threads(count: str) -> Any:
        parameter = mc.ModelParameter(string_value=count)
        return lambda c: c.parameters["intra_op_thread_count"].MergeFrom(parameter)

    _edit_config(examples.build_mlp(repo, name="mlp_two_threads"), threads("2"))
    _edit_config(examples.build_mlp(repo, name="mlp_bad_threads"), threads("two"))
    return repo


def _edit_config(model_dir: Path, edit: Any) -> None:
    path = model_dir / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    edit(config)
    path.write_text(text_format.MessageToString(config))


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A real tritonserver over ``repository``; no stub or shm region survives it."""
    work = tmp_path_factory.mktemp("triton")
    triton = start_triton(repository, work)
    print(f"\ntritonserver ready after {triton.startup_seconds:.3f}s")
    try:
        yield triton
    finally:
        started = time.monotonic()
        # stop() SIGTERMs, kills after a grace period, then kills leftover stubs
        # and removes leftover regions of this server's prefix.
        triton.stop()
        print(f"\ntritonserver stopped in {time.monotonic() - started:.3f}s, leftovers: {triton.orphans}")
        assert stub_processes(triton.shm_prefix) == []
        assert shm_files(triton.shm_prefix) == []


@pytest.fixture(scope="module")
def client(server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    """A gRPC client for the module's server, with the good models already loaded.

    Loading means starting one stub process per model (~1.5 s each); Triton
    loads different models in parallel, which keeps this module fast.
    """
    started = time.monotonic()
    with ThreadPoolExecutor(len(PRELOADED)) as pool:
        list(pool.map(lambda name: _load_with_own_client(server, name), PRELOADED))
    print(f"{len(PRELOADED)} models loaded in parallel in {time.monotonic() - started:.3f}s")
    triton_client = server.grpc_client()
    yield triton_client
    triton_client.close()


PRELOADED = ("mlp", "two_inputs", "mlp_batched", "mlp_nobatch", "mlp_versions")


def _load(client: grpcclient.InferenceServerClient, name: str) -> None:
    started = time.monotonic()
    client.load_model(name)
    print(f"load_model({name!r}) took {time.monotonic() - started:.3f}s")
    assert client.is_model_ready(name)


def _load_with_own_client(server: TritonServer, name: str) -> None:
    own_client = server.grpc_client()
    try:
        _load(own_client, name)
    finally:
        own_client.close()


def _infer(
    client: grpcclient.InferenceServerClient,
    model: str,
    inputs: dict[str, np.ndarray],
    outputs: list[str],
    version: str = "",
) -> dict[str, np.ndarray]:
    infer_inputs = []
    for name, value in inputs.items():
        infer_input = grpcclient.InferInput(name, list(value.shape), "FP32")
        infer_input.set_data_from_numpy(value)
        infer_inputs.append(infer_input)
    requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
    result = client.infer(model, infer_inputs, outputs=requested, model_version=version)
    return {name: result.as_numpy(name) for name in outputs}


def _assert_matches(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert actual.keys() <= expected.keys()
    for name, value in actual.items():
        assert value.shape == expected[name].shape, name
        assert np.allclose(value, expected[name], rtol=1e-5, atol=1e-6), name


def test_committed_examples_are_what_the_script_builds(tmp_path: Path) -> None:
    examples.build_mlp(tmp_path)
    examples.build_two_inputs(tmp_path)
    for relative in (
        "mlp/config.pbtxt",
        "mlp/1/model.onnx",
        "two_inputs/config.pbtxt",
        "two_inputs/1/model.onnx",
    ):
        committed = REPO_ROOT / "model_repository" / relative
        assert committed.read_bytes() == (tmp_path / relative).read_bytes(), relative


def test_mlp_infers_like_onnxruntime(client: grpcclient.InferenceServerClient, repository: Path) -> None:
    assert client.is_model_ready("mlp")
    x = np.random.default_rng(RNG_SEED).standard_normal((5, 16)).astype(np.float32)
    actual = _infer(client, "mlp", {"INPUT0": x}, ["OUTPUT0"])
    _assert_matches(actual, examples.reference_outputs(repository / "mlp", {"INPUT0": x}))


def test_two_inputs_infers_both_outputs(client: grpcclient.InferenceServerClient, repository: Path) -> None:
    assert client.is_model_ready("two_inputs")
    rng = np.random.default_rng(RNG_SEED)
    feed = {name: rng.standard_normal((3, 8)).astype(np.float32) for name in ("A", "B")}
    actual = _infer(client, "two_inputs", feed, ["OUT", "SUM"])
    expected = examples.reference_outputs(repository / "two_inputs", feed)
    _assert_matches(actual, expected)
    assert np.allclose(actual["SUM"], feed["A"] + feed["B"], rtol=1e-5)

    # An unrequested output is dropped, as with the native backend.
    only_sum = _infer(client, "two_inputs", feed, ["SUM"])
    assert list(only_sum) == ["SUM"]


def test_concurrent_requests_are_batched_and_split_back(
    server: TritonServer, client: grpcclient.InferenceServerClient, repository: Path
) -> None:
    assert client.is_model_ready("mlp_batched")
    rng = np.random.default_rng(RNG_SEED)
    # Different batch sizes per request so a wrong split would show.
    inputs = [rng.standard_normal((1 + i % 4, 16)).astype(np.float32) for i in range(8)]
    results: list[dict[str, np.ndarray] | BaseException | None] = [None] * len(inputs)
    barrier = threading.Barrier(len(inputs))

    def worker(index: int) -> None:
        own_client = server.grpc_client()
        try:
            barrier.wait()
            results[index] = _infer(own_client, "mlp_batched", {"INPUT0": inputs[index]}, ["OUTPUT0"])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            results[index] = exc
        finally:
            own_client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    for index, result in enumerate(results):
        assert isinstance(result, dict), f"request {index}: {result!r}"
        expected = examples.reference_outputs(repository / "mlp_batched", {"INPUT0": inputs[index]})
        _assert_matches(result, expected)

    requests = sum(len(x) for x in inputs)
    # Triton counts an execution after its responses went out: on a busy machine the last ones lag a
    # little, and a count still at 0 is left out of the JSON (proto3 omits default values).
    deadline = time.monotonic() + 10
    while True:
        stats = client.get_inference_statistics("mlp_batched", as_json=True)["model_stats"][0]
        if int(stats.get("inference_count", 0)) >= requests or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert int(stats.get("inference_count", 0)) == requests
    # Fewer executions than requests: several requests shared one session.run.
    assert 0 < int(stats.get("execution_count", 0)) < len(inputs)


def test_max_batch_size_zero_runs_per_request(
    client: grpcclient.InferenceServerClient, repository: Path
) -> None:
    assert client.is_model_ready("mlp_nobatch")
    x = np.random.default_rng(RNG_SEED).standard_normal((3, 16)).astype(np.float32)
    actual = _infer(client, "mlp_nobatch", {"INPUT0": x}, ["OUTPUT0"])
    _assert_matches(actual, examples.reference_outputs(repository / "mlp_nobatch", {"INPUT0": x}))


def test_new_version_serves_its_own_weights(
    client: grpcclient.InferenceServerClient, repository: Path
) -> None:
    model_dir = repository / "mlp_versions"
    x = np.random.default_rng(RNG_SEED).standard_normal((2, 16)).astype(np.float32)
    assert client.is_model_ready("mlp_versions")
    v1 = _infer(client, "mlp_versions", {"INPUT0": x}, ["OUTPUT0"])
    _assert_matches(v1, examples.reference_outputs(model_dir, {"INPUT0": x}, version=1))

    examples.build_mlp(repository, name="mlp_versions", seed=12, version=2)
    _load(client, "mlp_versions")
    v2 = _infer(client, "mlp_versions", {"INPUT0": x}, ["OUTPUT0"], version="2")
    _assert_matches(v2, examples.reference_outputs(model_dir, {"INPUT0": x}, version=2))
    assert not np.allclose(v1["OUTPUT0"], v2["OUTPUT0"])


def _failed_load_reason(client: grpcclient.InferenceServerClient, name: str) -> str:
    """Load ``name``, which must fail; the reason Triton's index gives for it (UNAVAILABLE)."""
    with pytest.raises(InferenceServerException):
        client.load_model(name)
    index = client.get_model_repository_index(as_json=True)["models"]
    entry = next(model for model in index if model["name"] == name)
    assert entry["state"] == "UNAVAILABLE"
    assert not client.is_model_ready(name)
    return str(entry["reason"])


def test_faulty_model_fails_to_load_with_reason(client: grpcclient.InferenceServerClient) -> None:
    assert "INVALID_GRAPH" in _failed_load_reason(client, "faulty")


def test_the_native_backends_thread_parameter_is_honoured_and_a_bad_one_fails_the_load_naming_it(
    client: grpcclient.InferenceServerClient, repository: Path
) -> None:
    _load(client, "mlp_two_threads")
    data = np.random.default_rng(RNG_SEED).standard_normal((2, 16)).astype(np.float32)
    result = _infer(client, "mlp_two_threads", {"INPUT0": data}, ["OUTPUT0"])
    _assert_matches(result, examples.reference_outputs(repository / "mlp_two_threads", {"INPUT0": data}))

    assert "parameter intra_op_thread_count is 'two'" in _failed_load_reason(client, "mlp_bad_threads")
