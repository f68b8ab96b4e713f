"""Live per-pool traffic: points from two samples, lazy rounds, bounded history, failing and empty pools.

The sampler is a fake holding cumulative counters per pool that a test
advances; the clock is a number the test moves. Everything else is the
product's: the monitor, the series and ``measure``, and for GET /v1/traffic
the API with token auth on a real SQLite registry.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.artifacts.archive import ArchiveLimits
from controlplane.artifacts.blobs import BlobStore
from controlplane.domain.analysis import PoolSample
from controlplane.domain.auth import Role
from controlplane.domain.traffic_series import TrafficSeries, idle_point, traffic_point
from controlplane.errors import ProxyError, TritonUnavailable
from controlplane.registry import token_store
from controlplane.registry.db import Database
from controlplane.services.health import Health
from controlplane.services.registry import Registry
from controlplane.services.signing import Signing
from controlplane.services.traffic_monitor import TrafficMonitor

T0 = 1_764_761_000.0


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Counters:
    proxy_requests: int = 0
    proxy_errors: int = 0
    triton_success: int = 0
    triton_failure: int = 0
    p99_us: float | None = None


@dataclass
class FakeSampler:
    """Cumulative counters per pool, read as a PoolSample at the clock's time."""

    clock: Clock
    counters: dict[str, Counters] = field(default_factory=dict)
    failures: dict[str, Exception] = field(default_factory=dict)
    calls: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    def __call__(self, pool: str, models: Collection[str]) -> PoolSample:
        assert models, "the sampler refuses an empty model set"
        self.calls.append((pool, tuple(models)))
        if pool in self.failures:
            raise self.failures[pool]
        c = self.counters.setdefault(pool, Counters())
        return PoolSample(
            at=self.clock(),
            proxy_requests=c.proxy_requests,
            proxy_errors=c.proxy_errors,
            triton_success=c.triton_success,
            triton_failure=c.triton_failure,
            p99_us=c.p99_us,
        )

    def serve(self, pool: str, requests: int, *, errors: int = 0, p99_us: float | None = 3200.0) -> None:
        """``requests`` more through the proxy and Triton, ``errors`` of them failed."""
        c = self.counters.setdefault(pool, Counters())
        c.proxy_requests += requests
        c.proxy_errors += errors
        c.triton_success += requests - errors
        c.triton_failure += errors
        c.p99_us = p99_us


@dataclass
class World:
    clock: Clock
    sampler: FakeSampler
    weights: dict[str, int]
    releases: dict[str, dict[str, int]]
    down: set[str]
    monitor: TrafficMonitor

    def tick(self, seconds: float = 1.0) -> None:
        self.clock.now += seconds


def world(*, capacity: int = 600, min_interval: float = 1.0) -> World:
    clock = Clock()
    sampler = FakeSampler(clock)
    weights = {"blue": 100, "green": 0}
    releases: dict[str, dict[str, int]] = {"blue": {"mlp": 1}, "green": {"mlp": 1}}
    down: set[str] = set()
    monitor = TrafficMonitor(
        sampler=sampler,
        pools=("blue", "green"),
        weights=lambda: dict(weights),
        pool_up=lambda pool: pool not in down,
        releases=lambda: {pool: dict(release) for pool, release in releases.items()},
        clock=clock,
        min_interval=min_interval,
        capacity=capacity,
    )
    return World(clock, sampler, weights, releases, down, monitor)


def _sample(at: float, requests: int, errors: int = 0, p99_us: float | None = None) -> PoolSample:
    return PoolSample(
        at=at,
        proxy_requests=requests,
        proxy_errors=errors,
        triton_success=requests - errors,
        triton_failure=errors,
        p99_us=p99_us,
    )


# -- the rate arithmetic ---------------------------------------------------------------


def test_a_point_is_the_windows_requests_per_second_its_error_rate_and_the_p99_at_its_end() -> None:
    point = traffic_point(
        _sample(10.0, 1000, 10, 900.0),
        _sample(12.0, 1241, 13, 3200.0),
        at=T0,
        pool="blue",
        weight=100,
        release={"mlp": 1},
    )

    assert (point.requests, point.errors) == (241, 3)
    assert point.requests_per_second == pytest.approx(120.5)
    assert point.error_rate == pytest.approx(3 / 241)
    assert point.p99_ms == pytest.approx(3.2)
    assert (point.at, point.pool, point.weight, dict(point.release)) == (T0, "blue", 100, {"mlp": 1})


