"""A version's golden set on the idle pool: every replica must reproduce it before any weight moves.

Version 1 of ``mlp`` (INPUT0[4] -> OUTPUT0[2], max_batch_size 8) serves on
blue with green as its standby; version 2 carries a golden set and is rolled
out to green, whose fake Triton answers with ``fake.answer``.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import World, serving_world, spec

from controlplane.domain.analysis import Gates
from controlplane.domain.golden import GoldenSet
from controlplane.domain.golden_records import GoldenFormat
from controlplane.domain.models import VersionState
from controlplane.domain.rollouts import Rollout, RolloutSpec, RolloutState, Strategy
from controlplane.errors import CandidateRejected
from controlplane.pools import Pool
from controlplane.registry import golden_store
from controlplane.rollout import candidate
from controlplane.rollout.candidate import CandidateChecks
from controlplane.rollout.engine import EngineSettings, RolloutEngine
from controlplane.rollout.golden_run import ask, run_golden
from controlplane.services.golden import GoldenSets
from controlplane.triton.replicas import ReplicatedTriton

ROWS = 20
INPUTS = np.arange(ROWS * 4, dtype=np.float32).reshape(ROWS, 4) / 10


def version_2_answer(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """What version 2 computes: the first two input columns, doubled."""
    return (inputs["INPUT0"][..., :2] * 2).astype(np.float32)


def answering(fn: Any) -> Any:
    def answer(_model: str, _version: int, inputs: dict[str, np.ndarray], outputs: list[str]) -> Any:
        return {"OUTPUT0": fn(inputs)}

    return answer


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = serving_world(tmp_path)
    yield world
    world.close()


def attach(world: World, expected: np.ndarray, *, atol: float | None = None) -> None:
    """Attach a golden set of ``INPUTS`` -> ``expected`` to version 2."""
    arrays = {"inputs/INPUT0": INPUTS, "outputs/OUTPUT0": expected}
    if atol is not None:
        arrays["atol/OUTPUT0"] = np.float64(atol)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    upload = world.root / "golden-upload.npz"
    upload.write_bytes(buffer.getvalue())
    GoldenSets(db=world.db, blobs=world.blobs, uploads_dir=world.root / "uploads").attach(
        "mlp", 2, upload=upload, fmt=GoldenFormat.NPZ, actor="tests"
    )


def engine_with_checks(world: World) -> RolloutEngine:
    engine = RolloutEngine(
        db=world.db,
        pools=world.pools,
        blobs=world.blobs,
        router=world.router,
        sampler=world.sampler,
        settings=EngineSettings(load_timeout=5.0, drain_timeout=1.0, pool_up_timeout=5.0, poll_interval=1.0),
        clock=world.clock,
        sleep=world.clock.sleep,
        policy_check=world.signing.check_deployable,
        candidate_checks=CandidateChecks(world.db, world.blobs),
    )
    world.engines.append(engine)
    return engine


def roll_out(world: World, rollout_spec: RolloutSpec) -> Rollout:
    """Start ``rollout_spec`` on an engine that runs the candidate checks; the rollout once it has ended."""
    engine = engine_with_checks(world)
    return engine.wait(engine.start(rollout_spec, actor="tests").id, timeout=10)


def infers(world: World, pool: str) -> list[tuple[str, str, int | None]]:
    return [c for c in world.triton(pool).calls if c[0] == "infer"]


def test_a_golden_set_the_candidate_reproduces_lets_the_rollout_go_on_with_its_report(world: World) -> None:
    attach(world, version_2_answer({"INPUT0": INPUTS}))
    world.triton("green").answer = answering(version_2_answer)
    gates = Gates(max_error_rate=0.01, min_requests=10, warmup_requests=0)

    done = roll_out(world, spec(2, strategy=Strategy.BLUEGREEN, steps=(100,), gates=gates))

    assert done.state is RolloutState.SUCCEEDED, done.reason
    checked = next(e for e in done.events if e.reason == "candidate checks passed on green")
    assert checked.weights == {"blue": 100, "green": 0}
    report = checked.measurements["golden"]
    assert report["rows"] == ROWS and report["replicas"] == 1 and report["source"] == "attached"
    assert report["requests_per_replica"] == math.ceil(ROWS / 8)
    assert report["outputs"]["OUTPUT0"]["max_abs_error"] == 0.0
    assert report["seconds"] >= 0
    # Batches of max_batch_size, each naming version 2, straight to the idle pool; none to the live one.
    assert infers(world, "green") == [("infer", "mlp", 2)] * math.ceil(ROWS / 8)
    assert infers(world, "blue") == []


def test_a_failing_golden_set_fails_the_rollout_with_a_per_output_report_before_any_weight_moved(
    world: World,
) -> None:
    expected = version_2_answer({"INPUT0": INPUTS})
    attach(world, expected)
    world.triton("green").answer = answering(lambda inputs: version_2_answer(inputs) + np.float32(0.31))

    done = roll_out(world, spec(2))

    assert done.state is RolloutState.FAILED
    assert "golden set failed on replica 1: output 'OUTPUT0' max abs error 0.31 > atol 1e-05" in done.reason
    assert "first failing row 0" in done.reason
    failure = done.events[-1]
    assert failure.measurements["cause"] == "candidate_rejected"
    golden = failure.measurements["golden"]
    assert golden["replica"] == "replica 1" and golden["passed"] is False
    assert golden["outputs"]["OUTPUT0"]["rows_failing"] == ROWS
    assert golden["outputs"]["OUTPUT0"]["first_failing_row"] == 0
    assert golden["outputs"]["OUTPUT0"]["max_abs_error"] == pytest.approx(0.31, rel=1e-3)
    assert all(weights["green"] == 0 for _at, weights in world.router.history)
    assert world.router.weights() == {"blue": 100, "green": 0}
    assert world.registry.get_version("mlp", 2).state is VersionState.FAILED
    # The target is standby of the old release again.
    assert world.triton("green").ready_models() == {"mlp": 1}


def test_tolerances_of_the_set_decide_what_counts_as_the_same(world: World) -> None:
    attach(world, version_2_answer({"INPUT0": INPUTS}), atol=0.5)
    world.triton("green").answer = answering(lambda inputs: version_2_answer(inputs) + np.float32(0.31))

    done = roll_out(world, spec(2, strategy=Strategy.BLUEGREEN, steps=(100,)))

    assert done.state is RolloutState.SUCCEEDED, done.reason


def test_with_the_golden_gate_off_the_set_is_not_run(world: World) -> None:
    attach(world, version_2_answer({"INPUT0": INPUTS}) + 1)
    gates = Gates(max_error_rate=0.01, min_requests=10, golden=False, warmup_requests=0)

    done = roll_out(world, spec(2, strategy=Strategy.BLUEGREEN, steps=(100,), gates=gates))

    assert done.state is RolloutState.SUCCEEDED
    assert infers(world, "green") == []


def test_warm_up_runs_after_the_golden_set_and_its_figures_join_the_report(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    attach(world, version_2_answer({"INPUT0": INPUTS}))
    world.triton("green").answer = answering(version_2_answer)
    warmed: list[tuple[str, int, int]] = []

    def warm_up(pool: Pool, version: Any, requests: int) -> dict[str, Any]:
        assert len(infers(world, "green")) == math.ceil(ROWS / 8), "the golden set ran first"
        warmed.append((pool.name, version.number, requests))
        return {"warmup": {"requests": requests}}

    monkeypatch.setattr(candidate, "warm_up", warm_up)
    gates = Gates(max_error_rate=0.01, min_requests=10, warmup_requests=7)
    done = roll_out(world, spec(2, strategy=Strategy.BLUEGREEN, steps=(100,), gates=gates))

    assert done.state is RolloutState.SUCCEEDED
    assert warmed == [("green", 2, 7)]
    checked = next(e for e in done.events if e.reason == "candidate checks passed on green")
    assert set(checked.measurements) == {"golden", "warmup"}


def test_a_golden_file_changed_in_the_blob_store_fails_the_rollout(world: World) -> None:
    attach(world, version_2_answer({"INPUT0": INPUTS}))
    world.triton("green").answer = answering(version_2_answer)
    with world.db.transaction() as session:
        record = golden_store.get_golden(session, model="mlp", number=2)
    assert record is not None
    path = world.blobs.path_for(record.digest)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")

    done = roll_out(world, spec(2, strategy=Strategy.BLUEGREEN, steps=(100,)))

    assert done.state is RolloutState.FAILED
    assert done.events[-1].measurements["cause"] == "artifact_corrupted"
    assert all(weights["green"] == 0 for _at, weights in world.router.history)


class Replica:
    """A replica that records what it was sent and answers with ``fn``."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.sent: list[dict[str, tuple[int, ...]]] = []

    def infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        *,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        self.sent.append({name: a.shape for name, a in inputs.items()})
        return {"OUTPUT0": self.fn(inputs)}


