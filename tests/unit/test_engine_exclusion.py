"""One operation per pool: what a rollout in progress refuses, on fakes and SQLite.

The competing requests are made from inside the running rollout (a fake
clock alarm during its first step), so the rollout is certainly holding its
pools when they arrive; no timing is involved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakes import World, serving_world, spec

from controlplane.domain.rollouts import RolloutState, Strategy
from controlplane.errors import Conflict


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = serving_world(tmp_path)
    yield world
    world.close()


def _during_first_step(world: World, request: Callable[[], object]) -> list[BaseException | object]:
    """Make ``request`` 10 s (fake) into the first step; return what it returned or raised."""
    outcome: list[BaseException | object] = []

    def attempt() -> None:
        try:
            outcome.append(request())
        except Conflict as exc:
            outcome.append(exc)

    world.clock.at(world.clock() + 10, attempt)
    return outcome


def test_a_second_rollout_is_refused_with_a_conflict_naming_the_running_one(world: World) -> None:
    engine = world.engine()
    earlier = [r.id for r in engine.list()]
    outcome = _during_first_step(world, lambda: engine.start(spec(1, steps=(100,)), actor="other"))

    first = engine.start(spec(2), actor="tests")
    done = engine.wait(first.id, timeout=10)

    (refused,) = outcome
    assert isinstance(refused, Conflict)
    assert f"rollout {first.id}" in refused.message
    assert done.state is RolloutState.SUCCEEDED
    assert [r.id for r in engine.list()] == [first.id, *earlier], "the refused one left no row"


def test_a_deploy_during_a_rollout_is_refused_and_changes_nothing(world: World) -> None:
    engine = world.engine()
    outcome = _during_first_step(world, lambda: world.deploy("mlp", 1, pool="blue", actor="other"))
    blue_loads = len([c for c in world.triton("blue").calls if c[0] == "load"])

    done = engine.wait(engine.start(spec(2), actor="tests").id, timeout=10)

    (refused,) = outcome
    assert isinstance(refused, Conflict)
    assert f"rollout {done.id}" in refused.message
    assert done.state is RolloutState.SUCCEEDED
    # The old pool's only load afterwards is the standby taking the new release.
    assert [c for c in world.triton("blue").calls if c[0] == "load"][blue_loads:] == [("load", "mlp", 2)]


def test_an_inplace_rollout_on_the_pool_a_blue_green_rollout_moves_traffic_from_is_refused(
    world: World,
) -> None:
    engine = world.engine()
    inplace = spec(1, strategy=Strategy.INPLACE, steps=(100,))
    outcome = _during_first_step(world, lambda: engine.start(inplace, actor="other"))

    done = engine.wait(engine.start(spec(2), actor="tests").id, timeout=10)

    (refused,) = outcome
    assert isinstance(refused, Conflict)
    assert done.state is RolloutState.SUCCEEDED


def test_a_new_rollout_is_accepted_once_the_previous_one_has_ended(world: World) -> None:
    engine = world.engine()
    first = engine.wait(engine.start(spec(2, steps=(100,)), actor="tests").id, timeout=10)

    second = engine.wait(engine.start(spec(1, steps=(100,)), actor="tests").id, timeout=10)

    assert (first.state, second.state) == (RolloutState.SUCCEEDED, RolloutState.SUCCEEDED)
    assert world.router.weights() == {"blue": 100, "green": 0}
