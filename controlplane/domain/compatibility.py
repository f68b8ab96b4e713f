"""Interface compatibility: does a candidate version still serve the clients of the version in production?

Pure rules over two :class:`~controlplane.domain.models.ModelSignature`. A
client of the serving version sends its inputs (names, data types, shapes,
up to ``max_batch_size`` rows) and reads its outputs. The candidate is
compatible when every such client still works:

* inputs are what clients send, so the candidate may accept more than before
  (a fixed dimension widened to ``-1``) but not less, and may not require an
  input clients do not send. ModelSignature cannot say that an input is
  optional, so every added input counts as required: breaking.
* outputs are what clients read, so the candidate may return more outputs, or
  a dimension that was variable (``-1``) at a fixed size, but not fewer
  outputs, nor a variable size where clients were promised a fixed one.
* ``max_batch_size`` may grow; it may not shrink, and batching may not be
  turned on or off (either way the shape a client sends changes meaning).

With batching, Triton prepends the batch dimension to the declared dims; the
shapes compared here are what a client sends, batch axis included, so a
version that moved the batch axis from ``dims`` into ``max_batch_size``
differs only by ``batching_changed``.

A breaking version may roll out only as a new major ``api_version`` the
operator explicitly allows (:func:`breaking_allowed`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controlplane.domain.models import ModelSignature, TensorSpec

_VARIABLE = -1


class Code(enum.StrEnum):
    """What differs between the serving version and the candidate."""

    INPUT_REMOVED = "input_removed"
    INPUT_ADDED = "input_added"
    INPUT_RENAMED = "input_renamed"
    OUTPUT_REMOVED = "output_removed"
    OUTPUT_ADDED = "output_added"
    OUTPUT_RENAMED = "output_renamed"
    DTYPE_CHANGED = "dtype_changed"
    DIMS_WIDENED = "dims_widened"
    DIMS_NARROWED = "dims_narrowed"
    DIMS_INCOMPATIBLE = "dims_incompatible"
    MAX_BATCH_SIZE_INCREASED = "max_batch_size_increased"
    MAX_BATCH_SIZE_REDUCED = "max_batch_size_reduced"
    BATCHING_CHANGED = "batching_changed"
    BACKEND_CHANGED = "backend_changed"


@dataclass(frozen=True)
class Difference:
    """One difference between the serving version's interface and the candidate's."""

    code: str
    tensor: str | None
    """The tensor it concerns (the serving version's name for a rename); None for the batch size."""
    detail: str
    breaking: bool
    """Whether a client of the serving version may fail against the candidate."""

    def __post_init__(self) -> None:
        # A Code member compares equal to its text; stored as plain text it also prints as one.
        object.__setattr__(self, "code", str(self.code))

    def as_dict(self) -> dict[str, Any]:
        """The difference as JSON-ready values."""
        return {"code": self.code, "tensor": self.tensor, "detail": self.detail, "breaking": self.breaking}


@dataclass(frozen=True)
class Compatibility:
    """Every difference found, breaking or not (an empty tuple: the same interface)."""

    differences: tuple[Difference, ...]

    @property
    def breaking(self) -> tuple[Difference, ...]:
        """The differences that break clients of the serving version."""
        return tuple(d for d in self.differences if d.breaking)

    @property
    def compatible(self) -> bool:
        """Whether every client of the serving version still works against the candidate."""
        return not self.breaking

    def as_dict(self) -> dict[str, Any]:
        """``{"compatible", "differences"}`` as JSON-ready values."""
        return {"compatible": self.compatible, "differences": [d.as_dict() for d in self.differences]}


def _shape(dims: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _client_shape(tensor: TensorSpec, max_batch_size: int) -> tuple[int, ...]:
    """The shape a client sends or receives: with batching, a variable batch axis comes first."""
    return ((_VARIABLE,) if max_batch_size > 0 else ()) + tuple(tensor.dims)


def _compare_dims(
    kind: str, name: str, serving: tuple[int, ...], candidate: tuple[int, ...]
) -> Difference | None:
    """A dims difference of one tensor present in both (None: same shape).

    ``kind`` is "input" or "output": accepting more is safe for an input,
    promising less is safe for an output.
    """
    if serving == candidate:
        return None
    change = f"{kind} {name!r} dims {_shape(serving)} -> {_shape(candidate)}"
    if len(serving) != len(candidate):
        return Difference(Code.DIMS_INCOMPATIBLE, name, f"{change}: the rank changed", True)
    widened = narrowed = resized = False
    for old, new in zip(serving, candidate, strict=True):
        if old == new:
            continue
        if new == _VARIABLE:
            widened = True
        elif old == _VARIABLE:
            narrowed = True
        else:
            resized = True
    if resized:
        return Difference(Code.DIMS_INCOMPATIBLE, name, f"{change}: a fixed size changed", True)
    if kind == "input":
        if narrowed:
            return Difference(
                Code.DIMS_INCOMPATIBLE,
                name,
                f"{change}: a variable size became fixed; clients send others",
                True,
            )
        return Difference(Code.DIMS_WIDENED, name, f"{change}: accepts every size it accepted", False)
    if widened:
        return Difference(
            Code.DIMS_INCOMPATIBLE,
            name,
            f"{change}: a fixed size became variable; clients expect it fixed",
            True,
        )
    return Difference(Code.DIMS_NARROWED, name, f"{change}: returns a size clients already accept", False)


def _compare_tensors(
    kind: str,
    serving: Sequence[TensorSpec],
    candidate: Sequence[TensorSpec],
    *,
    serving_batch: int,
    candidate_batch: int,
) -> list[Difference]:
    old = {t.name: t for t in serving}
    new = {t.name: t for t in candidate}
    removed = [old[n] for n in old if n not in new]
    added = [new[n] for n in new if n not in old]
    found: list[Difference] = []
    renamed = (
        len(removed) == 1
        and len(added) == 1
        and removed[0].data_type == added[0].data_type
        and removed[0].dims == added[0].dims
    )
    if renamed:
        before, after = removed[0], added[0]
        found.append(
            Difference(
                f"{kind}_renamed",
                before.name,
                f"{kind} {before.name!r} was renamed to {after.name!r} "
                f"({after.data_type} {_shape(after.dims)}): clients still use {before.name!r}",
                True,
            )
        )
    else:
        for t in removed:
            why = "clients still send it" if kind == "input" else "clients still read it"
            found.append(Difference(f"{kind}_removed", t.name, f"{kind} {t.name!r} was removed: {why}", True))
        for t in added:
            if kind == "input":
                detail = (
                    f"input {t.name!r} ({t.data_type} {_shape(t.dims)}) was added: clients do not send it"
                )
            else:
                detail = f"output {t.name!r} ({t.data_type} {_shape(t.dims)}) was added"
            found.append(Difference(f"{kind}_added", t.name, detail, kind == "input"))
    for name in (n for n in old if n in new):
        before, after = old[name], new[name]
        if before.data_type != after.data_type:
            found.append(
                Difference(
                    Code.DTYPE_CHANGED,
                    name,
                    f"{kind} {name!r} data type {before.data_type} -> {after.data_type}",
                    True,
                )
            )
        dims = _compare_dims(
            kind,
            name,
            _client_shape(before, serving_batch),
            _client_shape(after, candidate_batch),
        )
        if dims is not None:
            found.append(dims)
    return found


def _compare_batching(serving: int, candidate: int) -> Difference | None:
    if serving == candidate:
        return None
    change = f"max_batch_size {serving} -> {candidate}"
    if (serving > 0) != (candidate > 0):
        turned = "on" if candidate > 0 else "off"
        return Difference(
            Code.BATCHING_CHANGED,
            None,
            f"{change}: batching turned {turned}, so the first axis of every tensor changes meaning",
            True,
        )
    if candidate > serving:
        return Difference(
            Code.MAX_BATCH_SIZE_INCREASED, None, f"{change}: larger batches are accepted", False
        )
    return Difference(
        Code.MAX_BATCH_SIZE_REDUCED,
        None,
        f"{change}: batches of {candidate + 1}..{serving} are refused",
        True,
    )


def compare(serving: ModelSignature, candidate: ModelSignature) -> Compatibility:
    """Every difference between the serving version's interface and the candidate's."""
    found: list[Difference] = []
    batching = _compare_batching(serving.max_batch_size, candidate.max_batch_size)
    if batching is not None:
        found.append(batching)
    batches = {"serving_batch": serving.max_batch_size, "candidate_batch": candidate.max_batch_size}
    found += _compare_tensors("input", serving.inputs, candidate.inputs, **batches)
    found += _compare_tensors("output", serving.outputs, candidate.outputs, **batches)
    if serving.backend != candidate.backend:
        found.append(
            Difference(
                Code.BACKEND_CHANGED,
                None,
                f"backend {serving.backend} -> {candidate.backend}: clients do not see it",
                False,
            )
        )
    return Compatibility(tuple(found))


# "2", "2.1", "v2.0.1": a major number, then any dotted numbers.
_API_VERSION = re.compile(r"^[vV]?(\d{1,9})(?:\.\d{1,9})*$")


def api_major(text: str | None) -> int | None:
    """The major number of an ``api_version`` ("2", "2.1", "v2.0.1" -> 2); None when absent or unparseable."""
    if text is None:
        return None
    match = _API_VERSION.fullmatch(text.strip())
    return int(match.group(1)) if match else None


def breaking_allowed(
    compat: Compatibility, serving_api: str | None, candidate_api: str | None, allow_breaking: bool
) -> tuple[bool, str]:
    """Whether the candidate may replace the serving version, and why (not).

    A compatible candidate always may. A breaking one may only when the
    request allows it (``allow_breaking``) AND the candidate declares a major
    ``api_version`` greater than the serving version's, so clients can tell
    the two interfaces apart. A serving version whose ``api_version`` is
    absent or has no major number counts as major 0: it never promised
    anything, so any declared major of 1 or more is new.
    """
    if compat.compatible:
        return True, "the candidate serves every client of the serving version"
    serving_major = api_major(serving_api) or 0
    candidate_major = api_major(candidate_api)
    missing: list[str] = []
    if candidate_major is None:
        declared = (
            "no api_version" if candidate_api is None else f"api_version {candidate_api!r} with no major"
        )
        missing.append(f"the candidate declares {declared} (it needs a major above {serving_major})")
    elif candidate_major <= serving_major:
        missing.append(
            f"the candidate's api_version {candidate_api!r} (major {candidate_major}) is not a new major "
            f"over the serving version's (major {serving_major})"
        )
    if not allow_breaking:
        missing.append("the request does not allow a breaking change (allow_breaking)")
    if missing:
        return False, "; ".join(missing)
    return True, f"a new major api_version ({serving_major} -> {candidate_major}) and allow_breaking"