def test_every_replica_must_reproduce_the_set_and_the_one_that_does_not_is_named(world: World) -> None:
    attach(world, version_2_answer({"INPUT0": INPUTS}))
    good, bad = Replica(version_2_answer), Replica(lambda i: version_2_answer(i) * 0)
    pool = Pool(
        "green",
        world.pools["green"].repository,
        ReplicatedTriton([good, bad], names=["replica 1 (a)", "replica 2 (b)"]),  # type: ignore[list-item]
    )
    with world.db.transaction() as session:
        record = golden_store.get_golden(session, model="mlp", number=2)
    assert record is not None

    with pytest.raises(CandidateRejected) as rejected:
        run_golden(pool, world.registry.get_version("mlp", 2), record, world.blobs)

    assert rejected.value.message.startswith("golden set failed on replica 2 (b): output 'OUTPUT0'")
    assert rejected.value.details["golden"]["replica"] == "replica 2 (b)"
    assert len(good.sent) == len(bad.sent) == math.ceil(ROWS / 8)


def test_a_model_without_batching_is_sent_one_row_per_request_without_the_rows_axis(world: World) -> None:
    attach(world, version_2_answer({"INPUT0": INPUTS}))
    version = world.registry.get_version("mlp", 2)
    unbatched = dataclasses.replace(
        version, signature=dataclasses.replace(version.signature, max_batch_size=0)
    )
    replica = Replica(version_2_answer)
    golden = GoldenSet(inputs={"INPUT0": INPUTS}, outputs={"OUTPUT0": version_2_answer({"INPUT0": INPUTS})})

    answers, requests = ask(replica, unbatched, golden)  # type: ignore[arg-type]

    assert requests == ROWS and replica.sent == [{"INPUT0": (4,)}] * ROWS
    np.testing.assert_array_equal(answers["OUTPUT0"], golden.outputs["OUTPUT0"])
