"""Golden sets: inputs with the outputs a version must reproduce, and how close counts as the same.

A golden set travels with a version (``golden.npz`` or ``golden.json`` at the
top of the pushed folder, covered by the folder's digest and signature) or is
attached to it later. Before a rollout moves any weight, the candidate on the
idle pool answers the set's inputs on every replica and :func:`compare`
judges the answers.

Every array has a leading rows axis: row ``i`` of every input is one example,
row ``i`` of every output what the version must answer for it. Numbers match
with numpy's ``allclose`` rule per element, ``|actual - expected| <= atol +
rtol * |expected|``, with :data:`DEFAULT_ATOL` and :data:`DEFAULT_RTOL` where
the set gives no tolerance for an output. NaN matches only an expected NaN,
an infinity only the same infinity. BYTES outputs must be equal exactly.

Pure rules over arrays: numpy, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from controlplane.domain.golden_records import Tolerance
from controlplane.domain.golden_records import golden_refusal as _refuse
from controlplane.domain.models import ModelSignature, TensorSpec

Array = npt.NDArray[Any]

MAX_GOLDEN_ROWS = 100_000

BYTES = "BYTES"
NUMPY_TYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
"""Triton data types and the numpy type a golden input of that type must have (BYTES: see ``is_bytes``)."""
_TEXT_KINDS = frozenset("SUO")
_NUMBER_KINDS = frozenset("biuf")


@dataclass(frozen=True)
class GoldenSet:
    """Inputs, expected outputs and per-output tolerances, all with the same leading rows axis."""

    inputs: Mapping[str, Array]
    outputs: Mapping[str, Array]
    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """The number of examples (the length of the arrays' first axis)."""
        for array in (*self.inputs.values(), *self.outputs.values()):
            return int(array.shape[0]) if array.ndim else 0
        return 0

    def tolerance(self, output: str) -> Tolerance:
        """The tolerance of ``output``: the set's own, else the defaults."""
        return self.tolerances.get(output, Tolerance())

    def effective_tolerances(self) -> dict[str, Tolerance]:
        """Every expected output with the tolerance it is judged by."""
        return {name: self.tolerance(name) for name in self.outputs}


def is_bytes(array: Array) -> bool:
    """Whether an array holds text (bytes or str), as a BYTES tensor does."""
    return array.dtype.kind in _TEXT_KINDS


def _dims_match(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))


def _check_row_shape(kind: str, name: str, array: Array, spec: TensorSpec) -> None:
    if array.ndim == 0:
        raise _refuse(f"{kind} {name!r} is a scalar; it needs a leading rows axis", name)
    if not _dims_match(tuple(int(s) for s in array.shape[1:]), spec.dims):
        raise _refuse(
            f"{kind} {name!r} has rows of shape {list(array.shape[1:])}, the model declares dims "
            f"{list(spec.dims)} (-1: any)",
            name,
        )


def _check_input_type(name: str, array: Array, spec: TensorSpec) -> None:
    if spec.data_type == BYTES:
        if array.dtype.kind not in _TEXT_KINDS:
            raise _refuse(f"input {name!r} is {array.dtype}, the model declares BYTES (text)", name)
        if array.dtype.kind == "O" and not all(isinstance(v, bytes | str) for v in array.flat):
            raise _refuse(f"input {name!r} holds values that are neither bytes nor text", name)
        return
    wanted = NUMPY_TYPES.get(spec.data_type)
    if wanted is None:
        raise _refuse(f"input {name!r} has data type {spec.data_type}, which a golden set cannot hold", name)
    if array.dtype != wanted:
        raise _refuse(
            f"input {name!r} is {array.dtype}, the model declares {spec.data_type} ({wanted})", name
        )


def _check_output_type(name: str, array: Array, spec: TensorSpec) -> None:
    if spec.data_type == BYTES:
        if array.dtype.kind not in _TEXT_KINDS:
            raise _refuse(f"output {name!r} is {array.dtype}, the model declares BYTES (text)", name)
    elif array.dtype.kind not in _NUMBER_KINDS:
        raise _refuse(
            f"output {name!r} is {array.dtype}, the model declares {spec.data_type} (numbers)", name
        )


