"""Live traffic per pool as a series of points: the rate arithmetic and the bounded history. Pure rules.

A point describes one pool over the window between two of its samples
(:class:`~controlplane.domain.analysis.PoolSample`): the requests and errors
:func:`~controlplane.domain.analysis.measure` counts in it, their rate per
second of the window, and the p99 Triton reported at its end. A window in
which a counter restarted still gives a point: ``measure`` counts only what
followed the restart.

Triton's counters are summed over the models a pool serves, so they compare
only between samples over the same models: when the pool's release changed
between two samples, the window takes its requests from the proxy alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from controlplane.domain.analysis import PoolSample, measure


@dataclass(frozen=True)
class TrafficPoint:
    """What one pool served over one window, stamped with the wall-clock time the window ended."""

    at: float
    """Wall-clock seconds (epoch) when the window ended."""
    pool: str
    weight: int | None
    """The pool's weight in the proxy at the end of the window (None when the proxy could not say)."""
    release: Mapping[str, int]
    """Model -> version the pool served at the end of the window."""
    requests: int
    errors: int
    requests_per_second: float
    error_rate: float
    p99_ms: float | None


def traffic_point(
    before: PoolSample,
    after: PoolSample,
    *,
    at: float,
    pool: str,
    weight: int | None,
    release: Mapping[str, int],
    same_models: bool = True,
) -> TrafficPoint:
    """The point for the window between two samples of ``pool``.

    ``same_models`` False: the samples summed Triton's counters over
    different models (the release changed), so only the proxy counts.
    A window of no time (or a clock that went back) has a rate of 0; a
    window without a request has no p99.
    """
    if not same_models:
        before = replace(before, triton_success=after.triton_success, triton_failure=after.triton_failure)
    window = measure(before, after)
    seconds = window.window_seconds
    return TrafficPoint(
        at=at,
        pool=pool,
        weight=weight,
        release=dict(release),
        requests=window.requests,
        errors=window.errors,
        requests_per_second=window.requests / seconds if seconds > 0 else 0.0,
        error_rate=window.error_rate,
        # Triton's summary keeps quantiles of requests from before the window (a smoke test, a
        # canary step long over): a window that served nothing has no latency of its own.
        p99_ms=window.p99_ms if window.requests > 0 else None,
    )


def idle_point(*, at: float, pool: str, weight: int | None) -> TrafficPoint:
    """The point of a pool that serves no model: nothing to count, no latency."""
    return TrafficPoint(
        at=at,
        pool=pool,
        weight=weight,
        release={},
        requests=0,
        errors=0,
        requests_per_second=0.0,
        error_rate=0.0,
        p99_ms=None,
    )


@dataclass
class TrafficSeries:
    """The most recent ``capacity`` points of each pool; older ones are dropped as new ones come."""

    capacity: int
    _points: dict[str, deque[TrafficPoint]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {self.capacity}")

    def add(self, points: Iterable[TrafficPoint]) -> None:
        """Append points, each to its pool's history."""
        for point in points:
            self._points.setdefault(point.pool, deque(maxlen=self.capacity)).append(point)

    def since(self, since: float | None) -> list[TrafficPoint]:
        """Every kept point with ``at`` after ``since`` (all for None): oldest first, pools interleaved.

        Points of the same instant keep the order in which their pools were first seen.
        """
        chosen = [
            point for points in self._points.values() for point in points if since is None or point.at > since
        ]
        # sorted() is stable: within one instant, the pools' first-seen order stays.
        return sorted(chosen, key=lambda point: point.at)
