"""Rollouts: the persisted state machine that moves traffic to a new model version.

States and what holds in each (``weights`` are the proxy weights of the two pools)::

    pending_approval  requested for a model that requires approval; it holds no pool
                      and has no worker until another principal approves it
    pending       accepted; nothing changed yet
    staging       the target pool is being built, loaded and smoke-tested; it has weight 0
    shifting      weights move step by step (step_index); the analysis runs between steps
    baking        the target has all traffic; the source pool is drained but kept warm
    succeeded     done; the source pool's models are unloaded
    rolling_back  weights go back to the source pool, then the target is cleaned up
    rolled_back   the source pool serves again as before
    failed        the target could not be staged; traffic never moved
    rejected      an approver refused the request (or its requester withdrew it)
    expired       nobody approved the request before its deadline

Every change of state goes through :func:`decide`, which checks a proposed
transition against the rules and says why it refuses. The caller (one
function in the rollout service) locks the row, asks, and records the answer
and an event before acting: a transition is a database row before it is an
action, so a crash leaves a state the reconciler can finish.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controlplane.domain.analysis import Gates
from controlplane.errors import InvalidInput


class Strategy(enum.StrEnum):
    BLUEGREEN = "bluegreen"
    CANARY = "canary"
    INPLACE = "inplace"


class RolloutState(enum.StrEnum):
    PENDING_APPROVAL = "pending_approval"
    PENDING = "pending"
    STAGING = "staging"
    SHIFTING = "shifting"
    BAKING = "baking"
    SUCCEEDED = "succeeded"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def running(self) -> bool:
        """Whether a rollout in this state holds its pools and has (or needs) a worker."""
        return not self.terminal and self is not RolloutState.PENDING_APPROVAL


class RequestedAction(enum.StrEnum):
    """What an operator asked of a running rollout; the worker acts on it between steps."""

    ABORT = "abort"
    PROMOTE = "promote"


TERMINAL = frozenset(
    {
        RolloutState.SUCCEEDED,
        RolloutState.ROLLED_BACK,
        RolloutState.FAILED,
        RolloutState.REJECTED,
        RolloutState.EXPIRED,
    }
)

ALLOWED: Mapping[RolloutState, frozenset[RolloutState]] = {
    RolloutState.PENDING_APPROVAL: frozenset(
        {RolloutState.PENDING, RolloutState.REJECTED, RolloutState.EXPIRED}
    ),
    RolloutState.PENDING: frozenset({RolloutState.STAGING, RolloutState.ROLLED_BACK, RolloutState.FAILED}),
    RolloutState.STAGING: frozenset({RolloutState.SHIFTING, RolloutState.ROLLING_BACK, RolloutState.FAILED}),
    RolloutState.SHIFTING: frozenset({RolloutState.SHIFTING, RolloutState.BAKING, RolloutState.ROLLING_BACK}),
    RolloutState.BAKING: frozenset({RolloutState.SUCCEEDED, RolloutState.ROLLING_BACK}),
    RolloutState.ROLLING_BACK: frozenset({RolloutState.ROLLED_BACK}),
    RolloutState.SUCCEEDED: frozenset(),
    RolloutState.ROLLED_BACK: frozenset(),
    RolloutState.FAILED: frozenset(),
    RolloutState.REJECTED: frozenset(),
    RolloutState.EXPIRED: frozenset(),
}

DEFAULT_STEPS: Mapping[Strategy, tuple[int, ...]] = {
    Strategy.BLUEGREEN: (100,),
    Strategy.CANARY: (10, 50, 100),
    Strategy.INPLACE: (100,),
}


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_rollout")


@dataclass(frozen=True)
class RolloutSpec:
    """What was asked: move ``model`` to ``version`` with ``strategy``."""

    model: str
    version: int
    strategy: Strategy
    steps: tuple[int, ...]
    step_seconds: float
    bake_seconds: float
    gates: Gates

    def validate(self) -> RolloutSpec:
        """Return self, or raise InvalidInput naming what is wrong."""
        if not self.steps:
            raise _refuse("steps must not be empty")
        if any(not 0 < s <= 100 for s in self.steps):
            raise _refuse(f"every step must be a percentage in 1..100, got {list(self.steps)}")
        if list(self.steps) != sorted(set(self.steps)):
            raise _refuse(f"steps must strictly increase, got {list(self.steps)}")
        if self.steps[-1] != 100:
            raise _refuse(f"the last step must be 100, got {self.steps[-1]}")
        if self.strategy is Strategy.INPLACE and self.steps != (100,):
            raise _refuse("the inplace strategy has no steps: it swaps the version on one pool")
        if not 0 <= self.step_seconds <= 3600:
            raise _refuse("step_seconds must be within 0..3600")
        if not 0 <= self.bake_seconds <= 86400:
            raise _refuse("bake_seconds must be within 0..86400")
        self.gates.validate()
        return self


def make_spec(
    *,
    model: str,
    version: int,
    strategy: Strategy,
    steps: Sequence[int] | None,
    step_seconds: float,
    bake_seconds: float,
    gates: Gates,
) -> RolloutSpec:
    """A validated spec; ``steps`` default by strategy."""
    chosen = tuple(steps) if steps else DEFAULT_STEPS[strategy]
    return RolloutSpec(
        model=model,
        version=version,
        strategy=strategy,
        steps=chosen,
        step_seconds=step_seconds,
        bake_seconds=bake_seconds,
        gates=gates,
    ).validate()


def one_step_spec(
    model: str, version: int, strategy: Strategy, *, allow_breaking: bool = False
) -> RolloutSpec:
    """All traffic at once, no analysis, no bake: a deploy (inplace) or a rollback (blue-green).

    The golden set is not run again: a rollback returns to a version that
    served before, and must be quick; warm-up still runs.
    """
    return RolloutSpec(
        model=model,
        version=version,
        strategy=strategy,
        steps=(100,),
        step_seconds=0.0,
        bake_seconds=0.0,
        gates=Gates(golden=False, allow_breaking=allow_breaking),
    ).validate()


@dataclass(frozen=True)
class RolloutEvent:
    """One recorded transition (or measurement) of a rollout."""

    at: datetime
    from_state: str | None
    to_state: str
    step_index: int | None
    weights: Mapping[str, int]
    reason: str
    measurements: Mapping[str, Any]


@dataclass(frozen=True)
class Rollout:
    """A rollout as persisted."""

    id: int
    spec: RolloutSpec
    state: RolloutState
    step_index: int | None
    source_pool: str
    target_pool: str
    from_version: int | None
    requested_action: RequestedAction | None
    reason: str
    actor: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    events: tuple[RolloutEvent, ...] = field(default=())
    approved_by: str | None = None
    decided_at: datetime | None = None
    """When an approver approved or rejected it, or it expired (None: not decided, or never asked)."""
    approval_expires_at: datetime | None = None
    """Until when it may be approved (None: its model did not require approval)."""

    @property
    def active(self) -> bool:
        """Not ended: running, or waiting for approval."""
        return not self.state.terminal

    @property
    def running(self) -> bool:
        """Holds its pools and has (or needs) a worker: active and not waiting for approval."""
        return self.state.running

    def target_percent(self) -> int:
        """The share of traffic the target pool should have in the current state."""
        if self.state in (RolloutState.BAKING, RolloutState.SUCCEEDED):
            return 100
        if self.state is RolloutState.SHIFTING and self.step_index is not None:
            return self.spec.steps[self.step_index]
        return 0


@dataclass(frozen=True)
class Decision:
    """The answer to a proposed transition."""

    accepted: bool
    reason: str


def decide(current: Rollout, to: RolloutState, *, step_index: int | None = None) -> Decision:
    """Whether ``current`` may move to ``to`` (at ``step_index`` for shifting), and why not."""
    if to not in ALLOWED[current.state]:
        return Decision(False, f"a rollout in state {current.state} cannot go to {to}")
    if to is RolloutState.SHIFTING:
        if step_index is None or not 0 <= step_index < len(current.spec.steps):
            return Decision(False, f"step {step_index} does not exist (steps {list(current.spec.steps)})")
        previous = current.step_index if current.state is RolloutState.SHIFTING else -1
        if previous is not None and step_index <= previous:
            return Decision(False, f"step {step_index} does not move forward from step {previous}")
    if to is RolloutState.BAKING and current.target_percent() != 100:
        return Decision(False, "baking starts only once the target pool has 100% of the traffic")
    return Decision(True, "ok")


def split_weights(target_percent: int, *, source: str, target: str) -> dict[str, int]:
    """Proxy weights for a share of traffic (HAProxy weights are relative; percentages fit 0..256)."""
    if not 0 <= target_percent <= 100:
        raise ValueError(f"target percent out of range: {target_percent}")
    return {source: 100 - target_percent, target: target_percent}
