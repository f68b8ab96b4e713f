"""config.pbtxt checks: what the control plane refuses before anything is stored."""

from __future__ import annotations

import pytest

from controlplane.artifacts.model_config import read_signature
from controlplane.errors import InvalidModelConfig

GOOD = b"""
name: "mlp"
backend: "onnxruntime"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]
"""


def test_a_complete_config_gives_the_io_signature() -> None:
    sig = read_signature(GOOD, model_name="mlp")
    assert sig.backend == "onnxruntime"
    assert sig.max_batch_size == 8
    assert [(t.name, t.data_type, t.dims) for t in sig.inputs] == [("INPUT0", "FP32", (16,))]
    assert [(t.name, t.data_type, t.dims) for t in sig.outputs] == [("OUTPUT0", "FP32", (-1,))]


def test_platform_counts_as_a_backend() -> None:
    text = GOOD.replace(b'backend: "onnxruntime"', b'platform: "onnxruntime_onnx"')
    assert read_signature(text, model_name="mlp").backend == "onnxruntime_onnx"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"input [ { name: ", "malformed"),
        (b'backend: "onnxruntime"\nnot_a_field: 3', "malformed"),
        (GOOD.replace(b'name: "mlp"', b'name: "other"'), "names the model 'other'"),
        (GOOD.replace(b'backend: "onnxruntime"', b""), "neither backend nor platform"),
        (b'backend: "onnxruntime"\noutput [{ name: "O" data_type: TYPE_FP32 dims: [1] }]', "no input"),
        (b'backend: "onnxruntime"\ninput [{ name: "I" data_type: TYPE_FP32 dims: [1] }]', "no output"),
        (GOOD.replace(b"data_type: TYPE_FP32 dims: [ 16 ]", b"dims: [ 16 ]"), "no data_type"),
        (GOOD.replace(b"dims: [ 16 ]", b""), "no dims"),
        (GOOD.replace(b"dims: [ 16 ]", b"dims: [ 0 ]"), "invalid dims"),
        (GOOD.replace(b'name: "INPUT0" ', b""), "has no name"),
        (GOOD + b"version_policy: { specific: { versions: [1] } }", "version_policy"),
        (b"\xff\xfe", "not UTF-8"),
        (GOOD.replace(b"max_batch_size: 8", b"max_batch_size: -1"), "must not be negative"),
    ],
)
def test_incomplete_or_malformed_configs_are_refused_naming_the_problem(text: bytes, problem: str) -> None:
    with pytest.raises(InvalidModelConfig, match=problem) as refused:
        read_signature(text, model_name="mlp")
    assert refused.value.code == "invalid_model_config"