def test_a_window_whose_counters_restarted_counts_what_followed_the_restart() -> None:
    point = traffic_point(_sample(0.0, 5000), _sample(1.0, 40), at=T0, pool="blue", weight=100, release={})

    assert point.requests == 40 and point.requests_per_second == pytest.approx(40.0)


def test_a_window_of_no_time_has_no_rate_rather_than_a_division_by_zero() -> None:
    point = traffic_point(_sample(5.0, 10), _sample(5.0, 20), at=T0, pool="blue", weight=0, release={})

    assert point.requests == 10 and point.requests_per_second == 0.0


def test_when_the_models_changed_only_the_proxy_counts_the_window() -> None:
    before = PoolSample(
        at=0.0, proxy_requests=100, proxy_errors=0, triton_success=100, triton_failure=0, p99_us=None
    )
    # A model added to the release brings its whole cumulative count along.
    after = PoolSample(
        at=1.0, proxy_requests=130, proxy_errors=0, triton_success=5130, triton_failure=0, p99_us=None
    )

    point = traffic_point(before, after, at=T0, pool="blue", weight=100, release={}, same_models=False)

    assert point.requests == 30


def test_the_series_keeps_the_newest_points_of_each_pool_up_to_its_capacity() -> None:
    series = TrafficSeries(capacity=2)
    for at in (1.0, 2.0, 3.0):
        series.add([idle_point(at=at, pool="blue", weight=100), idle_point(at=at, pool="green", weight=0)])

    assert [(p.at, p.pool) for p in series.since(None)] == [
        (2.0, "blue"),
        (2.0, "green"),
        (3.0, "blue"),
        (3.0, "green"),
    ]
    assert [(p.at, p.pool) for p in series.since(2.0)] == [(3.0, "blue"), (3.0, "green")]


# -- the monitor -----------------------------------------------------------------------


def test_the_first_round_is_a_baseline_and_the_next_one_gives_each_pool_its_rates() -> None:
    w = world()
    first = w.monitor.snapshot()
    w.tick(2.0)
    w.sampler.serve("blue", 241, errors=0, p99_us=3200.0)
    second = w.monitor.snapshot()

    assert first.points == []
    assert [(p.name, p.weight, p.up, dict(p.release), p.error) for p in first.pools] == [
        ("blue", 100, True, {"mlp": 1}, None),
        ("green", 0, True, {"mlp": 1}, None),
    ]
    blue, green = second.points
    assert (blue.pool, blue.at, blue.weight, dict(blue.release)) == ("blue", T0 + 2.0, 100, {"mlp": 1})
    assert (blue.requests, blue.errors, blue.error_rate) == (241, 0, 0.0)
    assert blue.requests_per_second == pytest.approx(120.5)
    assert blue.p99_ms == pytest.approx(3.2)
    assert (green.pool, green.requests, green.requests_per_second, green.p99_ms) == ("green", 0, 0.0, None)
    assert second.interval_seconds == 1.0 and second.now == T0 + 2.0


def test_the_models_sampled_are_those_of_the_pools_release() -> None:
    w = world()
    w.releases["blue"] = {"mlp": 2, "resnet": 7}
    w.monitor.snapshot()

    assert sorted(w.sampler.calls) == [("blue", ("mlp", "resnet")), ("green", ("mlp",))]


def test_snapshots_within_the_interval_sample_once_and_later_ones_sample_again() -> None:
    w = world(min_interval=1.0)
    w.monitor.snapshot()
    w.tick(0.5)
    w.monitor.snapshot()
    w.monitor.snapshot()
    sampled_early = len(w.sampler.calls)
    w.tick(0.5)
    w.monitor.snapshot()

    assert sampled_early == 2  # one round: blue and green
    assert len(w.sampler.calls) == 4


def test_a_wall_clock_set_back_does_not_stop_the_sampling() -> None:
    w = world()
    w.monitor.snapshot()
    w.tick(-3600.0)
    w.monitor.snapshot()

    assert len(w.sampler.calls) == 4


def test_each_pool_keeps_at_most_capacity_points_the_newest() -> None:
    w = world(capacity=3)
    for _ in range(6):
        w.monitor.snapshot()
        w.tick()

    points = w.monitor.snapshot().points
    assert [p.at for p in points if p.pool == "blue"] == [T0 + 4, T0 + 5, T0 + 6]
    assert [p.at for p in points if p.pool == "green"] == [T0 + 4, T0 + 5, T0 + 6]


