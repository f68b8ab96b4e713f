"""Interface compatibility, api_version majors and the metric gate: the pure rules of rollout admission."""

from __future__ import annotations

import dataclasses

import pytest

from controlplane.domain.analysis import Gates
from controlplane.domain.compatibility import (
    Compatibility,
    Difference,
    api_major,
    breaking_allowed,
    compare,
)
from controlplane.domain.metric_gate import check_metric
from controlplane.domain.models import ModelSignature, TensorSpec
from controlplane.errors import Conflict, InvalidInput

SERVING = ModelSignature(
    backend="onnxruntime",
    max_batch_size=8,
    inputs=(TensorSpec("INPUT0", "FP32", (16,)),),
    outputs=(TensorSpec("OUTPUT0", "FP32", (4,)),),
)


def _with(**changes: object) -> ModelSignature:
    return dataclasses.replace(SERVING, **changes)  # type: ignore[arg-type]


def _codes(compat: Compatibility) -> list[tuple[str, str | None, bool]]:
    return [(d.code, d.tensor, d.breaking) for d in compat.differences]


def test_the_same_interface_has_no_difference_and_is_compatible() -> None:
    compat = compare(SERVING, _with())

    assert compat.differences == ()
    assert compat.compatible
    assert compat.as_dict() == {"compatible": True, "differences": []}


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        pytest.param(
            _with(outputs=(*SERVING.outputs, TensorSpec("SCORES", "FP32", (1,)))),
            [("output_added", "SCORES", False)],
            id="output-added",
        ),
        pytest.param(
            _with(inputs=(TensorSpec("INPUT0", "FP32", (-1,)),)),
            [("dims_widened", "INPUT0", False)],
            id="input-widened",
        ),
        pytest.param(
            _with(max_batch_size=32),
            [("max_batch_size_increased", None, False)],
            id="batch-increased",
        ),
        pytest.param(_with(backend="tensorrt"), [("backend_changed", None, False)], id="backend"),
    ],
)
def test_changes_that_every_client_survives_are_compatible(
    candidate: ModelSignature, expected: list[tuple[str, str | None, bool]]
) -> None:
    compat = compare(SERVING, candidate)

    assert _codes(compat) == expected
    assert compat.compatible
    assert compat.breaking == ()


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        pytest.param(
            _with(inputs=(*SERVING.inputs, TensorSpec("MASK", "BOOL", (16,)))),
            [("input_added", "MASK", True)],
            id="input-added",
        ),
        pytest.param(_with(inputs=()), [("input_removed", "INPUT0", True)], id="input-removed"),
        pytest.param(_with(outputs=()), [("output_removed", "OUTPUT0", True)], id="output-removed"),
        pytest.param(
            _with(inputs=(TensorSpec("INPUT0", "FP16", (16,)),)),
            [("dtype_changed", "INPUT0", True)],
            id="dtype",
        ),
        pytest.param(
            _with(inputs=(TensorSpec("INPUT0", "FP32", (16, 1)),)),
            [("dims_incompatible", "INPUT0", True)],
            id="rank",
        ),
        pytest.param(
            _with(inputs=(TensorSpec("INPUT0", "FP32", (32,)),)),
            [("dims_incompatible", "INPUT0", True)],
            id="fixed-size",
        ),
        pytest.param(
            _with(outputs=(TensorSpec("OUTPUT0", "FP32", (-1,)),)),
            [("dims_incompatible", "OUTPUT0", True)],
            id="output-fixed-to-variable",
        ),
        pytest.param(_with(max_batch_size=4), [("max_batch_size_reduced", None, True)], id="batch-reduced"),
        pytest.param(
            _with(
                max_batch_size=0,
                inputs=(TensorSpec("INPUT0", "FP32", (-1, 16)),),
                outputs=(TensorSpec("OUTPUT0", "FP32", (-1, 4)),),
            ),
            [("batching_changed", None, True)],
            id="batching-off-batch-axis-kept",
        ),
    ],
)
def test_changes_that_fail_some_client_are_breaking(
    candidate: ModelSignature, expected: list[tuple[str, str | None, bool]]
) -> None:
    compat = compare(SERVING, candidate)

    assert _codes(compat) == expected
    assert not compat.compatible
    assert [d.code for d in compat.breaking] == [code for code, _t, _b in expected]


