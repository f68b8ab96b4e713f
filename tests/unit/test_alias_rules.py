"""Alias rules: which names are allowed, which one is reserved, how production's moves are explained."""

from __future__ import annotations

import pytest

from controlplane.domain.aliases import (
    PRODUCTION,
    check_changeable,
    production_reason,
    validate_alias_name,
    validate_reason,
)
from controlplane.errors import Conflict, InvalidInput


@pytest.mark.parametrize("name", ["champion", "challenger", "a", "canary-2", "shadow_v3", "x" * 64])
def test_names_of_lowercase_letters_digits_dash_and_underscore_starting_with_a_letter_are_allowed(
    name: str,
) -> None:
    assert validate_alias_name(name) == name


@pytest.mark.parametrize("name", ["", "2nd", "-x", "_x", "Champion", "a.b", "a b", "a@b", "x" * 65, "é"])
def test_other_names_are_refused_with_what_is_allowed(name: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_alias_name(name)
    assert refused.value.code == "invalid_alias_name"
    assert "starting with a letter" in refused.value.message


def test_production_is_reserved_for_the_control_plane_and_other_names_may_change() -> None:
    assert check_changeable("challenger") == "challenger"
    with pytest.raises(Conflict) as refused:
        check_changeable(PRODUCTION)
    assert refused.value.code == "alias_reserved"
    assert "production" in refused.value.message


def test_a_malformed_name_is_refused_before_the_reservation_is_looked_at() -> None:
    with pytest.raises(InvalidInput):
        check_changeable("Production")


def test_a_reason_is_stripped_and_refused_when_too_long_or_holding_control_characters() -> None:
    assert validate_reason("  better recall  ") == "better recall"
    for bad in ("x" * 501, "line\nbreak"):
        with pytest.raises(InvalidInput) as refused:
            validate_reason(bad)
        assert refused.value.code == "invalid_reason"


def test_production_moving_forward_names_the_rollout_that_succeeded() -> None:
    assert production_reason(7, 2, current=1, held={1}) == "rollout 7 succeeded"
    assert production_reason(1, 1, current=None, held=set()) == "rollout 1 succeeded"


def test_production_going_back_to_a_version_it_held_before_is_a_rollback() -> None:
    assert production_reason(9, 1, current=2, held={1, 2}) == "rollback to version 1: rollout 9 succeeded"


def test_the_same_version_again_is_no_rollback() -> None:
    assert production_reason(4, 2, current=2, held={1, 2}) == "rollout 4 succeeded"
