"""The rules of version states (``domain.versions.decide_version``): every state against every event."""

from __future__ import annotations

import itertools

import pytest

from controlplane.domain.models import VersionState
from controlplane.domain.versions import VersionEvent, decide_version

S = VersionState
E = VersionEvent

EXPECTED: dict[tuple[VersionState, VersionEvent], VersionState | None] = {
    (S.REGISTERED, E.SERVED): S.SERVING,
    (S.SERVING, E.SERVED): S.SERVING,
    (S.RETIRED, E.SERVED): S.SERVING,
    (S.FAILED, E.SERVED): S.SERVING,
    (S.REGISTERED, E.FAILED): S.FAILED,
    (S.SERVING, E.FAILED): None,
    (S.RETIRED, E.FAILED): S.FAILED,
    (S.FAILED, E.FAILED): S.FAILED,
    (S.REGISTERED, E.REPLACED): None,
    (S.SERVING, E.REPLACED): S.RETIRED,
    (S.RETIRED, E.REPLACED): S.RETIRED,
    (S.FAILED, E.REPLACED): None,
}


def test_the_table_covers_every_state_and_event() -> None:
    assert set(EXPECTED) == set(itertools.product(VersionState, VersionEvent))


@pytest.mark.parametrize(("current", "event"), sorted(EXPECTED))
def test_each_state_and_event_lead_where_the_rules_say(current: VersionState, event: VersionEvent) -> None:
    decision = decide_version(current, event)

    expected = EXPECTED[(current, event)]
    assert decision.accepted is (expected is not None)
    assert decision.state is (current if expected is None else expected)


@pytest.mark.parametrize(("current", "event"), [k for k, v in EXPECTED.items() if v is None])
def test_a_refusal_names_the_state_and_the_event(current: VersionState, event: VersionEvent) -> None:
    reason = decide_version(current, event).reason

    assert current.value in reason and event.value in reason


def test_a_failure_elsewhere_does_not_mark_a_serving_version_failed() -> None:
    decision = decide_version(S.SERVING, E.FAILED)

    assert not decision.accepted
    assert "serves" in decision.reason


def test_a_failed_or_retired_version_may_serve_again() -> None:
    assert decide_version(S.FAILED, E.SERVED).state is S.SERVING
    assert decide_version(S.RETIRED, E.SERVED).state is S.SERVING
