"""Changing a version's metadata after its push. Pure rules.

Metrics and labels may change later (an evaluation finishes after the push):
a change sets each name given to its value and removes each name given as
None, leaving the others as they are (a JSON merge patch). ``api_version``
is fixed at push: it states the interface of the files, which never change;
a new interface is a new version.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from controlplane.domain.limits import MAX_LIST_ITEMS, validate_text
from controlplane.domain.models import VersionMetadata
from controlplane.errors import InvalidInput

# The names a promotion gate accepts (Gates.metric), so every metric set here can be gated on.
METRIC_NAME = re.compile(r"^[A-Za-z0-9_.\-/]{1,128}$")
_T = TypeVar("_T")


@dataclass(frozen=True)
class MetadataChange:
    """Names to set (a value) or remove (None), per kind."""

    metrics: Mapping[str, float | None]
    labels: Mapping[str, str | None]

    @property
    def empty(self) -> bool:
        return not self.metrics and not self.labels


def _invalid(message: str, what: str) -> InvalidInput:
    return InvalidInput(message, code=f"invalid_{what}")


def _check_metrics(metrics: Mapping[str, float | None]) -> dict[str, float | None]:
    checked: dict[str, float | None] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not METRIC_NAME.fullmatch(name):
            raise _invalid(
                f"metric name {name!r} is not allowed: use 1-128 letters, digits, '_', '-', '.' or '/'",
                "metric",
            )
        if value is None:
            checked[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _invalid(f"metric {name!r} is not a number: {value!r}", "metric")
        if not math.isfinite(value):
            raise _invalid(f"metric {name!r} is not finite: {value!r}", "metric")
        checked[name] = float(value)
    return checked


def _check_labels(labels: Mapping[str, str | None]) -> dict[str, str | None]:
    checked: dict[str, str | None] = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not name:
            raise _invalid(f"label name {name!r} is not allowed", "label")
        validate_text(name, what="label")
        if value is not None:
            if not isinstance(value, str):
                raise _invalid(f"label {name!r} is not text: {value!r}", "label")
            validate_text(value, what="label")
        checked[name] = value
    return checked


def _merge(current: Mapping[str, _T], change: Mapping[str, _T | None]) -> dict[str, _T]:
    merged = dict(current)
    for name, value in change.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def apply_change(current: VersionMetadata, change: MetadataChange) -> VersionMetadata:
    """The metadata after ``change``; InvalidInput (invalid_metric, invalid_label) naming the bad entry."""
    metrics = _merge(current.metrics, _check_metrics(change.metrics))
    labels = _merge(current.labels, _check_labels(change.labels))
    for what, merged in (("metric", metrics), ("label", labels)):
        if len(merged) > MAX_LIST_ITEMS:
            raise _invalid(
                f"a version may hold at most {MAX_LIST_ITEMS} {what}s, this change makes {len(merged)}", what
            )
    return VersionMetadata(labels=labels, metrics=metrics, api_version=current.api_version)
