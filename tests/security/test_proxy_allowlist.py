"""Attacks through the proxy ports: only health, metadata, readiness and inference get through.

Each test replays a request an attacker can send to the ports clients use,
asserts the refusal and its shape (gRPC PERMISSION_DENIED with the proxy's
message; HTTP 403 with a JSON body in Triton's error shape), and that nothing
live changed: same Triton processes, weights, log and trace settings, no
shared-memory region registered, the model still ready.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf.message import Message
from haproxy_stack import MODEL, Stack, grpc_input
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from controlplane.traffic.haproxy import GRPC_ALLOWED_METHODS

from .proxy_fixtures import live_state, proxy_stack

pytestmark = pytest.mark.integration

__all__ = ["proxy_stack"]  # the module-scoped fixture, imported so pytest finds it

GRPC_DENIED_MESSAGE = "this method is not available through the proxy"
HTTP_DENIED_BODY = {"error": "this endpoint is not available through the proxy"}
SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
INFER_BODY = json.dumps(
    {"inputs": [{"name": "INPUT0", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]}
).encode()


@pytest.fixture(scope="module")
def channel(proxy_stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(proxy_stack.grpc_url) as chan:
        yield chan


@pytest.fixture(scope="module")
def before(proxy_stack: Stack) -> dict[str, object]:
    """The live state before any attack of this module."""
    return live_state(proxy_stack)


def _infer_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "INPUT0", "FP32"
    tensor.shape.extend([2])
    request.raw_input_contents.append(np.array([1.0, 2.0], dtype=np.float32).tobytes())
    return request


def _request_for(method_name: str) -> Message:
    """A meaningful request for the allowed methods, an empty one for the others."""
    if method_name in ("ModelInfer", "ModelStreamInfer"):
        return _infer_request()
    input_type = SERVICE.methods_by_name[method_name].input_type
    message: Message = getattr(service_pb2, input_type.name)()
    if method_name in ("ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics"):
        message.name = MODEL  # type: ignore[attr-defined]
    return message


def _call(channel: grpc.Channel, path: str, payload: bytes, *, streaming: bool = False) -> list[bytes]:
    """Call ``path`` with raw bytes; return the raw response messages or raise grpc.RpcError."""
    if streaming:
        responses = channel.stream_stream(path)(iter([payload]), timeout=10)
        return list(responses)
    return [channel.unary_unary(path)(payload, timeout=10)]


def _assert_denied(channel: grpc.Channel, path: str, payload: bytes = b"") -> None:
    with pytest.raises(grpc.RpcError) as denied:
        _call(channel, path, payload)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, denied.value
    assert denied.value.details() == GRPC_DENIED_MESSAGE


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_every_grpc_inference_service_method_is_allowed_or_denied_as_listed(
    channel: grpc.Channel, proxy_stack: Stack, before: dict[str, object], method: str
) -> None:
    path = f"/inference.GRPCInferenceService/{method}"
    payload = _request_for(method).SerializeToString()
    if path in GRPC_ALLOWED_METHODS:
        answers = _call(channel, path, payload, streaming=method == "ModelStreamInfer")
        assert answers, f"{method} answered nothing"
        if method == "ModelStreamInfer":
            response = service_pb2.ModelStreamInferResponse.FromString(answers[0])
            assert response.error_message == ""
            assert response.infer_response.model_name == MODEL
        if method == "ServerLive":
            assert service_pb2.ServerLiveResponse.FromString(answers[0]).live is True
        if method in ("ServerReady", "ModelReady"):
            output_type = SERVICE.methods_by_name[method].output_type
            assert getattr(service_pb2, output_type.name).FromString(answers[0]).ready is True
    else:
        _assert_denied(channel, path, payload)
    assert live_state(proxy_stack) == before


def test_grpc_allowlist_names_only_methods_the_service_has(proxy_stack: Stack) -> None:
    known = {f"/inference.GRPCInferenceService/{m.name}" for m in SERVICE.methods}
    known.add("/grpc.health.v1.Health/Check")
    assert set(GRPC_ALLOWED_METHODS) <= known


def test_standard_grpc_health_check_passes_through_and_reports_serving(channel: grpc.Channel) -> None:
    # HealthCheckRequest{service: ""} is the empty message; SERVING is field 1 = 1.
    answer = _call(channel, "/grpc.health.v1.Health/Check", b"")[0]
    assert answer == b"\x08\x01"


@pytest.mark.parametrize(
    "path",
    [
        "/inference.GRPCInferenceService/NoSuchMethod",
        "/inference.GRPCInferenceService/ModelInfer/",
        "/inference.GRPCInferenceService/ModelInfer?x=1",
        "/inference.grpcinferenceservice/ModelInfer",
        "/inference.GRPCInferenceService/modelinfer",
        "/inference.GRPCInferenceService/Repository%49ndex",
        "/inference.GRPCInferenceService%2FRepositoryIndex",
        "//inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/../inference.GRPCInferenceService/RepositoryIndex",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ],
)
def test_unknown_methods_other_services_and_path_tricks_are_denied_over_grpc(
    channel: grpc.Channel, proxy_stack: Stack, before: dict[str, object], path: str
) -> None:
    _assert_denied(channel, path)
    assert live_state(proxy_stack) == before


def _http(stack: Stack, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """Send ``path`` exactly as written (no normalising client in between)."""
    host, port = stack.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


HTTP_ALLOWED = [
    ("GET", "/v2/health/live", None),
    ("GET", "/v2/health/ready", None),
    ("GET", "/v2", None),
    ("GET", f"/v2/models/{MODEL}", None),
    ("GET", f"/v2/models/{MODEL}/versions/1", None),
    ("GET", f"/v2/models/{MODEL}/ready", None),
    ("GET", f"/v2/models/{MODEL}/versions/1/ready", None),
    ("POST", f"/v2/models/{MODEL}/infer", INFER_BODY),
    ("POST", f"/v2/models/{MODEL}/versions/1/infer", INFER_BODY),
]


@pytest.mark.parametrize(("method", "path", "body"), HTTP_ALLOWED)
def test_health_metadata_readiness_and_inference_pass_over_http(
    proxy_stack: Stack, method: str, path: str, body: bytes | None
) -> None:
    status, answer = _http(proxy_stack, method, path, body)
    assert status == 200, answer


def test_a_chunked_request_body_is_refused_before_it_reaches_triton(proxy_stack: Stack) -> None:
    # Triton before 25.07 overflows its stack on a body of many tiny chunks (CVE-2025-23310/23311).
    host, port = proxy_stack.http_url.rsplit(":", 1)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(INFER_BODY[i : i + 6]), INFER_BODY[i : i + 6])
        for i in range(0, len(INFER_BODY), 6)
    )
    request = (
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode() + chunks + b"0\r\n\r\n"
    # One write: the proxy answers at the headers and may close before a slower client is done.
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")

    assert head.split(b"\r\n")[0] == b"HTTP/1.1 411 Length Required"
    assert "chunked request bodies are not accepted" in json.loads(body)["error"]
    assert _http(proxy_stack, "POST", f"/v2/models/{MODEL}/infer", INFER_BODY)[0] == 200


@pytest.mark.parametrize("endpoint", ["generate", "generate_stream"])
def test_generate_extension_reaches_triton(proxy_stack: Stack, endpoint: str) -> None:
    # The identity model is no generate model: Triton itself answers, not the proxy.
    body = json.dumps({"INPUT0": [1.0, 2.0]}).encode()
    status, answer = _http(proxy_stack, "POST", f"/v2/models/{MODEL}/{endpoint}", body)
    assert status != 403 or json.loads(answer) != HTTP_DENIED_BODY


HTTP_DENIED = [
    # Triton's admin and introspection endpoints.
    ("GET", f"/v2/models/{MODEL}/config"),
    ("GET", f"/v2/models/{MODEL}/stats"),
    ("GET", f"/v2/models/{MODEL}/versions/1/stats"),
    ("GET", "/v2/models/stats"),
    ("POST", "/v2/repository/index"),
    ("POST", f"/v2/repository/models/{MODEL}/load"),
    ("POST", f"/v2/repository/models/{MODEL}/unload"),
    ("GET", "/v2/systemsharedmemory/status"),
    ("GET", "/v2/systemsharedmemory/region/r/status"),
    ("POST", "/v2/systemsharedmemory/region/r/register"),
    ("POST", "/v2/systemsharedmemory/unregister"),
    ("POST", "/v2/systemsharedmemory/region/r/unregister"),
    ("GET", "/v2/cudasharedmemory/status"),
    ("POST", "/v2/cudasharedmemory/region/r/register"),
    ("POST", "/v2/cudasharedmemory/unregister"),
    ("GET", "/v2/logging"),
    ("POST", "/v2/logging"),
    ("GET", "/v2/trace/setting"),
    ("POST", "/v2/trace/setting"),
    ("GET", f"/v2/models/{MODEL}/trace/setting"),
    ("POST", f"/v2/models/{MODEL}/trace/setting"),
    ("GET", "/metrics"),
    # The right path with the wrong method.
    ("POST", "/v2/health/ready"),
    ("PUT", f"/v2/models/{MODEL}/infer"),
    ("GET", f"/v2/models/{MODEL}/infer"),
    ("DELETE", "/v2"),
    ("OPTIONS", "/v2/health/ready"),
    ("get", "/v2/health/ready"),
    # Encodings, dot segments, case, slashes.
    ("POST", "/v2/repository%2Findex"),
    ("POST", "/v2%2Frepository/index"),
    ("GET", f"/v2/models/{MODEL}%2Fconfig"),
    ("GET", f"/v2/models/{MODEL}%2fconfig"),
    ("POST", "/v2/models/%2e%2e/repository/index"),
    ("POST", "/v2/models/%2E%2E/repository/index"),
    ("GET", f"/v2/models/{MODEL}/../config"),
    ("GET", "/v2/models/../repository/index"),
    ("GET", "/v2/models/.."),
    ("GET", "/v2/models/./ready"),
    ("GET", "/V2/health/ready"),
    ("GET", "/v2/HEALTH/ready"),
    ("POST", "/V2/REPOSITORY/INDEX"),
    ("GET", "//v2/health/ready"),
    ("POST", "//v2/repository/index"),
    ("GET", "/v2//health/ready"),
    ("GET", "/v2/health/ready/"),
    ("GET", "/v2/"),
    ("GET", f"/v2/models/{MODEL}/ready/"),
    ("GET", f"/v2/models/{MODEL}/versions/1x/ready"),
    ("GET", f"/v2/models/{MODEL}/config;/ready"),
    ("POST", "http://127.0.0.1/v2/repository/index"),
    ("GET", "*"),
]


@pytest.mark.parametrize(("method", "path"), HTTP_DENIED)
def test_admin_endpoints_wrong_methods_and_path_tricks_get_403_over_http(
    proxy_stack: Stack, before: dict[str, object], method: str, path: str
) -> None:
    status, answer = _http(proxy_stack, method, path, b"{}" if method in ("POST", "PUT") else None)
    assert status == 403, (status, answer)
    assert json.loads(answer) == HTTP_DENIED_BODY
    assert live_state(proxy_stack) == before


def test_raising_log_verbosity_through_the_proxy_changes_nothing(
    proxy_stack: Stack, before: dict[str, object]
) -> None:
    body = json.dumps({"log_verbose_level": 9, "log_info": True}).encode()
    status, answer = _http(proxy_stack, "POST", "/v2/logging", body)
    assert (status, json.loads(answer)) == (403, HTTP_DENIED_BODY)
    with (
        grpcclient.InferenceServerClient(proxy_stack.grpc_url) as client,
        pytest.raises(InferenceServerException) as denied,
    ):
        client.update_log_settings({"log_verbose_level": 9})
    assert denied.value.status() == "StatusCode.PERMISSION_DENIED"
    assert live_state(proxy_stack) == before


def _backend_regions(stack: Stack) -> list[str]:
    blue = stack.tritons["blue"]
    return sorted(p.name for p in Path("/dev/shm").glob(f"{blue.shm_prefix}*"))


def test_registering_the_python_backends_shm_region_is_refused_and_triton_keeps_serving(
    proxy_stack: Stack, before: dict[str, object]
) -> None:
    regions = _backend_regions(proxy_stack)
    assert regions, "the Python backend of blue should hold /dev/shm regions"
    key = f"/{regions[0]}"
    with grpcclient.InferenceServerClient(proxy_stack.grpc_url) as grpc_client:
        with pytest.raises(InferenceServerException) as grpc_denied:
            grpc_client.register_system_shared_memory("stub_region", key, 1 << 20)
        assert grpc_denied.value.status() == "StatusCode.PERMISSION_DENIED"
        assert GRPC_DENIED_MESSAGE in str(grpc_denied.value.message())
        # An output aimed at the region cannot be asked for either: the region is not registered.
        output = grpcclient.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory("stub_region", 8)
        with pytest.raises(InferenceServerException) as unknown_region:
            grpc_client.infer(MODEL, [grpc_input([1.0, 2.0])], outputs=[output])
        assert "stub_region" in str(unknown_region.value.message())
        with pytest.raises(InferenceServerException):
            grpc_client.unregister_system_shared_memory()
    http_client = httpclient.InferenceServerClient(proxy_stack.http_url)
    try:
        with pytest.raises(InferenceServerException) as http_denied:
            http_client.register_system_shared_memory("stub_region", key, 1 << 20)
        assert http_denied.value.status() == "403"
    finally:
        http_client.close()
    # The same Triton (same pid) still serves, with no region registered.
    with grpcclient.InferenceServerClient(proxy_stack.grpc_url) as client:
        for _ in range(20):
            result = client.infer(MODEL, [grpc_input([3.0, 4.0])])
            assert result.as_numpy("OUTPUT0").tolist() == [3.0, 4.0]
    assert live_state(proxy_stack) == before
