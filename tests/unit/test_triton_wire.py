"""Triton's binary tensor extension over HTTP, built and split without numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor

from controlplane.triton.client import InferOutputs, wire_tensor
from controlplane.triton.wire import (
    MalformedAnswer,
    Tensor,
    Zeros,
    infer_request,
    split_infer_answer,
)


def _answer(outputs: list[tuple[str, str, list[int], bytes]]) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "model_name": "mlp",
            "outputs": [
                {"name": n, "datatype": t, "shape": s, "parameters": {"binary_data_size": len(raw)}}
                for n, t, s, raw in outputs
            ],
        }
    ).encode()
    return header + b"".join(raw for *_, raw in outputs), len(header)


def test_a_request_is_its_json_header_then_each_inputs_bytes_in_order() -> None:
    body, length = infer_request(
        [Tensor("A", "FP32", (1, 2), b"\x01" * 8), Tensor("B", "INT8", (3,), b"\x02" * 3)], ["OUT"]
    )
    header = json.loads(body[:length])
    assert [(i["name"], i["shape"], i["datatype"], i["parameters"]) for i in header["inputs"]] == [
        ("A", [1, 2], "FP32", {"binary_data_size": 8}),
        ("B", [3], "INT8", {"binary_data_size": 3}),
    ]
    assert header["outputs"] == [{"name": "OUT", "parameters": {"binary_data": True}}]
    assert body[length:] == b"\x01" * 8 + b"\x02" * 3


def test_zeros_are_the_bytes_of_zero_numbers_and_of_empty_strings() -> None:
    assert Zeros("FP64", (2, 3)).raw() == bytes(48)
    assert Zeros("BF16", (4,)).raw() == bytes(8)
    assert deserialize_bytes_tensor(Zeros("BYTES", (3,)).raw()).tolist() == [b"", b"", b""]


def test_an_answer_splits_into_its_outputs_by_the_sizes_its_header_gives() -> None:
    body, length = _answer([("X", "FP32", [1, 2], b"a" * 8), ("Y", "INT64", [1], b"b" * 8)])
    found = split_infer_answer(body, length)
    assert found == {
        "X": Tensor("X", "FP32", (1, 2), b"a" * 8),
        "Y": Tensor("Y", "INT64", (1,), b"b" * 8),
    }


@pytest.mark.parametrize(
    ("body", "length", "words"),
    [
        (b'{"outputs": []}', 99, "outside a body"),
        (b"not json", None, "not an inference answer"),
        (b'{"outputs": [{"name": "X", "datatype": "FP32", "shape": [1]}]}', None, "came back as JSON"),
        (b'{"outputs": [{"name": "X"}]}', None, "not an inference answer"),
    ],
)
def test_an_answer_that_is_not_triton_s_form_is_refused_by_name(
    body: bytes, length: int | None, words: str
) -> None:
    with pytest.raises(MalformedAnswer, match=words):
        split_infer_answer(body, length)


def test_an_answer_whose_blob_is_shorter_than_its_header_says_is_refused() -> None:
    body, length = _answer([("X", "FP32", [1, 2], b"a" * 8)])
    with pytest.raises(MalformedAnswer, match="'X' is cut short"):
        split_infer_answer(body[:-1], length)


def test_numpy_arrays_travel_as_their_triton_type_and_come_back_as_the_same_arrays() -> None:
    numbers = np.arange(6, dtype=np.float16).reshape(2, 3)
    words = np.array([b"ab", b"", b"xyz"], dtype=np.object_)
    sent = {name: wire_tensor(name, array) for name, array in (("N", numbers), ("W", words))}
    assert (sent["N"].datatype, sent["N"].shape) == ("FP16", (2, 3))
    assert (sent["W"].datatype, sent["W"].shape) == ("BYTES", (3,))

    read = InferOutputs(sent)
    np.testing.assert_array_equal(read["N"], numbers)
    assert read["N"].dtype == np.float16
    assert read["W"].tolist() == [b"ab", b"", b"xyz"]
    assert sorted(read) == ["N", "W"] and len(read) == 2
