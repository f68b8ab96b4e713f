"""config.pbtxt against an ONNX graph's inputs and outputs: the pure comparison."""

from __future__ import annotations

import time

import pytest

from controlplane.domain.interface_check import (
    MAX_REPORTED,
    ONNX_TO_TRITON,
    TRITON_TO_ONNX,
    GraphDim,
    GraphInterface,
    GraphTensor,
    check_interface,
    compare_interface,
)
from controlplane.domain.models import ModelSignature, TensorSpec
from controlplane.errors import InvalidModelConfig


def spec(name: str = "INPUT0", data_type: str = "FP32", dims: tuple[int, ...] = (16,)) -> TensorSpec:
    return TensorSpec(name=name, data_type=data_type, dims=dims)


def signature(
    inputs: tuple[TensorSpec, ...] = (spec(),),
    outputs: tuple[TensorSpec, ...] = (spec("OUTPUT0", dims=(4,)),),
    max_batch_size: int = 64,
) -> ModelSignature:
    return ModelSignature(
        backend="onnxruntime", max_batch_size=max_batch_size, inputs=inputs, outputs=outputs
    )


def tensor(
    name: str = "INPUT0", data_type: str | None = "FLOAT", shape: tuple[GraphDim, ...] | None = ("batch", 16)
) -> GraphTensor:
    return GraphTensor(name=name, data_type=data_type, shape=shape)


def graph(
    inputs: tuple[GraphTensor, ...] = (tensor(),),
    outputs: tuple[GraphTensor, ...] = (tensor("OUTPUT0", shape=("batch", 4)),),
) -> GraphInterface:
    return GraphInterface(inputs=inputs, outputs=outputs)


def problems(sig: ModelSignature, g: GraphInterface) -> list[tuple[str, str, str]]:
    return [(d.kind, d.tensor, d.problem) for d in compare_interface(sig, g)]


def refusal(sig: ModelSignature, g: GraphInterface) -> InvalidModelConfig:
    with pytest.raises(InvalidModelConfig) as caught:
        check_interface(sig, g)
    assert caught.value.code == "interface_mismatch"
    return caught.value


def test_a_config_that_describes_the_graph_has_no_difference() -> None:
    assert compare_interface(signature(), graph()) == []
    check_interface(signature(), graph())


def test_a_config_input_missing_from_the_graph_is_named_with_the_graph_inputs() -> None:
    error = refusal(signature(), graph(inputs=(tensor("input_1"),)))
    assert "input 'INPUT0' is not in the ONNX graph (graph inputs: 'input_1')" in error.message
    assert error.details[0] == {
        "tensor": "INPUT0",
        "kind": "input",
        "problem": "not_in_graph",
        "config": "INPUT0",
        "graph": ["input_1"],
    }


def test_a_renamed_graph_input_is_also_an_input_the_config_does_not_declare() -> None:
    error = refusal(signature(), graph(inputs=(tensor("input_1"),)))
    assert [(d["kind"], d["tensor"], d["problem"]) for d in error.details] == [
        ("input", "INPUT0", "not_in_graph"),
        ("input", "input_1", "not_in_config"),
    ]
    assert error.message.endswith("; and 1 more difference")


def test_a_config_output_missing_from_the_graph_is_refused() -> None:
    found = problems(signature(), graph(outputs=(tensor("logits", shape=("batch", 4)),)))
    assert found == [("output", "OUTPUT0", "not_in_graph")]


def test_graph_outputs_the_config_leaves_out_are_allowed() -> None:
    extra = tensor("hidden", shape=("batch", 32))
    assert problems(signature(), graph(outputs=(tensor("OUTPUT0", shape=("batch", 4)), extra))) == []


def test_a_graph_input_the_config_does_not_declare_is_refused() -> None:
    error = refusal(signature(), graph(inputs=(tensor(), tensor("mask", "BOOL", ("batch", 16)))))
    assert "the ONNX graph needs input 'mask', which config.pbtxt does not declare" in error.message
    assert error.details == [
        {"tensor": "mask", "kind": "input", "problem": "not_in_config", "config": ["INPUT0"], "graph": "mask"}
    ]


