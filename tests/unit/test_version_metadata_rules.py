"""Changing a version's metrics and labels after its push (``domain.version_metadata.apply_change``)."""

from __future__ import annotations

import math

import pytest

from controlplane.domain.limits import MAX_LIST_ITEMS
from controlplane.domain.models import VersionMetadata
from controlplane.domain.version_metadata import MetadataChange, apply_change
from controlplane.errors import InvalidInput

CURRENT = VersionMetadata(labels={"team": "search"}, metrics={"accuracy": 0.9, "f1": 0.7}, api_version="2")


def test_named_values_are_set_none_removes_and_the_rest_is_kept() -> None:
    change = MetadataChange(metrics={"accuracy": 0.93, "f1": None, "auc": 1}, labels={"owner": "ml"})

    after = apply_change(CURRENT, change)

    assert after.metrics == {"accuracy": 0.93, "auc": 1.0}
    assert after.labels == {"team": "search", "owner": "ml"}
    assert after.api_version == "2"


def test_removing_a_name_that_is_not_there_changes_nothing() -> None:
    assert apply_change(CURRENT, MetadataChange(metrics={"absent": None}, labels={"absent": None})) == CURRENT


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, "0.9"])
def test_a_metric_must_be_a_finite_number(value: object) -> None:
    with pytest.raises(InvalidInput) as refused:
        apply_change(CURRENT, MetadataChange(metrics={"accuracy": value}, labels={}))  # type: ignore[dict-item]

    assert refused.value.code == "invalid_metric"
    assert "'accuracy'" in refused.value.message


@pytest.mark.parametrize("name", ["", "top 1", "a" * 129, "acc\n"])
def test_a_metric_name_is_one_a_gate_can_name(name: str) -> None:
    with pytest.raises(InvalidInput, match="metric name"):
        apply_change(CURRENT, MetadataChange(metrics={name: 1.0}, labels={}))


@pytest.mark.parametrize(
    ("name", "value"), [("", "x"), ("team\x00", "x"), ("team", "a\x1bb"), ("team", "x" * 1025)]
)
def test_a_label_is_printable_text(name: str, value: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        apply_change(CURRENT, MetadataChange(metrics={}, labels={name: value}))

    assert refused.value.code == "invalid_label"


def test_a_version_holds_at_most_the_list_limit_of_metrics() -> None:
    many = {f"m{i}": float(i) for i in range(MAX_LIST_ITEMS)}

    with pytest.raises(InvalidInput, match=f"at most {MAX_LIST_ITEMS} metrics"):
        apply_change(CURRENT, MetadataChange(metrics=many, labels={}))