def _check_tolerance(name: str, tolerance: Tolerance) -> None:
    for which, value in (("atol", tolerance.atol), ("rtol", tolerance.rtol)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _refuse(f"{which} of output {name!r} is not a number", name)
        if not math.isfinite(value) or value < 0:
            raise _refuse(f"{which} of output {name!r} must be a finite number >= 0, got {value!r}", name)


def validate_golden(
    golden: GoldenSet, signature: ModelSignature, *, max_rows: int = MAX_GOLDEN_ROWS
) -> GoldenSet:
    """Return ``golden`` if a version with ``signature`` can be asked it; else InvalidInput naming the tensor.

    Every input the model declares is present with its data type and per-row
    dims (-1 matches any); no other input; at least one expected output, each
    one the model declares, with rows of its dims; tolerances only for those
    outputs; every array with the same number of rows, 1 to ``max_rows``.
    Code ``invalid_golden_set``.
    """
    declared_inputs = {t.name: t for t in signature.inputs}
    declared_outputs = {t.name: t for t in signature.outputs}
    for name in golden.inputs:
        if name not in declared_inputs:
            raise _refuse(f"input {name!r} is not an input of the model", name)
    for name, spec in declared_inputs.items():
        if name not in golden.inputs:
            raise _refuse(f"input {name!r} of the model is missing", name)
        array = golden.inputs[name]
        _check_row_shape("input", name, array, spec)
        _check_input_type(name, array, spec)
    if not golden.outputs:
        raise _refuse("it holds no expected output")
    for name, array in golden.outputs.items():
        spec_out = declared_outputs.get(name)
        if spec_out is None:
            raise _refuse(f"output {name!r} is not an output of the model", name)
        _check_row_shape("output", name, array, spec_out)
        _check_output_type(name, array, spec_out)
    for name, tolerance in golden.tolerances.items():
        if name not in golden.outputs:
            raise _refuse(f"a tolerance names {name!r}, which is not an expected output", name)
        _check_tolerance(name, tolerance)
    counts = {name: int(a.shape[0]) for name, a in (*golden.inputs.items(), *golden.outputs.items())}
    rows = golden.rows
    for name, count in counts.items():
        if count != rows:
            raise _refuse(
                f"{name!r} has {count} rows, other tensors {rows}; every tensor needs the same", name
            )
    if rows < 1:
        raise _refuse("it has no rows")
    if rows > max_rows:
        raise _refuse(f"it has {rows} rows; the limit is {max_rows}")
    return golden


def as_bytes_array(array: Array) -> Array:
    """A text array as the object array of ``bytes`` a BYTES tensor is sent and answered as."""
    flat = [v.encode() if isinstance(v, str) else bytes(v) for v in array.reshape(-1).tolist()]
    out = np.empty(len(flat), dtype=np.object_)
    out[:] = flat
    return out.reshape(array.shape)


# -- comparison ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputComparison:
    """How one output of the candidate compares with the golden set's expected values."""

    name: str
    tolerance: Tolerance
    exact: bool
    """Compared for equality (BYTES), not within a tolerance."""
    rows_failing: int
    first_failing_row: int | None
    max_abs_error: float | None = None
    """Largest ``|actual - expected|`` over elements both finite (None: not numbers, or no answer)."""
    max_rel_error: float | None = None
    """Largest ``|actual - expected| / |expected|`` over finite elements whose expected value is not 0."""
    non_finite_mismatches: int = 0
    """Elements where a NaN or an infinity on one side is not the same on the other."""
    problem: str | None = None
    """Why the values could not be compared element by element (missing output, another shape)."""

    @property
    def passed(self) -> bool:
        return self.problem is None and self.rows_failing == 0

    def describe(self, rows: int) -> str:
        """One line a person reads: what failed and where."""
        head = f"output {self.name!r}"
        if self.problem is not None:
            return f"{head}: {self.problem}"
        where = f"in {self.rows_failing} of {rows} rows, first failing row {self.first_failing_row}"
        if self.exact:
            return f"{head} differs (compared exactly) {where}"
        parts = [
            f"{head} max abs error {_figure(self.max_abs_error)} > atol {self.tolerance.atol:g} "
            f"+ rtol {self.tolerance.rtol:g}*|expected| {where}"
        ]
        if self.max_rel_error is not None:
            parts.append(f"max rel error {_figure(self.max_rel_error)}")
        if self.non_finite_mismatches:
            parts.append(f"{self.non_finite_mismatches} NaN/inf values differ")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "exact": self.exact,
            "atol": self.tolerance.atol,
            "rtol": self.tolerance.rtol,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "rows_failing": self.rows_failing,
            "first_failing_row": self.first_failing_row,
            "non_finite_mismatches": self.non_finite_mismatches,
            "problem": self.problem,
        }


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