def test_a_data_type_mismatch_names_both_types() -> None:
    error = refusal(signature(), graph(inputs=(tensor(data_type="INT64"),)))
    assert (
        "input 'INPUT0' is TYPE_FP32 in config.pbtxt but INT64 in the ONNX graph (TYPE_INT64" in error.message
    )
    assert error.details == [
        {"tensor": "INPUT0", "kind": "input", "problem": "data_type", "config": "FP32", "graph": "INT64"}
    ]


@pytest.mark.parametrize(
    ("triton", "onnx"),
    [
        ("BOOL", "BOOL"),
        ("UINT8", "UINT8"),
        ("UINT16", "UINT16"),
        ("UINT32", "UINT32"),
        ("UINT64", "UINT64"),
        ("INT8", "INT8"),
        ("INT16", "INT16"),
        ("INT32", "INT32"),
        ("INT64", "INT64"),
        ("FP16", "FLOAT16"),
        ("FP32", "FLOAT"),
        ("FP64", "DOUBLE"),
        ("BF16", "BFLOAT16"),
        ("STRING", "STRING"),
        ("BYTES", "STRING"),
    ],
)
def test_each_triton_type_matches_its_onnx_type_and_no_other(triton: str, onnx: str) -> None:
    sig = signature(inputs=(spec(data_type=triton),))
    assert problems(sig, graph(inputs=(tensor(data_type=onnx),))) == []
    for other in set(TRITON_TO_ONNX.values()) - {onnx}:
        assert problems(sig, graph(inputs=(tensor(data_type=other),))) == [("input", "INPUT0", "data_type")]


def test_the_type_table_maps_every_onnx_type_back_to_its_config_spelling() -> None:
    assert {TRITON_TO_ONNX[t] for t in ONNX_TO_TRITON.values()} == set(ONNX_TO_TRITON)
    assert ONNX_TO_TRITON["STRING"] == "STRING"


@pytest.mark.parametrize("graph_type", ["COMPLEX64", "FLOAT8E4M3FN", "INT4", "sequence", "map", "optional"])
def test_graph_types_triton_cannot_carry_are_a_mismatch_saying_so(graph_type: str) -> None:
    error = refusal(signature(), graph(inputs=(tensor(data_type=graph_type),)))
    assert f"{graph_type} in the ONNX graph (no Triton equivalent)" in error.message


def test_an_unknown_graph_type_is_not_compared() -> None:
    assert problems(signature(), graph(inputs=(tensor(data_type=None),))) == []


def test_with_batching_the_config_rank_gains_a_batch_dimension() -> None:
    flat = graph(inputs=(tensor(shape=(16,)),), outputs=(tensor("OUTPUT0", shape=(4,)),))
    error = refusal(signature(), flat)
    assert error.details[0]["problem"] == "rank"
    assert error.details[0]["config"] == [-1, 16] and error.details[0]["graph"] == [16]
    assert "has 2 dimensions in config.pbtxt (dims [16] plus the batch dimension) but 1" in error.message
    assert problems(signature(max_batch_size=0), flat) == []


def test_without_batching_a_graph_with_an_extra_axis_is_a_rank_mismatch() -> None:
    found = problems(signature(max_batch_size=0), graph())
    assert ("input", "INPUT0", "rank") in found


def test_with_batching_a_fixed_first_graph_dimension_is_refused_naming_it() -> None:
    error = refusal(signature(max_batch_size=8), graph(inputs=(tensor(shape=(1, 16)),)))
    assert "max_batch_size is 8, so the first dimension of the ONNX graph must be dynamic" in error.message
    assert "fixed to 1" in error.message
    assert error.details == [
        {"tensor": "INPUT0", "kind": "input", "problem": "batch_dimension", "config": 8, "graph": 1}
    ]


@pytest.mark.parametrize("fixed", [8, 64, 1000])
def test_a_fixed_batch_dimension_is_refused_whatever_its_size(fixed: int) -> None:
    found = problems(signature(max_batch_size=8), graph(inputs=(tensor(shape=(fixed, 16)),)))
    assert found == [("input", "INPUT0", "batch_dimension")]


@pytest.mark.parametrize("batch", ["batch", "N", None])
def test_a_symbolic_or_unknown_batch_dimension_is_accepted(batch: GraphDim) -> None:
    assert problems(signature(), graph(inputs=(tensor(shape=(batch, 16)),))) == []


