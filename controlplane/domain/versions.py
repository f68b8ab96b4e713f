"""Version states: which event moves a registered version to which state.

States (see :class:`~controlplane.domain.models.VersionState`)::

    registered  uploaded and checked; never served
    serving     a deploy or a rollout made it serve
    retired     another version took its place; it may come back
    failed      Triton refused it, its smoke test failed or a rollout's gate
                breached; it may be deployed again

Every change of a version's state goes through :func:`decide_version`, which
answers with the next state or refuses and says why. The one store function
that changes the state asks it and leaves the row as it was on a refusal.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from controlplane.domain.models import VersionState


class VersionEvent(enum.StrEnum):
    """What happened to a version."""

    SERVED = "served"
    """A deploy succeeded, or a rollout to this version succeeded."""
    FAILED = "failed"
    """A deploy or a rollout's staging failed, or a rollout's gate breached."""
    REPLACED = "replaced"
    """A deploy or a rollout put another version in its place."""


_S = VersionState

NEXT: Mapping[VersionEvent, Mapping[VersionState, VersionState]] = {
    # Any version may serve: a failed one may be deployed again and a retired one may come back.
    VersionEvent.SERVED: {
        _S.REGISTERED: _S.SERVING,
        _S.SERVING: _S.SERVING,
        _S.RETIRED: _S.SERVING,
        _S.FAILED: _S.SERVING,
    },
    VersionEvent.FAILED: {_S.REGISTERED: _S.FAILED, _S.RETIRED: _S.FAILED, _S.FAILED: _S.FAILED},
    VersionEvent.REPLACED: {_S.SERVING: _S.RETIRED, _S.RETIRED: _S.RETIRED},
}

_WHY_NOT: Mapping[tuple[VersionEvent, VersionState], str] = {
    (VersionEvent.FAILED, _S.SERVING): "it serves: a failure elsewhere does not stop what already serves",
    (VersionEvent.REPLACED, _S.REGISTERED): "it never served, so nothing replaced it",
    (VersionEvent.REPLACED, _S.FAILED): "it failed, so it was not serving to be replaced",
}


@dataclass(frozen=True)
class VersionDecision:
    """The answer to an event: the next state, or a refusal and why."""

    accepted: bool
    state: VersionState
    reason: str


def decide_version(current: VersionState, event: VersionEvent) -> VersionDecision:
    """The state a version in ``current`` moves to on ``event``; refused (state unchanged) with a reason."""
    following = NEXT[event].get(current)
    if following is None:
        why = _WHY_NOT.get((event, current), "no rule allows it")
        return VersionDecision(False, current, f"a {current} version cannot be {event}: {why}")
    return VersionDecision(True, following, "ok")