def test_since_returns_only_newer_points_oldest_first_with_the_pools_interleaved() -> None:
    w = world()
    for _ in range(4):
        w.monitor.snapshot()
        w.tick()

    points = w.monitor.snapshot(since=T0 + 2).points
    assert [(p.at, p.pool) for p in points] == [
        (T0 + 3, "blue"),
        (T0 + 3, "green"),
        (T0 + 4, "blue"),
        (T0 + 4, "green"),
    ]
    assert w.monitor.snapshot(since=T0 + 4).points == []


@pytest.mark.parametrize(
    "failure",
    [
        ProxyError("haproxy runtime command 'show stat' failed: connection refused"),
        TritonUnavailable("Triton metrics at http://127.0.0.1:9/metrics did not answer"),
        KeyError("no Triton metrics client for pool 'green'"),
    ],
    ids=["proxy", "triton", "unknown pool"],
)
def test_a_pool_whose_sample_fails_gets_no_point_and_its_error_while_the_others_go_on(
    failure: Exception,
) -> None:
    w = world()
    w.monitor.snapshot()
    w.tick()
    w.sampler.failures["green"] = failure
    w.sampler.serve("blue", 50)
    w.sampler.serve("green", 10)
    failed = w.monitor.snapshot()
    w.tick()
    del w.sampler.failures["green"]
    w.sampler.serve("green", 20)
    recovered = w.monitor.snapshot(since=failed.now)

    assert [(p.pool, p.requests) for p in failed.points] == [("blue", 50)]
    error = {p.name: p.error for p in failed.pools}
    assert error["blue"] is None and error["green"] == str(failure.args[0])
    assert "'" not in error["green"][:1]  # the message, not a repr
    # The previous sample stayed: the point covers both seconds at their average rate.
    green = next(p for p in recovered.points if p.pool == "green")
    assert green.requests == 30 and green.requests_per_second == pytest.approx(15.0)
    assert {p.name: p.error for p in recovered.pools}["green"] is None


def test_a_pool_with_an_empty_release_is_not_sampled_and_shows_zero_requests_without_latency() -> None:
    w = world()
    w.releases["green"] = {}
    w.monitor.snapshot()
    w.tick()
    w.monitor.snapshot()

    assert {pool for pool, _models in w.sampler.calls} == {"blue"}
    green = [p for p in w.monitor.snapshot().points if p.pool == "green"]
    assert [(p.requests, p.requests_per_second, p.error_rate, p.p99_ms) for p in green] == [
        (0, 0.0, 0.0, None),
        (0, 0.0, 0.0, None),
    ]
    assert {p.name: dict(p.release) for p in w.monitor.snapshot().pools}["green"] == {}


def test_a_pool_that_gets_a_release_starts_a_new_baseline() -> None:
    w = world()
    w.releases["green"] = {}
    w.monitor.snapshot()
    w.tick()
    w.releases["green"] = {"mlp": 2}
    w.sampler.serve("green", 500)
    w.monitor.snapshot()
    w.tick()
    w.sampler.serve("green", 7)
    w.monitor.snapshot()

    green = [p for p in w.monitor.snapshot().points if p.pool == "green"]
    assert [(p.at, p.requests, dict(p.release)) for p in green] == [(T0, 0, {}), (T0 + 2, 7, {"mlp": 2})]


def test_a_weight_the_proxy_cannot_give_is_null_and_a_pool_whose_health_cannot_be_read_is_down() -> None:
    clock = Clock()
    sampler = FakeSampler(clock)

    def no_weights() -> Mapping[str, int]:
        raise ProxyError("haproxy admin socket not answering")

    def no_health(pool: str) -> bool:
        raise ProxyError("haproxy admin socket not answering")

    monitor = TrafficMonitor(
        sampler=sampler,
        pools=("blue",),
        weights=no_weights,
        pool_up=no_health,
        releases=lambda: {"blue": {"mlp": 1}},
        clock=clock,
    )
    monitor.snapshot()
    clock.now += 1
    snapshot = monitor.snapshot()

    assert [(p.weight, p.up) for p in snapshot.pools] == [(None, False)]
    assert [p.weight for p in snapshot.points] == [None]


def test_a_pool_the_proxy_finds_down_says_so() -> None:
    w = world()
    w.down.add("green")

    assert {p.name: p.up for p in w.monitor.snapshot().pools} == {"blue": True, "green": False}


