"""A control plane that dies in the middle of a rollout, and the next one that resumes it.

The crash is a ``SystemExit`` raised from a fake at a chosen point: it ends
the worker thread there with no cleanup (the worker catches only
``Exception``, and threads end quietly on ``SystemExit``), as kill -9 ends
the process, while
the fakes (Triton and the proxy, which outlive the control plane) keep their
state. A second engine on the same registry then resumes from whatever state
was recorded, and the run must converge: registry, router and both Tritons
agree, and a reconciler pass finds nothing left to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from fakes import World, serving_world, spec

from controlplane.domain.rollouts import RolloutState
from controlplane.rollout.engine import RolloutEngine

# The killed worker threads are the point of these tests, not a warning.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")

STEPS = (10, 50, 100)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = serving_world(tmp_path)
    yield world
    world.close()


class _DiesBeforeItsWorkerRuns(RolloutEngine):
    """A process killed right after it committed the new rollout, before its worker made a move."""

    def _spawn(self, rollout_id: int) -> bool:
        return False


def _crash_once(when: Callable[..., bool]) -> Callable[..., None]:
    fired = []

    def hook(*args: object) -> None:
        if not fired and when(*args):
            fired.append(True)
            raise SystemExit("the control plane dies here")

    return hook


def _pending(world: World) -> type[RolloutEngine]:
    return _DiesBeforeItsWorkerRuns


def _staging(world: World) -> type[RolloutEngine]:
    world.triton("green").before["load"] = _crash_once(lambda model, version: version == 2)
    return RolloutEngine


def _shifting(step: int) -> Callable[[World], type[RolloutEngine]]:
    def arrange(world: World) -> type[RolloutEngine]:
        # Recorded (the database row comes first) but not yet applied to the proxy.
        world.router.before_set_weights = _crash_once(lambda weights: weights.get("green") == STEPS[step])
        return RolloutEngine

    return arrange


def _baking(world: World) -> type[RolloutEngine]:
    started = world.clock()

    def die() -> None:
        raise SystemExit("the control plane dies here")

    # Three steps of 30 s, then 60 s of bake: die half-way through the bake.
    world.clock.at(started + 120, die)
    return RolloutEngine


def _rolling_back(world: World) -> type[RolloutEngine]:
    world.sampler.error_rate["green"] = 0.5

    def back_to_blue(weights: Mapping[str, int]) -> bool:
        return weights.get("green") == 0

    world.router.before_set_weights = _crash_once(back_to_blue)
    return RolloutEngine


def _assert_converged(world: World, engine: RolloutEngine, *, live: str, version: int) -> None:
    standby = "green" if live == "blue" else "blue"
    assert world.router.weights() == world.desired_weights() == {live: 100, standby: 0}
    assert world.releases() == {"blue": {"mlp": version}, "green": {"mlp": version}}
    for pool in ("blue", "green"):
        assert world.triton(pool).ready_models() == {"mlp": version}
        assert world.pools[pool].repository.live_models() == ["mlp"]
    assert engine.list(active_only=True) == []
    assert world.reconciler(engine).run_once() == []


@pytest.mark.parametrize(
    ("arrange", "crashed_in", "step", "outcome"),
    [
        (_pending, RolloutState.PENDING, None, RolloutState.SUCCEEDED),
        (_staging, RolloutState.STAGING, None, RolloutState.SUCCEEDED),
        (_shifting(0), RolloutState.SHIFTING, 0, RolloutState.SUCCEEDED),
        (_shifting(1), RolloutState.SHIFTING, 1, RolloutState.SUCCEEDED),
        (_shifting(2), RolloutState.SHIFTING, 2, RolloutState.SUCCEEDED),
        (_baking, RolloutState.BAKING, 2, RolloutState.SUCCEEDED),
        (_rolling_back, RolloutState.ROLLING_BACK, 0, RolloutState.ROLLED_BACK),
    ],
    ids=["pending", "staging", "shifting-1", "shifting-2", "shifting-3", "baking", "rolling_back"],
)
def test_a_rollout_interrupted_by_a_crash_is_resumed_by_the_next_process_and_converges(
    world: World,
    arrange: Callable[[World], type[RolloutEngine]],
    crashed_in: RolloutState,
    step: int | None,
    outcome: RolloutState,
) -> None:
    first = world.engine(cls=arrange(world))
    rollout = first.start(spec(2, steps=STEPS), actor="tests")
    crashed = first.wait(rollout.id, timeout=10)
    assert (crashed.state, crashed.step_index) == (crashed_in, step)
    first.stop()  # the rest of the dead process: nothing of it runs any more

    second = world.engine()
    assert second.resume() == [rollout.id]
    done = second.wait(rollout.id, timeout=10)

    assert done.state is outcome
    if outcome is RolloutState.SUCCEEDED:
        _assert_converged(world, second, live="green", version=2)
    else:
        _assert_converged(world, second, live="blue", version=1)


def test_a_crash_between_recording_a_step_and_applying_it_applies_that_step_on_resume(world: World) -> None:
    world.router.before_set_weights = _crash_once(lambda weights: weights.get("green") == 50)
    first = world.engine()
    rollout = first.start(spec(2, steps=STEPS), actor="tests")
    first.wait(rollout.id, timeout=10)
    first.stop()
    assert world.router.weights() == {"blue": 90, "green": 10}
    history_before = len(world.router.history)

    second = world.engine()
    second.resume()
    second.wait(rollout.id, timeout=10)

    resumed = [weights["green"] for _at, weights in world.router.history[history_before:]]
    assert resumed[0] == 50
    assert 10 not in resumed


def test_resume_starts_no_second_worker_for_a_rollout_that_has_one(world: World) -> None:
    engine = world.engine()
    resumed: list[list[int]] = []
    world.clock.at(world.clock() + 10, lambda: resumed.append(engine.resume()))

    done = engine.wait(engine.start(spec(2, steps=STEPS), actor="tests").id, timeout=10)

    assert resumed == [[]]
    assert done.state is RolloutState.SUCCEEDED
