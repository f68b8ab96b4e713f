"""The rollout engine against in-memory Triton and router fakes, on a fake clock.

Version 1 of ``mlp`` serves on blue (all traffic) with green as its warm
standby; each test rolls version 2 out to green and checks where weights,
releases, loaded models and version states end up.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from fakes import World, serving_world, spec

from controlplane.domain.models import VersionState
from controlplane.domain.rollouts import RequestedAction, RolloutState, Strategy
from controlplane.rollout.engine import RolloutEngine


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = serving_world(tmp_path)
    yield world
    world.close()


def _active_id(engine: RolloutEngine) -> int:
    (rollout,) = engine.list(active_only=True)
    return rollout.id


def _version_state(world: World, number: int) -> VersionState:
    return world.registry.get_version("mlp", number).state


def _assert_serving(world: World, *, live: str, version: int) -> None:
    """Both pools hold ``version``, the live one has all traffic, and registry and router agree."""
    standby = "green" if live == "blue" else "blue"
    assert world.router.weights() == {live: 100, standby: 0}
    assert world.desired_weights() == world.router.weights()
    assert world.releases() == {"blue": {"mlp": version}, "green": {"mlp": version}}
    for pool in ("blue", "green"):
        assert world.triton(pool).ready_models() == {"mlp": version}
        assert world.pools[pool].repository.live_models() == ["mlp"]


@pytest.mark.parametrize(
    ("strategy", "steps"), [(Strategy.BLUEGREEN, (100,)), (Strategy.CANARY, (10, 50, 100))]
)
def test_a_promote_moves_weights_step_by_step_and_leaves_the_old_pool_as_warm_standby_of_the_new_release(
    world: World, strategy: Strategy, steps: tuple[int, ...]
) -> None:
    green = world.triton("green")

    def only_to_a_ready_pool(weights: Mapping[str, int]) -> None:
        assert weights.get("green", 0) == 0 or green.ready_models() == {"mlp": 2}

    world.router.before_set_weights = only_to_a_ready_pool
    engine = world.engine()
    started = world.clock()

    rollout = engine.start(spec(2, strategy=strategy, steps=steps), actor="tests")
    done = engine.wait(rollout.id, timeout=10)

    assert done.state is RolloutState.SUCCEEDED
    # Each step holds its weights for step_seconds (30 s on the fake clock) before the next one.
    assert [(at - started, weight) for at, weight in world.router.timeline("green")] == [
        (30.0 * i, percent) for i, percent in enumerate(steps)
    ]
    assert len([e for e in done.events if e.measurements.get("passed") is True]) == len(steps)
    assert "blue" in world.router.drained
    _assert_serving(world, live="green", version=2)
    assert _version_state(world, 2) is VersionState.SERVING
    assert _version_state(world, 1) is VersionState.RETIRED


def test_a_breached_gate_rolls_back_and_the_target_returns_to_standby_of_the_old_release(
    world: World,
) -> None:
    world.sampler.error_rate["green"] = 0.5
    engine = world.engine()

    rollout = engine.start(spec(2), actor="tests")
    done = engine.wait(rollout.id, timeout=10)

    assert done.state is RolloutState.ROLLED_BACK
    assert "gate breached" in done.reason
    assert world.router.shares("green") == [10, 0]
    failing = [e.measurements for e in done.events if e.measurements.get("passed") is False]
    assert failing and failing[0]["errors"] == 50
    _assert_serving(world, live="blue", version=1)
    assert _version_state(world, 2) is VersionState.FAILED


def test_a_version_triton_cannot_load_fails_the_rollout_and_no_weight_ever_moves(world: World) -> None:
    world.triton("green").load_failures[("mlp", 2)] = "CUDA out of memory"
    engine = world.engine()

    rollout = engine.start(spec(2, strategy=Strategy.BLUEGREEN, steps=(100,)), actor="tests")
    done = engine.wait(rollout.id, timeout=10)

    assert done.state is RolloutState.FAILED
    assert "CUDA out of memory" in done.reason
    assert all(weights["green"] == 0 for _at, weights in world.router.history)
    _assert_serving(world, live="blue", version=1)
    version = world.registry.get_version("mlp", 2)
    assert version.state is VersionState.FAILED
    assert version.last_error is not None and "CUDA out of memory" in version.last_error


def test_a_smoke_test_failure_on_the_target_fails_the_rollout_before_any_traffic(world: World) -> None:
    world.triton("green").smoke_failures.add(("mlp", 2))
    engine = world.engine()

    done = engine.wait(engine.start(spec(2), actor="tests").id, timeout=10)

    assert done.state is RolloutState.FAILED
    assert all(weights["green"] == 0 for _at, weights in world.router.history)
    _assert_serving(world, live="blue", version=1)


def test_a_pool_that_never_passes_the_proxy_health_check_fails_staging(world: World) -> None:
    world.router.down.add("green")
    engine = world.engine()

    done = engine.wait(engine.start(spec(2), actor="tests").id, timeout=10)

    assert done.state is RolloutState.FAILED
    assert world.router.history == []
    assert world.clock.slept >= 5.0  # pool_up_timeout, on the fake clock


def test_an_abort_during_a_step_moves_all_traffic_back_and_does_not_mark_the_version_failed(
    world: World,
) -> None:
    engine = world.engine()
    world.clock.at(
        world.clock() + 40,
        lambda: engine.request(_active_id(engine), RequestedAction.ABORT, actor="operator"),
    )

    done = engine.wait(engine.start(spec(2), actor="tests").id, timeout=10)

    assert done.state is RolloutState.ROLLED_BACK
    assert "aborted by an operator" in done.reason
    assert world.router.shares("green") == [10, 50, 0]
    _assert_serving(world, live="blue", version=1)
    assert _version_state(world, 2) is VersionState.REGISTERED


def test_a_promote_during_the_first_step_skips_the_remaining_steps(world: World) -> None:
    engine = world.engine()
    world.clock.at(
        world.clock() + 10,
        lambda: engine.request(_active_id(engine), RequestedAction.PROMOTE, actor="operator"),
    )

    done = engine.wait(engine.start(spec(2), actor="tests").id, timeout=10)

    assert done.state is RolloutState.SUCCEEDED
    assert world.router.shares("green") == [10, 100]
    _assert_serving(world, live="green", version=2)


def test_an_abort_during_the_bake_is_a_weight_flip_back_to_the_still_loaded_old_pool(world: World) -> None:
    engine = world.engine()
    blue = world.triton("blue")
    loads_before = [c for c in blue.calls if c[0] == "load"]
    # Three steps of 30 s, then the bake (60 s): abort half-way through it.
    world.clock.at(
        world.clock() + 120,
        lambda: engine.request(_active_id(engine), RequestedAction.ABORT, actor="operator"),
    )

    done = engine.wait(engine.start(spec(2), actor="tests").id, timeout=10)

    assert done.state is RolloutState.ROLLED_BACK
    assert world.router.shares("green") == [10, 50, 100, 0]
    assert [c for c in blue.calls if c[0] == "load"] == loads_before
    _assert_serving(world, live="blue", version=1)


def test_rollback_of_a_model_after_a_promote_rolls_out_the_previous_version(world: World) -> None:
    engine = world.engine()
    first = engine.wait(engine.start(spec(2, steps=(100,)), actor="tests").id, timeout=10)
    assert first.state is RolloutState.SUCCEEDED

    back = engine.rollback_model("mlp", actor="operator")
    done = engine.wait(back.id, timeout=10)

    assert (done.spec.version, done.source_pool, done.target_pool) == (1, "green", "blue")
    assert done.state is RolloutState.SUCCEEDED
    _assert_serving(world, live="blue", version=1)
