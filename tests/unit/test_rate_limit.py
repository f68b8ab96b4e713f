"""The token bucket that limits audit rows of refused requests (pure, with a hand-driven clock)."""

from __future__ import annotations

import pytest

from controlplane.domain.ratelimit import Admission, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_events_are_suppressed_until_tokens_refill() -> None:
    clock = Clock()
    bucket = TokenBucket(burst=3, rate=1.0, clock=clock)
    assert [bucket.take().allowed for _ in range(5)] == [True, True, True, False, False]
    clock.now += 1.0
    assert bucket.take() == Admission(True, suppressed=2)
    assert bucket.take() == Admission(False)


def test_the_suppressed_count_is_reported_once_by_the_next_event_that_passes() -> None:
    clock = Clock()
    bucket = TokenBucket(burst=1, rate=0.5, clock=clock)
    bucket.take()
    for _ in range(998):
        bucket.take()
    assert bucket.suppressed == 998
    clock.now += 2.0
    assert bucket.take() == Admission(True, suppressed=998)
    clock.now += 2.0
    assert bucket.take() == Admission(True, suppressed=0)


def test_tokens_never_exceed_the_burst_however_long_it_was_quiet() -> None:
    clock = Clock()
    bucket = TokenBucket(burst=2, rate=10.0, clock=clock)
    clock.now += 3600
    assert [bucket.take().allowed for _ in range(3)] == [True, True, False]


def test_a_clock_that_steps_backwards_mints_no_tokens() -> None:
    clock = Clock()
    bucket = TokenBucket(burst=1, rate=1.0, clock=clock)
    assert bucket.take().allowed
    clock.now -= 50
    assert not bucket.take().allowed
    clock.now += 50.5
    assert not bucket.take().allowed
    clock.now += 0.5
    assert bucket.take().allowed


@pytest.mark.parametrize(("burst", "rate"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_a_bucket_that_could_never_pass_anything_is_refused(burst: int, rate: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(burst=burst, rate=rate, clock=Clock())
