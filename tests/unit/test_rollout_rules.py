"""Rollout state machine rules: which transitions are allowed, and specs that are refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controlplane.domain.analysis import Gates
from controlplane.domain.rollouts import (
    Rollout,
    RolloutSpec,
    RolloutState,
    Strategy,
    decide,
    make_spec,
    split_weights,
)
from controlplane.errors import InvalidInput

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _rollout(
    state: RolloutState, step_index: int | None = None, steps: tuple[int, ...] = (10, 50, 100)
) -> Rollout:
    spec = RolloutSpec("mlp", 2, Strategy.CANARY, steps, 1.0, 1.0, Gates())
    return Rollout(
        id=1,
        spec=spec,
        state=state,
        step_index=step_index,
        source_pool="blue",
        target_pool="green",
        from_version=1,
        requested_action=None,
        reason="",
        actor="t",
        created_at=NOW,
        updated_at=NOW,
        finished_at=None,
    )


def test_the_forward_path_is_allowed_step_by_step() -> None:
    assert decide(_rollout(RolloutState.PENDING), RolloutState.STAGING).accepted
    assert decide(_rollout(RolloutState.STAGING), RolloutState.SHIFTING, step_index=0).accepted
    assert decide(_rollout(RolloutState.SHIFTING, 0), RolloutState.SHIFTING, step_index=1).accepted
    assert decide(_rollout(RolloutState.SHIFTING, 2), RolloutState.BAKING).accepted
    assert decide(_rollout(RolloutState.BAKING), RolloutState.SUCCEEDED).accepted


@pytest.mark.parametrize(
    ("state", "step", "to", "to_step", "why"),
    [
        (RolloutState.PENDING, None, RolloutState.SHIFTING, 0, "cannot go to shifting"),
        (RolloutState.SHIFTING, 1, RolloutState.SHIFTING, 1, "does not move forward"),
        (RolloutState.SHIFTING, 1, RolloutState.SHIFTING, 0, "does not move forward"),
        (RolloutState.STAGING, None, RolloutState.SHIFTING, 3, "does not exist"),
        (RolloutState.SHIFTING, 1, RolloutState.BAKING, None, "100% of the traffic"),
        (RolloutState.SUCCEEDED, None, RolloutState.ROLLING_BACK, None, "cannot go to rolling_back"),
        (RolloutState.ROLLED_BACK, None, RolloutState.STAGING, None, "cannot go to staging"),
        (RolloutState.ROLLING_BACK, None, RolloutState.SHIFTING, 0, "cannot go to shifting"),
    ],
)
def test_transitions_outside_the_rules_are_refused_with_a_reason(
    state: RolloutState, step: int | None, to: RolloutState, to_step: int | None, why: str
) -> None:
    decision = decide(_rollout(state, step), to, step_index=to_step)
    assert not decision.accepted
    assert why in decision.reason


@pytest.mark.parametrize("state", [RolloutState.STAGING, RolloutState.SHIFTING, RolloutState.BAKING])
def test_any_running_rollout_can_be_rolled_back(state: RolloutState) -> None:
    assert decide(
        _rollout(state, 0 if state is RolloutState.SHIFTING else None), RolloutState.ROLLING_BACK
    ).accepted


def test_terminal_states_end_the_rollout() -> None:
    assert not _rollout(RolloutState.SUCCEEDED).active
    assert not _rollout(RolloutState.FAILED).active
    assert _rollout(RolloutState.BAKING).active


def test_target_share_follows_the_state() -> None:
    assert _rollout(RolloutState.STAGING).target_percent() == 0
    assert _rollout(RolloutState.SHIFTING, 1).target_percent() == 50
    assert _rollout(RolloutState.BAKING).target_percent() == 100


def test_steps_default_by_strategy() -> None:
    def spec(strategy: Strategy) -> RolloutSpec:
        return make_spec(
            model="m", version=1, strategy=strategy, steps=None, step_seconds=1, bake_seconds=1, gates=Gates()
        )

    assert spec(Strategy.CANARY).steps == (10, 50, 100)
    assert spec(Strategy.BLUEGREEN).steps == (100,)


@pytest.mark.parametrize(
    ("steps", "strategy", "why"),
    [
        ([10, 50], Strategy.CANARY, "last step must be 100"),
        ([50, 10, 100], Strategy.CANARY, "strictly increase"),
        ([0, 100], Strategy.CANARY, "1..100"),
        ([10, 100, 100], Strategy.CANARY, "strictly increase"),
        ([10, 100], Strategy.INPLACE, "inplace strategy has no steps"),
    ],
)
def test_malformed_steps_are_refused(steps: list[int], strategy: Strategy, why: str) -> None:
    with pytest.raises(InvalidInput, match=why) as refused:
        make_spec(
            model="m",
            version=1,
            strategy=strategy,
            steps=steps,
            step_seconds=1,
            bake_seconds=1,
            gates=Gates(),
        )
    assert refused.value.code == "invalid_rollout"


def test_weights_split_a_percentage_between_source_and_target() -> None:
    assert split_weights(10, source="blue", target="green") == {"blue": 90, "green": 10}
    assert split_weights(100, source="blue", target="green") == {"blue": 0, "green": 100}
