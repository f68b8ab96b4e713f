"""The audit log cursor of a live stream: in id order, waiting a bounded time for an id still missing."""

from __future__ import annotations

import pytest

from controlplane.domain.event_cursor import EventCursor


def test_consecutive_ids_are_all_delivered_and_the_cursor_moves_past_them() -> None:
    cursor = EventCursor(after=4)
    assert cursor.take([5, 6, 7], now=0.0) == 3
    assert cursor.after == 7


def test_an_id_missing_in_the_middle_holds_back_the_events_after_it() -> None:
    cursor = EventCursor(after=10, gap_grace=2.0)
    assert cursor.take([11, 13, 14], now=0.0) == 1
    assert cursor.after == 11


def test_the_missing_id_arriving_later_releases_everything_in_order() -> None:
    cursor = EventCursor(after=11, gap_grace=2.0)
    assert cursor.take([13], now=0.0) == 0
    assert cursor.take([12, 13], now=0.5) == 2
    assert cursor.after == 13


def test_an_id_that_never_comes_is_skipped_once_the_grace_has_passed() -> None:
    cursor = EventCursor(after=11, gap_grace=2.0)
    assert cursor.take([13, 14], now=10.0) == 0
    assert cursor.take([13, 14], now=11.9) == 0
    assert cursor.take([13, 14], now=12.0) == 2
    assert cursor.after == 14


def test_a_second_gap_gets_its_own_grace() -> None:
    cursor = EventCursor(after=1, gap_grace=1.0)
    cursor.take([3], now=0.0)
    assert cursor.take([3, 5], now=1.0) == 1
    assert cursor.after == 3
    assert cursor.take([5], now=1.5) == 0
    assert cursor.take([5], now=2.0) == 1


def test_an_id_not_after_the_cursor_is_a_bug_of_the_caller() -> None:
    with pytest.raises(ValueError, match="not after"):
        EventCursor(after=5).take([5], now=0.0)
