"""Live traffic of every pool for charts: sampled lazily, when someone asks, at most once per interval.

Nothing runs in the background. A :meth:`TrafficMonitor.snapshot` finding the
last sampling round older than ``min_interval`` samples every pool once (its
proxy and Triton counters over the models of its release), turns each sample
and the previous one of that pool into a point
(:mod:`controlplane.domain.traffic_series`), and answers with the points newer
than the caller's ``since``. However many consoles poll, the pools are
sampled at most once per ``min_interval``.

Concurrency: one round at a time. A caller arriving while another thread
samples does not wait for it: it answers with the points already kept (the
new ones come with its next poll). The kept points and the pools' state are
swapped in under a lock, so an answer never mixes two rounds.

A pool whose sample fails (proxy or Triton not answering, no metrics client
for it) gets no point in that round and its error in its pool entry; its
previous sample stays, so its next point covers the whole gap at its average
rate. A pool serving no model is not sampled (there are no models to read
Triton's counters for): its points say 0 requests and no latency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from controlplane.domain.analysis import PoolSample
from controlplane.domain.traffic_series import TrafficPoint, TrafficSeries, idle_point, traffic_point
from controlplane.errors import ProxyError, TritonUnavailable

Sampler = Callable[[str, Collection[str]], PoolSample]
"""``sampler(pool, models)``: the pool's cumulative counters now (``rollout.sampling.PoolSampler``)."""

DEFAULT_MIN_INTERVAL = 1.0
DEFAULT_CAPACITY = 600


@dataclass(frozen=True)
class PoolTraffic:
    """A pool as of the last sampling round."""

    name: str
    weight: int | None
    """Its weight in the proxy (None when the proxy could not say)."""
    up: bool
    """The proxy's health checks find it able to serve."""
    release: Mapping[str, int]
    error: str | None
    """Why it has no point from the last round (its sample failed), else None."""


@dataclass(frozen=True)
class TrafficSnapshot:
    """The pools and their points newer than what the caller asked for."""

    interval_seconds: float
    now: float
    """Wall-clock seconds (epoch) when the answer was made."""
    pools: list[PoolTraffic]
    points: list[TrafficPoint]
    """Oldest first, every pool's interleaved."""


@dataclass(frozen=True)
class _Kept:
    sample: PoolSample
    models: frozenset[str]


def _reason(exc: Exception) -> str:
    if isinstance(exc, ProxyError | TritonUnavailable):
        return exc.message
    # KeyError's str() is the repr of its argument, quotes included.
    return str(exc.args[0]) if exc.args else type(exc).__name__


class TrafficMonitor:
    """Per-pool request rate, error rate and p99 over the last ``capacity`` intervals."""

    def __init__(
        self,
        *,
        sampler: Sampler,
        pools: Sequence[str],
        weights: Callable[[], Mapping[str, int]],
        pool_up: Callable[[str], bool],
        releases: Callable[[], Mapping[str, Mapping[str, int]]],
        clock: Callable[[], float] = time.time,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        """``weights``: the proxy's weight per pool; ``releases``: model -> version per pool (the registry's).

        ``clock`` gives the wall-clock time of points and answers and paces the rounds.
        """
        if min_interval < 0:
            raise ValueError(f"min_interval cannot be negative, got {min_interval}")
        self.sampler = sampler
        self.pool_names = tuple(pools)
        self.weights = weights
        self.pool_up = pool_up
        self.releases = releases
        self.clock = clock
        self.min_interval = min_interval
        self._series = TrafficSeries(capacity)
        self._pools: list[PoolTraffic] = []
        self._previous: dict[str, _Kept] = {}
        self._last_round: float | None = None
        self._sampling = threading.Lock()
        self._lock = threading.Lock()

    def snapshot(self, since: float | None = None) -> TrafficSnapshot:
        """The pools and every kept point with ``at`` after ``since``, sampling first when due.

        DatabaseUnavailable (the releases could not be read) propagates; a pool's sampling error does not.
        """
        self._sample_if_due()
        with self._lock:
            pools = list(self._pools)
            points = self._series.since(since)
        return TrafficSnapshot(
            interval_seconds=self.min_interval, now=self.clock(), pools=pools, points=points
        )

    def _sample_if_due(self) -> None:
        if not self._sampling.acquire(blocking=False):
            return  # another request is sampling: answer with what is kept
        try:
            now = self.clock()
            last = self._last_round
            # A wall clock set back would otherwise hold the next round off for as long.
            if last is not None and 0 <= now - last < self.min_interval:
                return
            self._last_round = now
            pools, points = self._round(now)
            with self._lock:
                self._pools = pools
                self._series.add(points)
        finally:
            self._sampling.release()

    def _round(self, at: float) -> tuple[list[PoolTraffic], list[TrafficPoint]]:
        """Sample every pool once; every point of the round carries the round's time ``at``."""
        releases = self.releases()
        try:
            weights: Mapping[str, int] = self.weights()
        except ProxyError:
            weights = {}
        pools: list[PoolTraffic] = []
        points: list[TrafficPoint] = []
        for name in self.pool_names:
            release = dict(releases.get(name, {}))
            weight = weights.get(name)
            point, error = self._point(name, release, weight, at)
            if point is not None:
                points.append(point)
            pools.append(PoolTraffic(name, weight, self._is_up(name), release, error))
        return pools, points

    def _point(
        self, pool: str, release: Mapping[str, int], weight: int | None, at: float
    ) -> tuple[TrafficPoint | None, str | None]:
        """This round's point of ``pool`` (None for its first sample or a failed one) and the error."""
        if not release:
            # The sampler refuses an empty model set; and the next release starts a new baseline.
            self._previous.pop(pool, None)
            return idle_point(at=at, pool=pool, weight=weight), None
        models = frozenset(release)
        try:
            sample = self.sampler(pool, sorted(models))
        except (ProxyError, TritonUnavailable, KeyError) as exc:
            return None, _reason(exc)
        previous = self._previous.get(pool)
        self._previous[pool] = _Kept(sample, models)
        if previous is None or sample.at < previous.sample.at:
            # No window yet, or none that measure() could take: this sample is the new baseline.
            return None, None
        point = traffic_point(
            previous.sample,
            sample,
            at=at,
            pool=pool,
            weight=weight,
            release=release,
            same_models=previous.models == models,
        )
        return point, None

    def _is_up(self, pool: str) -> bool:
        try:
            return self.pool_up(pool)
        except ProxyError:
            return False
