"""Rollout admission against a real SQLite registry: the interface and metric rules at rollout start.

Version 1 of ``mlp`` (INPUT0 FP32 [4] -> OUTPUT0 FP32 [2], api_version 1,
accuracy 0.90) serves on blue; each test pushes a candidate and starts a
rollout through an engine whose admission is the product's RolloutAdmission.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import World, build_world, spec
from interface_versions import OUTPUT0, admitting_engine, push

from controlplane.domain.analysis import Gates
from controlplane.domain.models import VersionState
from controlplane.domain.rollouts import RolloutSpec, RolloutState, Strategy
from controlplane.errors import Conflict, InvalidInput
from controlplane.registry import store
from controlplane.services.admission import compare_with_production
from controlplane.services.deploys import Deployer


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path)
    number = push(world, api_version="1", metrics={"accuracy": 0.90})
    world.deploy("mlp", number)
    yield world
    world.close()


def bluegreen(version: int, **gates: Any) -> RolloutSpec:
    """All traffic at once, judged by ``gates`` (no traffic gate: the fake traffic is no evidence here)."""
    return spec(version, strategy=Strategy.BLUEGREEN, steps=(100,), gates=Gates(**gates))


def rollout_count(world: World) -> int:
    return len(admitting_engine(world).list(limit=1000))


def admission_events(world: World) -> list[tuple[str, str, dict[str, object]]]:
    with world.db.transaction() as session:
        events = store.list_events(session, limit=1000)
    return [(e.target, e.outcome, dict(e.details)) for e in events if e.action == "rollout.admission"]


def test_a_renamed_input_is_refused_with_409_naming_it_and_no_rollout_row_is_created(world: World) -> None:
    candidate = push(world, inputs=[("FEATURES", "FP32", (4,))], api_version="1.1")
    engine = admitting_engine(world)
    before = rollout_count(world)

    with pytest.raises(Conflict) as refused:
        engine.start(bluegreen(candidate), actor="alice")

    error = refused.value
    assert error.code == "breaking_change"
    assert "'INPUT0' was renamed to 'FEATURES'" in error.message
    assert error.details["serving_version"] == 1 and error.details["candidate_version"] == candidate
    assert error.details["serving_api_version"] == "1" and error.details["candidate_api_version"] == "1.1"
    assert [d["code"] for d in error.details["differences"]] == ["input_renamed"]
    assert rollout_count(world) == before
    assert world.releases() == {"blue": {"mlp": 1}, "green": {}}
    assert world.registry.get_version("mlp", candidate).state is VersionState.REGISTERED
    ((target, outcome, details),) = admission_events(world)
    assert (target, outcome, details["code"]) == (f"mlp/{candidate}", "refused", "breaking_change")


def test_the_refusal_lists_every_breaking_difference(world: World) -> None:
    candidate = push(
        world,
        inputs=[("INPUT0", "FP16", (4,)), ("MASK", "BOOL", (4,))],
        outputs=[("SCORES", "FP32", (3,))],
        max_batch_size=4,
    )

    with pytest.raises(Conflict) as refused:
        admitting_engine(world).start(bluegreen(candidate), actor="alice")

    codes = [d["code"] for d in refused.value.details["differences"]]
    assert codes == [
        "max_batch_size_reduced",
        "input_added",
        "dtype_changed",
        "output_removed",
        "output_added",
    ]
    message = refused.value.message
    for named in ("max_batch_size 8 -> 4", "'MASK'", "FP32 -> FP16", "'OUTPUT0' was removed"):
        assert named in message
    # A harmless difference is in the details, not among the reasons for refusing.
    assert "'SCORES'" not in message
    assert "no api_version" in message and "allow_breaking" in message


def test_a_compatible_version_is_admitted_and_rolls_out(world: World) -> None:
    candidate = push(world, outputs=[OUTPUT0, ("SCORES", "FP32", (1,))], max_batch_size=16)
    engine = admitting_engine(world)

    done = engine.wait(engine.start(bluegreen(candidate), actor="alice").id, timeout=10)

    assert done.state is RolloutState.SUCCEEDED
    assert admission_events(world) == []


@pytest.mark.parametrize(
    ("api_version", "allow_breaking", "missing"),
    [("2.0", False, "allow_breaking"), ("1.5", True, "not a new major"), (None, True, "no api_version")],
)
def test_a_breaking_version_needs_both_a_new_major_and_allow_breaking(
    world: World, api_version: str | None, allow_breaking: bool, missing: str
) -> None:
    candidate = push(world, inputs=[("FEATURES", "FP32", (4,))], api_version=api_version)

    with pytest.raises(Conflict, match=missing):
        admitting_engine(world).start(
            bluegreen(candidate, allow_breaking=allow_breaking),
            actor="alice",
        )


def test_a_breaking_version_with_a_new_major_and_allow_breaking_rolls_out_and_is_audited(
    world: World,
) -> None:
    candidate = push(world, inputs=[("FEATURES", "FP32", (4,))], api_version="v2.0.0")
    engine = admitting_engine(world)

    rollout = engine.start(bluegreen(candidate, allow_breaking=True), actor="alice")

    assert engine.wait(rollout.id, timeout=10).state is RolloutState.SUCCEEDED
    ((_target, outcome, details),) = admission_events(world)
    assert outcome == "breaking_allowed"
    assert [d["code"] for d in details["differences"]] == ["input_renamed"]


def test_a_rollback_to_an_older_incompatible_version_is_never_refused_for_its_interface(world: World) -> None:
    candidate = push(world, inputs=[("FEATURES", "FP32", (4,))], api_version="2")
    engine = admitting_engine(world)
    promoted = engine.start(bluegreen(candidate, allow_breaking=True), actor="alice")
    assert engine.wait(promoted.id, timeout=10).state is RolloutState.SUCCEEDED

    back = engine.rollback_model("mlp", actor="alice")

    assert back.spec.version == 1 and not back.spec.gates.allow_breaking
    assert engine.wait(back.id, timeout=10).state is RolloutState.SUCCEEDED
    assert world.releases()["blue"] == {"mlp": 1}
    assert world.registry.get_version("mlp", 1).state is VersionState.SERVING


def test_a_retired_version_may_come_back_by_a_plain_rollout_too(world: World) -> None:
    candidate = push(world, inputs=[("FEATURES", "FP32", (4,))], api_version="2")
    engine = admitting_engine(world)
    first = engine.start(bluegreen(candidate, allow_breaking=True), actor="alice")
    engine.wait(first.id, timeout=10)
    third = push(world, inputs=[("FEATURES", "FP32", (-1,))], api_version="2.1")
    engine.wait(engine.start(bluegreen(third), actor="alice").id, timeout=10)
    assert world.registry.get_version("mlp", 1).state is VersionState.RETIRED

    back = engine.start(bluegreen(1), actor="alice")

    assert engine.wait(back.id, timeout=10).state is RolloutState.SUCCEEDED


def test_a_candidate_worse_than_production_by_more_than_the_margin_is_refused(world: World) -> None:
    candidate = push(world, metrics={"accuracy": 0.85})
    before = rollout_count(world)

    with pytest.raises(Conflict) as refused:
        admitting_engine(world).start(
            bluegreen(candidate, metric="accuracy", metric_max_drop=0.02),
            actor="alice",
        )

    assert refused.value.code == "metric_worse"
    assert "0.85" in refused.value.message and "0.9" in refused.value.message
    assert "0.02" in refused.value.message
    assert rollout_count(world) == before
    ((_target, outcome, details),) = admission_events(world)
    assert (outcome, details["code"]) == ("refused", "metric_worse")


def test_a_candidate_worse_within_the_margin_is_admitted(world: World) -> None:
    candidate = push(world, metrics={"accuracy": 0.89})
    engine = admitting_engine(world)

    rollout = engine.start(
        bluegreen(candidate, metric="accuracy", metric_max_drop=0.02),
        actor="alice",
    )

    assert engine.wait(rollout.id, timeout=10).state is RolloutState.SUCCEEDED


def test_a_metric_production_lacks_refuses_the_gate_as_unjudgeable(world: World) -> None:
    candidate = push(world, metrics={"f1": 0.7})

    with pytest.raises(InvalidInput) as refused:
        admitting_engine(world).start(bluegreen(candidate, metric="f1"), actor="alice")

    assert refused.value.code == "metric_missing"
    assert "production (version 1)" in refused.value.message


def test_a_rollback_still_answers_to_a_metric_gate(world: World) -> None:
    candidate = push(world, metrics={"accuracy": 0.95})
    engine = admitting_engine(world)
    engine.wait(engine.start(bluegreen(candidate), actor="alice").id, timeout=10)

    with pytest.raises(Conflict, match="metric 'accuracy'"):
        engine.start(bluegreen(1, metric="accuracy"), actor="alice")


def test_a_first_version_with_nothing_serving_is_admitted(tmp_path: Path) -> None:
    world = build_world(tmp_path)
    try:
        number = push(world, inputs=[("ANYTHING", "INT64", (1,))])
        engine = admitting_engine(world)

        rollout = engine.start(
            spec(number, strategy=Strategy.INPLACE, steps=(100,), gates=Gates(metric="accuracy")),
            actor="alice",
        )

        assert engine.wait(rollout.id, timeout=10).state is RolloutState.SUCCEEDED
    finally:
        world.close()


def test_the_serving_version_itself_is_admitted(world: World) -> None:
    engine = admitting_engine(world)

    rollout = engine.start(bluegreen(1, metric="not-set-anywhere"), actor="alice")

    assert engine.wait(rollout.id, timeout=10).state is RolloutState.SUCCEEDED


def test_a_deploy_passes_allow_breaking_through(world: World) -> None:
    candidate = push(world, inputs=[("FEATURES", "FP32", (4,))], api_version="2")
    deployer = Deployer(db=world.db, engine=admitting_engine(world), answer_within=60.0)

    with pytest.raises(Conflict, match="breaks clients"):
        deployer.deploy("mlp", candidate, actor="alice")
    deployment = deployer.deploy("mlp", candidate, actor="alice", allow_breaking=True)

    assert (deployment.pool, deployment.version) == ("blue", candidate)


def test_compatibility_with_production_names_the_serving_version_and_every_difference(world: World) -> None:
    candidate = push(world, inputs=[("INPUT0", "FP32", (-1,))], outputs=[("OUTPUT0", "FP64", (2,))])

    comparison = compare_with_production(world.db, "mlp", candidate)

    assert comparison is not None
    assert comparison.as_dict()["serving_version"] == 1
    assert comparison.as_dict()["compatible"] is False
    assert [d["code"] for d in comparison.as_dict()["differences"]] == ["dims_widened", "dtype_changed"]
    assert compare_with_production(world.db, "mlp", 1).as_dict() == {
        "serving_version": 1,
        "compatible": True,
        "differences": [],
    }


def test_compatibility_is_none_while_nothing_serves(tmp_path: Path) -> None:
    world = build_world(tmp_path)
    try:
        number = push(world)
        assert compare_with_production(world.db, "mlp", number) is None
    finally:
        world.close()
