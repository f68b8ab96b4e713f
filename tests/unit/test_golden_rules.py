"""Golden set rules: what a set must hold for a model, and when a candidate's answers match it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from controlplane.domain.golden import GoldenSet, compare, merge_reports, validate_golden
from controlplane.domain.golden_records import DEFAULT_ATOL, DEFAULT_RTOL, Tolerance, is_golden_file
from controlplane.domain.models import ModelSignature, TensorSpec
from controlplane.errors import InvalidInput

SIGNATURE = ModelSignature(
    backend="onnxruntime",
    max_batch_size=8,
    inputs=(TensorSpec("INPUT0", "FP32", (4,)), TensorSpec("LENGTHS", "INT64", (-1,))),
    outputs=(TensorSpec("OUTPUT0", "FP32", (2,)), TensorSpec("LABEL", "BYTES", (1,))),
)


def _golden(rows: int = 3, **overrides: object) -> GoldenSet:
    inputs = {
        "INPUT0": np.zeros((rows, 4), dtype=np.float32),
        "LENGTHS": np.ones((rows, 5), dtype=np.int64),
    }
    outputs = {"OUTPUT0": np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)}
    tolerances: dict[str, Tolerance] = {}
    for key, value in overrides.items():
        section, _sep, name = key.partition("__")
        {"inputs": inputs, "outputs": outputs, "tolerances": tolerances}[section][name] = value  # type: ignore[index]
    return GoldenSet(inputs=inputs, outputs=outputs, tolerances=tolerances)


def _refusal(golden: GoldenSet, **kwargs: int) -> InvalidInput:
    with pytest.raises(InvalidInput) as refused:
        validate_golden(golden, SIGNATURE, **kwargs)
    assert refused.value.code == "invalid_golden_set"
    return refused.value


# -- validation ---------------------------------------------------------------------------------------


def test_a_set_with_every_input_its_dtype_and_dims_passes_and_minus_one_matches_any_length() -> None:
    golden = _golden(rows=3)
    assert validate_golden(golden, SIGNATURE) is golden
    assert golden.rows == 3


def test_a_missing_input_is_refused_naming_it() -> None:
    golden = _golden()
    del golden.inputs["LENGTHS"]  # type: ignore[attr-defined]
    refused = _refusal(golden)
    assert "LENGTHS" in refused.message and "missing" in refused.message
    assert refused.details == {"tensor": "LENGTHS"}


def test_an_input_the_model_does_not_declare_is_refused() -> None:
    refused = _refusal(_golden(inputs__EXTRA=np.zeros((3, 1), dtype=np.float32)))
    assert refused.details == {"tensor": "EXTRA"}


def test_an_input_of_another_dtype_is_refused_naming_the_declared_type() -> None:
    refused = _refusal(_golden(inputs__INPUT0=np.zeros((3, 4), dtype=np.float64)))
    assert "INPUT0" in refused.message and "FP32" in refused.message and "float64" in refused.message


def test_an_input_whose_rows_have_other_dims_is_refused() -> None:
    refused = _refusal(_golden(inputs__INPUT0=np.zeros((3, 5), dtype=np.float32)))
    assert "[5]" in refused.message and "[4]" in refused.message


def test_a_scalar_input_without_a_rows_axis_is_refused() -> None:
    refused = _refusal(_golden(inputs__INPUT0=np.float32(1.0) * np.ones((), dtype=np.float32)))
    assert "rows axis" in refused.message


def test_an_expected_output_the_model_does_not_declare_is_refused() -> None:
    refused = _refusal(_golden(outputs__PROBS=np.zeros((3, 2), dtype=np.float32)))
    assert refused.details == {"tensor": "PROBS"}


def test_a_set_without_expected_outputs_is_refused() -> None:
    golden = _golden()
    golden.outputs.clear()  # type: ignore[attr-defined]
    assert "no expected output" in _refusal(golden).message


def test_a_text_output_for_a_number_output_is_refused() -> None:
    refused = _refusal(_golden(outputs__OUTPUT0=np.array([[b"a", b"b"]] * 3)))
    assert "OUTPUT0" in refused.message


def test_arrays_with_different_row_counts_are_refused() -> None:
    refused = _refusal(_golden(outputs__OUTPUT0=np.zeros((2, 2), dtype=np.float32)))
    assert "2 rows" in refused.message and refused.details == {"tensor": "OUTPUT0"}


def test_an_empty_set_is_refused() -> None:
    assert "no rows" in _refusal(_golden(rows=0)).message


def test_more_rows_than_the_limit_are_refused() -> None:
    assert "limit is 2" in _refusal(_golden(rows=3), max_rows=2).message


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_a_negative_or_non_finite_tolerance_is_refused(bad: float) -> None:
    refused = _refusal(_golden(tolerances__OUTPUT0=Tolerance(atol=bad)))
    assert "atol" in refused.message


def test_a_tolerance_for_an_output_the_set_does_not_hold_is_refused() -> None:
    refused = _refusal(_golden(tolerances__LABEL=Tolerance()))
    assert refused.details == {"tensor": "LABEL"}


def test_only_the_two_top_level_names_are_golden_files() -> None:
    assert is_golden_file("golden.npz") and is_golden_file("golden.json")
    assert not is_golden_file("1/golden.npz") and not is_golden_file("golden.txt")


# -- comparison ---------------------------------------------------------------------------------------


def _numbers(expected: list[list[float]], actual: list[list[float]], tolerance: Tolerance | None = None):  # type: ignore[no-untyped-def]
    golden = GoldenSet(
        inputs={"INPUT0": np.zeros((len(expected), 4), dtype=np.float32)},
        outputs={"OUTPUT0": np.array(expected, dtype=np.float32)},
        tolerances={"OUTPUT0": tolerance} if tolerance else {},
    )
    report = compare(golden, {"OUTPUT0": np.array(actual, dtype=np.float32)})
    return report, report.outputs[0]


def test_identical_answers_pass_with_zero_errors() -> None:
    report, output = _numbers([[1.0, 2.0]], [[1.0, 2.0]])
    assert report.passed and output.max_abs_error == 0.0 and output.rows_failing == 0
    assert output.first_failing_row is None


def test_the_default_tolerances_follow_allclose() -> None:
    assert (DEFAULT_ATOL, DEFAULT_RTOL) == (1e-5, 1e-4)
    within = 1000.0 * (1 + 0.5e-4)
    beyond = 1000.0 * (1 + 2e-4)
    assert _numbers([[1000.0, 0.0]], [[within, 0.5e-5]])[0].passed
    assert not _numbers([[1000.0, 0.0]], [[beyond, 0.0]])[0].passed
    assert not _numbers([[1000.0, 0.0]], [[1000.0, 2e-5]])[0].passed


def test_a_failure_reports_max_errors_rows_failing_and_the_first_failing_row() -> None:
    report, output = _numbers(
        [[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]], [[1.0, 1.0], [1.31, 1.0], [2.0, 2.5]], Tolerance(0.01, 0.0)
    )
    assert not report.passed
    assert output.rows_failing == 2 and output.first_failing_row == 1
    assert output.max_abs_error == pytest.approx(0.5)
    assert output.max_rel_error == pytest.approx(0.31, rel=1e-5)
    text = report.describe()
    assert "output 'OUTPUT0' max abs error 0.5 > atol 0.01" in text
    assert "in 2 of 3 rows, first failing row 1" in text


def test_nan_matches_only_an_expected_nan_and_inf_only_the_same_inf() -> None:
    assert _numbers([[math.nan, math.inf]], [[math.nan, math.inf]])[0].passed
    _report, output = _numbers([[1.0, math.inf]], [[math.nan, -math.inf]])
    assert output.rows_failing == 1 and output.non_finite_mismatches == 2
    _report, output = _numbers([[math.nan, 1.0]], [[1.0, 1.0]])
    assert not output.passed


def test_an_answer_of_another_shape_fails_without_element_figures() -> None:
    report, output = _numbers([[1.0, 2.0]], [[1.0, 2.0, 3.0]])
    assert not report.passed and output.problem == "answered shape [1, 3], expected [1, 2]"
    assert output.rows_failing == 1


def test_a_missing_output_fails() -> None:
    golden = GoldenSet(inputs={}, outputs={"OUTPUT0": np.zeros((2, 2), dtype=np.float32)})
    report = compare(golden, {})
    assert not report.passed and report.outputs[0].problem == "no answer for it"


def test_text_outputs_compare_exactly_whatever_the_tolerance() -> None:
    golden = GoldenSet(
        inputs={},
        outputs={"LABEL": np.array([["cat"], ["dog"]])},
        tolerances={"LABEL": Tolerance(atol=1e9, rtol=1e9)},
    )
    answered = np.array([[b"cat"], [b"dog"]], dtype=np.object_)
    assert compare(golden, {"LABEL": answered}).passed
    wrong = np.array([[b"cat"], [b"dot"]], dtype=np.object_)
    output = compare(golden, {"LABEL": wrong}).outputs[0]
    assert output.exact and output.rows_failing == 1 and output.first_failing_row == 1
    assert "compared exactly" in output.describe(2)


def test_reports_are_json_safe_even_when_answers_are_not_finite() -> None:
    report, _output = _numbers([[1.0, 3e38]], [[math.nan, -3e38]])
    encoded = json.dumps(report.as_dict(), allow_nan=False)
    assert json.loads(encoded)["outputs"]["OUTPUT0"]["rows_failing"] == 1


def test_merged_reports_keep_the_largest_error_per_output() -> None:
    first, _ = _numbers([[1.0, 1.0]], [[1.0, 1.000001]])
    second, _ = _numbers([[1.0, 1.0]], [[1.000004, 1.0]])
    merged = merge_reports([first, second])
    assert merged["OUTPUT0"]["max_abs_error"] == pytest.approx(4e-6, rel=0.1)
    assert merged["OUTPUT0"]["atol"] == DEFAULT_ATOL