@dataclass(frozen=True)
class GoldenReport:
    """Every expected output compared; ``passed`` when all of them are within tolerance."""

    rows: int
    outputs: tuple[OutputComparison, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def failures(self) -> tuple[OutputComparison, ...]:
        return tuple(o for o in self.outputs if not o.passed)

    def describe(self) -> str:
        """What failed, output by output ("" when it passed)."""
        return "; ".join(o.describe(self.rows) for o in self.failures)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe figures (every number finite, or None)."""
        return {
            "passed": self.passed,
            "rows": self.rows,
            "outputs": {o.name: o.as_dict() for o in self.outputs},
        }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _failing_rows(bad: npt.NDArray[np.bool_], rows: int) -> tuple[int, int | None]:
    per_row = bad.reshape(rows, -1).any(axis=1) if rows else np.zeros(0, dtype=bool)
    failing = np.flatnonzero(per_row)
    return int(failing.size), (int(failing[0]) if failing.size else None)


def _compare_exact(name: str, tolerance: Tolerance, actual: Array, expected: Array) -> OutputComparison:
    rows = int(expected.shape[0])
    got = as_bytes_array(actual).reshape(-1).tolist() if is_bytes(actual) else None
    want = as_bytes_array(expected).reshape(-1).tolist()
    if got is None:
        return OutputComparison(
            name, tolerance, True, rows, 0, problem=f"answered {actual.dtype} values, expected text (BYTES)"
        )
    bad = np.array([a != e for a, e in zip(got, want, strict=True)], dtype=bool).reshape(expected.shape)
    failing, first = _failing_rows(bad, rows)
    return OutputComparison(name, tolerance, True, failing, first)


def _compare_numbers(name: str, tolerance: Tolerance, actual: Array, expected: Array) -> OutputComparison:
    rows = int(expected.shape[0])
    if actual.dtype.kind not in _NUMBER_KINDS:
        return OutputComparison(
            name, tolerance, False, rows, 0, problem=f"answered {actual.dtype} values, expected numbers"
        )
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        finite = np.isfinite(a) & np.isfinite(e)
        diff = np.abs(a - e)
        within = finite & (diff <= tolerance.atol + tolerance.rtol * np.abs(e))
        # allclose's rule for what is not finite: NaN only matches NaN, inf only the same inf.
        same_special = (np.isnan(a) & np.isnan(e)) | (np.isinf(a) & np.isinf(e) & (a == e))
        ok = within | same_special
        special_mismatch = ~finite & ~same_special
        abs_errors = diff[finite]
        rel_mask = finite & (e != 0)
        rel_errors = diff[rel_mask] / np.abs(e[rel_mask])
    failing, first = _failing_rows(~ok, rows)
    return OutputComparison(
        name,
        tolerance,
        False,
        failing,
        first,
        max_abs_error=_finite_or_none(float(abs_errors.max())) if abs_errors.size else 0.0,
        max_rel_error=_finite_or_none(float(rel_errors.max())) if rel_errors.size else 0.0,
        non_finite_mismatches=int(special_mismatch.sum()),
    )


def compare_output(
    name: str, tolerance: Tolerance, actual: Array | None, expected: Array
) -> OutputComparison:
    """One output: every element within tolerance (numbers) or equal (text), shapes identical."""
    rows = int(expected.shape[0])
    if actual is None:
        return OutputComparison(name, tolerance, is_bytes(expected), rows, 0, problem="no answer for it")
    if tuple(actual.shape) != tuple(expected.shape):
        return OutputComparison(
            name,
            tolerance,
            is_bytes(expected),
            rows,
            0,
            problem=f"answered shape {list(actual.shape)}, expected {list(expected.shape)}",
        )
    if is_bytes(expected):
        return _compare_exact(name, tolerance, actual, expected)
    return _compare_numbers(name, tolerance, actual, expected)


def compare(golden: GoldenSet, actual_outputs: Mapping[str, Array]) -> GoldenReport:
    """Judge a candidate's answers to ``golden.inputs`` (arrays with the rows axis) against the set."""
    return GoldenReport(
        rows=golden.rows,
        outputs=tuple(
            compare_output(name, golden.tolerance(name), actual_outputs.get(name), expected)
            for name, expected in golden.outputs.items()
        ),
    )


def merge_reports(reports: Iterable[GoldenReport]) -> dict[str, dict[str, float | None]]:
    """The largest errors per output over several reports (one per replica), for a pass report."""
    merged: dict[str, dict[str, float | None]] = {}
    for report in reports:
        for o in report.outputs:
            entry = merged.setdefault(o.name, {"max_abs_error": 0.0, "max_rel_error": 0.0})
            for key, value in (("max_abs_error", o.max_abs_error), ("max_rel_error", o.max_rel_error)):
                entry[key] = _larger(entry[key], value)
            entry["atol"] = o.tolerance.atol
            entry["rtol"] = o.tolerance.rtol
    return merged


def _larger(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return max(a, b)