def test_an_input_that_was_variable_and_became_fixed_is_incompatible() -> None:
    serving = _with(inputs=(TensorSpec("INPUT0", "FP32", (-1,)),))

    compat = compare(serving, SERVING)

    assert _codes(compat) == [("dims_incompatible", "INPUT0", True)]
    assert "[-1, -1] -> [-1, 16]" in compat.differences[0].detail


def test_an_output_that_was_variable_and_became_fixed_returns_what_clients_accept() -> None:
    serving = _with(outputs=(TensorSpec("OUTPUT0", "FP32", (-1,)),))

    compat = compare(serving, SERVING)

    assert _codes(compat) == [("dims_narrowed", "OUTPUT0", False)]
    assert compat.compatible


def test_turning_batching_on_is_breaking_and_the_shapes_compare_with_the_batch_axis() -> None:
    serving = _with(max_batch_size=0)

    compat = compare(serving, SERVING)

    # Unbatched [16] is what a client sent; batched, it sends [n, 16]: the rank changed too.
    assert _codes(compat) == [
        ("batching_changed", None, True),
        ("dims_incompatible", "INPUT0", True),
        ("dims_incompatible", "OUTPUT0", True),
    ]
    assert "turned on" in compat.differences[0].detail


@pytest.mark.parametrize("kind", ["inputs", "outputs"])
def test_one_tensor_removed_and_one_added_alike_is_a_rename_naming_both(kind: str) -> None:
    old = getattr(SERVING, kind)[0]
    candidate = _with(**{kind: (TensorSpec("RENAMED", old.data_type, old.dims),)})

    compat = compare(SERVING, candidate)

    singular = kind[:-1]
    assert _codes(compat) == [(f"{singular}_renamed", old.name, True)]
    assert old.name in compat.differences[0].detail and "RENAMED" in compat.differences[0].detail


def test_a_removed_and_an_added_input_that_differ_are_no_rename() -> None:
    candidate = _with(inputs=(TensorSpec("OTHER", "INT64", (16,)),))

    compat = compare(SERVING, candidate)

    assert _codes(compat) == [("input_removed", "INPUT0", True), ("input_added", "OTHER", True)]


def test_two_removed_inputs_and_two_added_are_no_rename_even_if_alike() -> None:
    serving = _with(inputs=(TensorSpec("A", "FP32", (1,)), TensorSpec("B", "FP32", (1,))))
    candidate = _with(inputs=(TensorSpec("C", "FP32", (1,)), TensorSpec("D", "FP32", (1,))))

    codes = [d.code for d in compare(serving, candidate).differences]

    assert codes == ["input_removed", "input_removed", "input_added", "input_added"]


def test_every_difference_of_a_tensor_is_listed() -> None:
    candidate = _with(inputs=(TensorSpec("INPUT0", "INT8", (8,)),), max_batch_size=2)

    compat = compare(SERVING, candidate)

    assert _codes(compat) == [
        ("max_batch_size_reduced", None, True),
        ("dtype_changed", "INPUT0", True),
        ("dims_incompatible", "INPUT0", True),
    ]


def test_a_difference_serialises_with_its_code_as_text() -> None:
    compat = compare(SERVING, _with(outputs=()))

    assert compat.as_dict() == {
        "compatible": False,
        "differences": [
            {
                "code": "output_removed",
                "tensor": "OUTPUT0",
                "detail": "output 'OUTPUT0' was removed: clients still read it",
                "breaking": True,
            }
        ],
    }
    assert type(compat.differences[0].code) is str


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ("2", 2),
        ("2.1", 2),
        ("v2.0.1", 2),
        ("V10", 10),
        (" 3.0 ", 3),
        ("0.9", 0),
        (None, None),
        ("", None),
        ("two", None),
        ("2.x", None),
        ("v", None),
        ("-1", None),
        ("2..1", None),
    ],
)
def test_api_major_reads_the_leading_number_or_nothing(text: str | None, major: int | None) -> None:
    assert api_major(text) == major


BREAKING = Compatibility((Difference("input_removed", "INPUT0", "input 'INPUT0' was removed", True),))
HARMLESS = Compatibility((Difference("output_added", "X", "output 'X' was added", False),))