def test_a_fixed_config_dim_must_equal_the_fixed_graph_dim() -> None:
    error = refusal(signature(), graph(inputs=(tensor(shape=("batch", 8)),)))
    assert error.details == [
        {"tensor": "INPUT0", "kind": "input", "problem": "dims", "config": [16], "graph": [8]}
    ]
    assert "axis 1: the config is 16, the graph fixes 8" in error.message


def test_a_config_minus_one_needs_a_dynamic_graph_dim() -> None:
    sig = signature(inputs=(spec(dims=(-1,)),))
    error = refusal(sig, graph())
    assert "axis 1: the config accepts any size, the graph fixes 16" in error.message
    assert problems(sig, graph(inputs=(tensor(shape=("batch", "length")),))) == []


@pytest.mark.parametrize("inner", ["width", None])
def test_a_dynamic_graph_dim_accepts_any_config_dim(inner: GraphDim) -> None:
    assert problems(signature(), graph(inputs=(tensor(shape=("batch", inner)),))) == []


def test_without_batching_every_axis_is_compared_from_the_first() -> None:
    sig = signature(inputs=(spec(dims=(3, 16)),), outputs=(spec("OUTPUT0", dims=(4,)),), max_batch_size=0)
    g = graph(inputs=(tensor(shape=(2, 16)),), outputs=(tensor("OUTPUT0", shape=(4,)),))
    error = refusal(sig, g)
    assert "axis 0: the config is 3, the graph fixes 2" in error.message


def test_a_graph_tensor_without_a_shape_is_not_compared_on_shape() -> None:
    assert problems(signature(), graph(inputs=(tensor(shape=None),))) == []


def test_output_shapes_and_types_are_checked_like_inputs() -> None:
    g = graph(outputs=(tensor("OUTPUT0", data_type="DOUBLE", shape=("batch", 5)),))
    assert problems(signature(), g) == [("output", "OUTPUT0", "data_type"), ("output", "OUTPUT0", "dims")]


def test_every_difference_is_listed_and_the_message_counts_them() -> None:
    sig = signature(inputs=(spec("A"), spec("B")), outputs=(spec("OUT", dims=(4,)),))
    g = graph(
        inputs=(tensor("A", data_type="INT32"), tensor("C")),
        outputs=(tensor("OUT", shape=(2, 4)),),
    )
    error = refusal(sig, g)
    assert [(d["tensor"], d["problem"]) for d in error.details] == [
        ("A", "data_type"),
        ("B", "not_in_graph"),
        ("C", "not_in_config"),
        ("OUT", "batch_dimension"),
    ]
    assert error.message.startswith("config.pbtxt does not match the ONNX graph: input 'A' is TYPE_FP32")
    assert error.message.endswith("; and 3 more differences")


def test_names_with_control_characters_are_escaped_in_messages() -> None:
    odd = "in\x1b[31m\nput\u202e"
    error = refusal(signature(inputs=(spec(odd),)), graph())
    assert repr(odd) in error.message
    assert not any(ch in error.message for ch in "\x1b\n\u202e")
    assert error.details[0]["tensor"] == odd


def test_a_very_long_name_is_shortened_in_the_message_and_details() -> None:
    long_name = "x" * 100_000
    error = refusal(signature(), graph(inputs=(tensor(), tensor(long_name))))
    assert len(error.message) < 2_000
    assert "(100000 characters)" in error.message
    assert len(error.details[0]["tensor"]) < 300


def test_thousands_of_undeclared_graph_inputs_answer_quickly_with_a_bounded_list() -> None:
    many = tuple(tensor(f"extra_{i}") for i in range(20_000))
    started = time.monotonic()
    error = refusal(signature(), graph(inputs=(tensor(), *many)))
    assert time.monotonic() - started < 2.0
    assert len(error.details) == MAX_REPORTED
    assert f"; and {len(many) - 1} more differences (the first {MAX_REPORTED} are listed)" in error.message
    assert len(error.message) < 2_000


def test_thousands_of_graph_inputs_are_listed_only_in_part_when_a_config_input_is_missing() -> None:
    many = tuple(tensor(f"in_{i}") for i in range(5_000))
    sig = signature(inputs=(spec("absent"), *(spec(f"in_{i}") for i in range(5_000))))
    error = refusal(sig, graph(inputs=many))
    assert error.details[0]["problem"] == "not_in_graph"
    assert "'in_9' and 4990 more)" in error.message
    assert len(error.details[0]["graph"]) == 10
