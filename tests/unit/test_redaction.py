"""Errors shown to clients lose server paths and stack traces, keep what a client can act on."""

from __future__ import annotations

from controlplane.domain.redaction import SERVER_PATH, redact

REPO = "/srv/cp/.state/pools/blue/repository"
ORT = "/work/main/.venv/lib/python3.11/site-packages/onnxruntime/capi"
# The exact shape Triton 2.51 returned here for a corrupt model.onnx loaded by the onnxruntime stand-in.
TRITON_REASON = (
    "Triton failed to load 'mlp' version 3: load failed for model 'mlp': version 3 is at UNAVAILABLE state: "
    "Internal: InvalidProtobuf: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from "
    f"{REPO}/mlp/3/model.onnx failed:Protobuf parsing failed.\n\nAt:\n"
    f"  {ORT}/onnxruntime_inference_collection.py(753): _create_inference_session\n"
    f"  {ORT}/onnxruntime_inference_collection.py(695): __init__\n"
    "  /srv/cp/.state/backends/onnxruntime/model.py(144): initialize\n;\n"
)
PYTHON_TRACEBACK = (
    "model initialize failed\n"
    "Traceback (most recent call last):\n"
    '  File "/srv/cp/.state/pools/green/repository/flaky/1/model.py", line 12, in initialize\n'
    "    self.table = open('/etc/controlplane/secret').read()\n"
    '  File "/usr/lib/python3.11/codecs.py", line 322, in decode\n'
    "    (result, consumed) = self._buffer_decode(data, self.errors, final)\n"
    "PermissionError: [Errno 13] Permission denied: '/etc/controlplane/secret'\n"
)


def test_a_triton_load_error_keeps_the_reason_and_the_file_inside_the_model_folder() -> None:
    redacted = redact(TRITON_REASON, model_roots=[REPO])
    assert redacted == (
        "Triton failed to load 'mlp' version 3: load failed for model 'mlp': version 3 is at UNAVAILABLE "
        "state: Internal: InvalidProtobuf: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from "
        "mlp/3/model.onnx failed:Protobuf parsing failed."
    )


def test_python_tracebacks_are_dropped_but_the_final_exception_line_stays() -> None:
    redacted = redact(PYTHON_TRACEBACK, model_roots=[REPO])
    assert "Traceback" not in redacted and 'File "' not in redacted and "line 12" not in redacted
    denied = f"PermissionError: [Errno 13] Permission denied: '{SERVER_PATH}'"
    assert redacted == f"model initialize failed\n{denied}"


def test_any_other_absolute_path_becomes_a_neutral_marker() -> None:
    assert redact("cannot open /dev/shm/cp_blue_region and /srv/cp/.state/registry.db") == (
        f"cannot open {SERVER_PATH} and {SERVER_PATH}"
    )


def test_relative_paths_urls_ratios_and_api_routes_are_kept() -> None:
    text = (
        "mlp/1/model.onnx at http://127.0.0.1:8000/v1/models, weights 50/50; "
        "attach one with PUT /v1/models/mlp/versions/3/signature"
    )
    assert redact(text) == text


def test_a_root_is_only_stripped_at_a_path_boundary() -> None:
    assert redact(f"{REPO}2/x/1/model.onnx", model_roots=[REPO]) == SERVER_PATH
