"""A token bucket that also counts what it turned away. Pure: the clock is passed in.

Used where a flood must stay visible without filling the disk: the first
``burst`` events pass, then ``rate`` per second; the next event that passes
carries how many were suppressed since the previous one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Admission:
    """Whether an event may be written, and how many were dropped just before it."""

    allowed: bool
    suppressed: int = 0


class TokenBucket:
    """``burst`` events at once, refilled at ``rate`` events per second. Not thread-safe by itself."""

    def __init__(self, *, burst: int, rate: float, clock: Callable[[], float]) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.burst = burst
        self.rate = rate
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._suppressed = 0

    @property
    def suppressed(self) -> int:
        """Events turned away since the last one that passed."""
        return self._suppressed

    def take(self) -> Admission:
        """Spend one token if there is one; otherwise count the event as suppressed."""
        now = self._clock()
        # A clock that steps backwards must not mint tokens.
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            suppressed, self._suppressed = self._suppressed, 0
            return Admission(True, suppressed)
        self._suppressed += 1
        return Admission(False)
