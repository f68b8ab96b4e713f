"""The rollout engine when the database, Triton or the proxy stop answering for a while.

Version 1 of ``mlp`` serves on blue with green as warm standby; each test
rolls version 2 out to green (canary 10/50/100, 30 s steps, 60 s bake on the
fake clock) while a fault is injected. A retryable fault is waited out and
the rollout ends as if nothing happened; a permanent one ends it as its rules
say.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fakes import World, serving_world, spec

from controlplane.domain.models import VersionState
from controlplane.domain.rollouts import RolloutState
from controlplane.errors import (
    ControlPlaneError,
    DatabaseUnavailable,
    ModelLoadFailed,
    ProxyError,
    SmokeTestFailed,
    TritonUnavailable,
)
from controlplane.registry.db import Database
from controlplane.rollout.engine import RolloutEngine


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = serving_world(tmp_path)
    yield world
    world.close()


def failing_times(times: int, error: Callable[[], Exception]) -> Callable[..., None]:
    """A hook that raises ``error()`` on its first ``times`` calls, then lets every call through."""
    left = [times]

    def hook(*_args: Any) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise error()

    return hook


class FlakyDatabase(Database):
    """The world's database, refusing every transaction while ``down`` returns True."""

    def __init__(self, real: Database, down: Callable[[], bool]) -> None:
        super().__init__(real.url, engine=real.engine)
        self.down = down
        self.refused = 0

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        if self.down():
            self.refused += 1
            raise DatabaseUnavailable("the registry database is not available")
        with super().transaction() as session:
            yield session


def _engine_on(world: World, db: Database) -> RolloutEngine:
    engine = world.engine()
    engine.db = db
    engine.claims.db = db
    return engine


def _assert_promoted(world: World, engine: RolloutEngine, rollout_id: int) -> None:
    done = engine.wait(rollout_id, timeout=10)
    assert done.state is RolloutState.SUCCEEDED, done.reason
    assert not engine.list(active_only=True)
    assert world.router.weights() == {"blue": 0, "green": 100} == world.desired_weights()
    assert world.releases() == {"blue": {"mlp": 2}, "green": {"mlp": 2}}
    for pool in ("blue", "green"):
        assert world.triton(pool).ready_models() == {"mlp": 2}
    assert world.registry.get_version("mlp", 2).state is VersionState.SERVING
    assert not [e for e in done.events if e.to_state in ("rolling_back", "failed")]


def _unreachable_triton() -> Exception:
    return TritonUnavailable("Triton did not answer: connection refused")


def _unreachable_proxy() -> Exception:
    return ProxyError("admin socket does not exist")


@pytest.mark.parametrize(
    "inject",
    [
        pytest.param(
            lambda w: w.triton("green").before.__setitem__("load", failing_times(3, _unreachable_triton)),
            id="triton-load",
        ),
        pytest.param(
            lambda w: w.triton("green").before.__setitem__(
                "smoke_test", failing_times(3, _unreachable_triton)
            ),
            id="triton-smoke-test",
        ),
        pytest.param(
            lambda w: setattr(w.router, "before_set_weights", failing_times(3, _unreachable_proxy)),
            id="proxy-weights",
        ),
        pytest.param(
            lambda w: w.triton("blue").before.__setitem__("load", failing_times(3, _unreachable_triton)),
            id="triton-of-the-old-pool-during-bake",
        ),
    ],
)
def test_a_triton_or_proxy_out_of_reach_at_any_step_is_waited_out_and_the_rollout_succeeds(
    world: World, inject: Callable[[World], None]
) -> None:
    engine = world.engine()
    inject(world)

    rollout = engine.start(spec(2), actor="tests")

    _assert_promoted(world, engine, rollout.id)


def test_a_sampler_that_cannot_reach_triton_repeats_the_step_instead_of_judging_it(world: World) -> None:
    real = world.sampler
    refuse = failing_times(2, _unreachable_triton)

    def flaky(pool: str, models: Any) -> Any:
        refuse()
        return real(pool, models)

    engine = world.engine()
    engine.sampler = flaky

    rollout = engine.start(spec(2), actor="tests")

    _assert_promoted(world, engine, rollout.id)


@pytest.mark.parametrize("outage_starts_after", [0.0, 15.0, 45.0, 100.0, 125.0])
def test_the_worker_survives_a_database_outage_in_any_phase_and_resumes_from_the_recorded_state(
    world: World, caplog: pytest.LogCaptureFixture, outage_starts_after: float
) -> None:
    start = world.clock()
    # Ten minutes of refused connections (on the fake clock) from the given moment of the rollout.
    window = (start + outage_starts_after, start + outage_starts_after + 600.0)
    flaky = FlakyDatabase(world.db, lambda: window[0] < world.clock() < window[1])
    engine = _engine_on(world, flaky)

    with caplog.at_level(logging.INFO, logger="controlplane.rollout.engine"):
        rollout = engine.start(spec(2), actor="tests")
        _assert_promoted(world, engine, rollout.id)

    assert flaky.refused > 10, "the storm really hit the worker"
    assert world.clock() > window[1]
    waits = [r for r in caplog.records if "waits:" in r.getMessage()]
    assert len(waits) == 1, "an outage is logged once, not once per retry"
    assert any("goes on after" in r.getMessage() for r in caplog.records)


def test_retries_back_off_up_to_the_configured_ceiling(world: World) -> None:
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        world.clock.sleep(seconds)

    world.triton("green").before["load"] = failing_times(8, _unreachable_triton)
    engine = world.engine(retry_backoff=0.5, retry_backoff_max=4.0)
    engine._sleep = sleep

    rollout = engine.start(spec(2, steps=(100,), step_seconds=0.0, bake_seconds=0.0), actor="tests")

    _assert_promoted(world, engine, rollout.id)
    assert naps[:8] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(
            lambda: ModelLoadFailed("Triton failed to load 'mlp' version 2: bad weights"), id="load"
        ),
        pytest.param(lambda: SmokeTestFailed("smoke inference on 'mlp' version 2 failed"), id="smoke"),
    ],
)
def test_a_permanent_staging_error_fails_the_rollout_and_marks_the_version_failed_at_once(
    world: World, error: Callable[[], ControlPlaneError]
) -> None:
    assert not error().retryable
    world.triton("green").before["load"] = failing_times(1, error)
    engine = world.engine()

    done = engine.wait(engine.start(spec(2), actor="tests").id, timeout=10)

    assert done.state is RolloutState.FAILED
    assert world.registry.get_version("mlp", 2).state is VersionState.FAILED
    assert all(weights["green"] == 0 for _at, weights in world.router.history)
    assert world.clock.slept < 5.0, "no retry before the verdict"


def test_an_unexpected_exception_rolls_back_to_the_source_pool_and_the_worker_ends(world: World) -> None:
    world.router.before_set_weights = failing_times(1, lambda: RuntimeError("a bug"))
    engine = world.engine()

    done = engine.wait(engine.start(spec(2), actor="tests").id, timeout=10)

    assert done.state is RolloutState.ROLLED_BACK
    assert "internal error" in done.reason
    assert world.router.weights() == {"blue": 100, "green": 0}
    assert world.registry.get_version("mlp", 2).state is VersionState.REGISTERED


def test_every_error_says_whether_retrying_can_help() -> None:
    transient = {TritonUnavailable, ProxyError, DatabaseUnavailable}
    permanent = {ModelLoadFailed, SmokeTestFailed}
    assert all(cls("x").retryable for cls in transient)
    assert not any(cls("x").retryable for cls in permanent)
    assert ProxyError("refused", retryable=False).retryable is False