def test_a_compatible_candidate_is_allowed_without_asking() -> None:
    allowed, _reason = breaking_allowed(HARMLESS, "2", None, False)

    assert allowed


@pytest.mark.parametrize(
    ("serving_api", "candidate_api", "allow", "expected"),
    [
        ("1", "2.0", True, True),
        ("v1.4", "v2", True, True),
        (None, "1", True, True),  # a serving version without api_version counts as major 0
        ("unversioned", "1", True, True),
        ("1", "2.0", False, False),
        ("2", "2.1", True, False),
        ("2", "1", True, False),
        ("1", None, True, False),
        ("1", "next", True, False),
        (None, None, True, False),
        (None, "0.5", True, False),
    ],
)
def test_a_breaking_candidate_needs_a_new_major_and_the_request_allowing_it(
    serving_api: str | None, candidate_api: str | None, allow: bool, expected: bool
) -> None:
    allowed, reason = breaking_allowed(BREAKING, serving_api, candidate_api, allow)

    assert allowed is expected
    assert reason


def test_a_refusal_names_every_unmet_condition() -> None:
    allowed, reason = breaking_allowed(BREAKING, "2", None, False)

    assert not allowed
    assert "no api_version" in reason and "allow_breaking" in reason


# -- the metric gate ---------------------------------------------------------------------


def _gate(**kwargs: object) -> Gates:
    return Gates(metric="accuracy", **kwargs)  # type: ignore[arg-type]


def _judge(gates: Gates, production: dict[str, float], candidate: dict[str, float]) -> object:
    return check_metric(
        gates, production=production, candidate=candidate, production_version=1, candidate_version=2
    )


def test_without_a_gated_metric_nothing_is_judged() -> None:
    assert _judge(Gates(), {}, {}) is None


def test_a_candidate_as_good_as_production_passes() -> None:
    result = _judge(_gate(), {"accuracy": 0.9}, {"accuracy": 0.9})

    assert result is not None


def test_a_candidate_worse_within_the_margin_passes_and_one_exactly_at_it_too() -> None:
    assert _judge(_gate(metric_max_drop=0.02), {"accuracy": 0.95}, {"accuracy": 0.94}) is not None
    # 0.95 - 0.94 is a hair above 0.01 in floating point: still within a margin of 0.01.
    assert _judge(_gate(metric_max_drop=0.01), {"accuracy": 0.95}, {"accuracy": 0.94}) is not None


def test_a_candidate_worse_by_more_than_the_margin_is_refused_naming_both_values_and_the_margin() -> None:
    with pytest.raises(Conflict) as refused:
        _judge(_gate(metric_max_drop=0.01), {"accuracy": 0.95}, {"accuracy": 0.90})

    assert refused.value.code == "metric_worse"
    message = refused.value.message
    assert "0.95" in message and "0.9" in message and "0.01" in message and "'accuracy'" in message
    assert refused.value.details["production"] == 0.95
    assert refused.value.details["candidate"] == 0.90


def test_for_a_loss_a_higher_value_is_worse() -> None:
    gates = Gates(metric="loss", metric_lower_is_better=True, metric_max_drop=0.1)
    judge = check_metric

    assert judge(
        gates, production={"loss": 1.0}, candidate={"loss": 0.5}, production_version=1, candidate_version=2
    )
    with pytest.raises(Conflict, match="higher"):
        judge(
            gates,
            production={"loss": 1.0},
            candidate={"loss": 1.5},
            production_version=1,
            candidate_version=2,
        )


def test_a_candidate_without_the_metric_is_refused() -> None:
    with pytest.raises(InvalidInput) as refused:
        _judge(_gate(), {"accuracy": 0.9}, {"f1": 0.9})

    assert refused.value.code == "metric_missing"
    assert "the candidate (version 2)" in refused.value.message
    assert refused.value.details["missing_in"] == ["candidate"]


def test_production_without_the_metric_refuses_too_since_the_gate_cannot_be_judged() -> None:
    with pytest.raises(InvalidInput) as refused:
        _judge(_gate(), {}, {"accuracy": 0.99})

    assert refused.value.code == "metric_missing"
    assert "production (version 1)" in refused.value.message
    assert refused.value.details["missing_in"] == ["production"]