def test_while_one_request_samples_another_answers_with_the_kept_points_without_sampling() -> None:
    w = world()
    w.monitor.snapshot()
    w.tick()
    entered, release = threading.Event(), threading.Event()
    inner = w.monitor.sampler

    def slow(pool: str, models: Collection[str]) -> PoolSample:
        entered.set()
        assert release.wait(5)
        return inner(pool, models)

    w.monitor.sampler = slow
    sampling = threading.Thread(target=w.monitor.snapshot)
    sampling.start()
    assert entered.wait(5)
    meanwhile = w.monitor.snapshot()
    release.set()
    sampling.join(5)

    assert meanwhile.points == [] and [p.name for p in meanwhile.pools] == ["blue", "green"]
    assert len(w.sampler.calls) == 4  # the first round and the slow one: no third
    assert [p.pool for p in w.monitor.snapshot().points] == ["blue", "green"]


# -- GET /v1/traffic ---------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[World, TestClient, str]]:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    db.upgrade()
    blobs = BlobStore(tmp_path / "artifacts")
    signing = Signing(db=db, blobs=blobs, uploads_dir=tmp_path / "uploads")
    registry = Registry(
        db=db, blobs=blobs, uploads_dir=tmp_path / "uploads", signing=signing, limits=ArchiveLimits()
    )
    w = world()
    services = ApiServices(
        db=db, registry=registry, signing=signing, health=Health(db=db, pools={}), traffic=w.monitor
    )
    with db.transaction() as session:
        token, _info = token_store.create_token(session, name="console", role=Role.VIEWER, created_by="t")
    with TestClient(create_app(services, max_upload_bytes=1 << 20, auth=Authenticator(db))) as client:
        yield w, client, token
    db.dispose()


def test_the_traffic_answer_has_the_shape_the_console_reads(served: tuple[World, TestClient, str]) -> None:
    w, client, token = served
    auth = {"Authorization": f"Bearer {token}"}
    client.get("/v1/traffic", headers=auth)
    w.tick(2.0)
    w.sampler.serve("blue", 241, p99_us=3200.0)

    answer = client.get("/v1/traffic", headers=auth)

    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "interval_seconds": 1.0,
        "now": T0 + 2.0,
        "pools": [
            {"name": "blue", "weight": 100, "up": True, "release": {"mlp": 1}, "error": None},
            {"name": "green", "weight": 0, "up": True, "release": {"mlp": 1}, "error": None},
        ],
        "points": [
            {
                "at": T0 + 2.0,
                "pool": "blue",
                "weight": 100,
                "release": {"mlp": 1},
                "requests_per_second": 120.5,
                "error_rate": 0.0,
                "p99_ms": 3.2,
                "requests": 241,
                "errors": 0,
            },
            {
                "at": T0 + 2.0,
                "pool": "green",
                "weight": 0,
                "release": {"mlp": 1},
                "requests_per_second": 0.0,
                "error_rate": 0.0,
                "p99_ms": None,
                "requests": 0,
                "errors": 0,
            },
        ],
    }


def test_since_asks_only_for_the_points_after_the_last_one_seen(
    served: tuple[World, TestClient, str],
) -> None:
    w, client, token = served
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(3):
        client.get("/v1/traffic", headers=auth)
        w.tick()

    answer = client.get("/v1/traffic", params={"since": T0 + 2}, headers=auth)

    assert [(p["at"], p["pool"]) for p in answer.json()["points"]] == [(T0 + 3, "blue"), (T0 + 3, "green")]


@pytest.mark.parametrize("since", ["nan", "inf", "-1", "yesterday"])
def test_a_since_that_is_not_a_time_is_refused_422(served: tuple[World, TestClient, str], since: str) -> None:
    _w, client, token = served

    answer = client.get("/v1/traffic", params={"since": since}, headers={"Authorization": f"Bearer {token}"})

    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_request"


def test_traffic_needs_a_token_and_is_not_sampled_for_a_refused_caller(
    served: tuple[World, TestClient, str],
) -> None:
    w, client, _token = served

    answer = client.get("/v1/traffic")

    assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"
    assert w.sampler.calls == []


def test_a_window_without_requests_has_no_p99_even_when_triton_still_reports_an_old_one() -> None:
    before = PoolSample(
        at=0.0, proxy_requests=10, proxy_errors=0, triton_success=10, triton_failure=0, p99_us=70_000.0
    )
    after = PoolSample(
        at=1.0, proxy_requests=10, proxy_errors=0, triton_success=10, triton_failure=0, p99_us=70_000.0
    )
    point = traffic_point(before, after, at=1.0, pool="green", weight=0, release={"mlp": 1})
    assert point.requests == 0
    assert point.p99_ms is None
