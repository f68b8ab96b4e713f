"""The tuner on fakes: it measures only on the idle pool under the tuning name, cleans up, writes the best.

``mlp`` version 1 serves on blue and green holds it as the warm standby
(``serving_world``). The load generator is a fake that reads the
configuration staged for the tuning model and answers with figures computed
from it, so the best configuration is known in advance: with the objective
p99 <= 6 ms it is ``delay 500 us, 2 instances``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakes import FakeTriton, World, serving_world

from controlplane.artifacts.model_config import parse_model_config
from controlplane.claims import PoolClaims
from controlplane.domain.claims import Holder, HolderKind
from controlplane.domain.tuning import (
    BatchingConfig,
    LoadShape,
    LoadTarget,
    Measurement,
    SweepSpec,
    tuning_model_name,
)
from controlplane.errors import InvalidInput, ModelLoadFailed, PoolBusy, TritonUnavailable
from controlplane.pools import Pool
from controlplane.registry import claim_store, rollout_store, store
from controlplane.triton.replicas import ReplicatedTriton
from controlplane.tuning.configs import batching_of, read_config
from controlplane.tuning.tuner import Tuner, TuningState

TUNING = tuning_model_name("mlp")
URLS = {"blue": "blue:8001", "green": "green:8001"}
SPEC = SweepSpec(p99_ms=6.0, delays_us=(0, 500, 2000), instance_counts=(1, 2), seconds_per_config=2.0)
BEST = BatchingConfig(max_queue_delay_us=500, preferred_batch_sizes=(), instance_count=2)


def figures(batching: BatchingConfig) -> tuple[float, float]:
    """(requests/s, p99 ms): more instances and a longer delay give more throughput and a higher p99."""
    delay = batching.max_queue_delay_us or 0
    return 1000.0 * batching.instance_count + delay / 10, 1.0 + delay / 250 + batching.instance_count


class FakeLoad:
    """The load generator: answers from the configuration staged for the target, records what it saw."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.figures: Callable[[BatchingConfig], tuple[float, float]] = figures
        self.hook: Callable[[int], None] | None = None
        self.seen: list[dict[str, object]] = []

    def __call__(self, target: LoadTarget, shape: LoadShape, *, stop: threading.Event) -> Measurement:
        pool = next(name for name, url in URLS.items() if url == target.url)
        folder = self.world.pools[pool].repository.live / target.model
        batching = batching_of(read_config((folder / "config.pbtxt").read_text(encoding="utf-8")))
        self.seen.append(
            {
                "url": target.url,
                "pool": pool,
                "model": target.model,
                "batching": batching,
                "ready": self.world.triton(pool).ready_models(),
            }
        )
        if self.hook is not None:
            self.hook(len(self.seen))
        rps, p99 = self.figures(batching)
        return Measurement(
            requests=int(rps * shape.seconds), errors=0, seconds=shape.seconds, p50_ms=p99 / 2, p99_ms=p99
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = serving_world(tmp_path)
    yield world
    world.close()


@pytest.fixture
def load(world: World) -> FakeLoad:
    return FakeLoad(world)


@pytest.fixture
def tuner(world: World, load: FakeLoad) -> Iterator[Tuner]:
    tuner = Tuner(
        db=world.db,
        pools=world.pools,
        endpoints={name: [url] for name, url in URLS.items()},
        claims=world.repair.claims,
        blobs=world.blobs,
        registry=world.registry,
        work_dir=world.root / "uploads",
        load_timeout=5.0,
        measure=load,
    )
    yield tuner
    tuner.stop()


def _claims(world: World) -> list[str]:
    with world.db.transaction() as session:
        return [f"{c.pool}: {c.holder}" for c in claim_store.list_claims(session)]


def _events(world: World, action: str) -> list[dict[str, object]]:
    with world.db.transaction() as session:
        return [
            {"outcome": e.outcome, "target": e.target, **e.details}
            for e in store.list_events(session, limit=1000)
            if e.action == action
        ]


def _assert_standby_and_live_untouched(world: World) -> None:
    assert world.triton("blue").ready_models() == {"mlp": 1}
    assert world.triton("green").ready_models() == {"mlp": 1}
    assert all(model != TUNING for _op, model, _v in world.triton("blue").calls)
    for pool in ("blue", "green"):
        assert world.pools[pool].repository.live_models() == ["mlp"]
    assert world.releases() == {"blue": {"mlp": 1}, "green": {"mlp": 1}}
    assert world.desired_weights() == {"blue": 100, "green": 0}


def test_a_run_measures_the_default_then_each_configuration_on_the_idle_pool_and_writes_the_best(
    world: World, tuner: Tuner, load: FakeLoad
) -> None:
    started = tuner.start("mlp", SPEC, actor="alice")
    run = tuner.wait(started.id, 30)

    assert run.state is TuningState.SUCCEEDED, run.error
    assert started.pool == "green"
    assert [t.index for t in run.trials] == list(range(7))
    assert run.trials[0].config == BatchingConfig(
        max_queue_delay_us=None, preferred_batch_sizes=(), instance_count=1
    )
    assert run.best is not None and run.best.config == BEST
    # Every measurement went to green, under the tuning name, with the standby's model READY beside it.
    assert {(s["pool"], s["model"]) for s in load.seen} == {("green", TUNING)}
    assert all(s["ready"] == {"mlp": 1, TUNING: 1} for s in load.seen)
    assert [s["batching"] for s in load.seen][1:] == list(run.planned)
    assert run.new_version == 3 and run.version_created
    new = world.registry.get_version("mlp", 3)
    config = next(e for e in new.manifest if e.path == "config.pbtxt")
    staged = parse_model_config(world.blobs.path_for(config.sha256).read_text(encoding="utf-8"))
    assert staged.name == "mlp"
    assert batching_of(staged) == BEST
    source = world.registry.get_version("mlp", 1)
    assert {e.path: e.sha256 for e in new.manifest if e.path != "config.pbtxt"} == {
        e.path: e.sha256 for e in source.manifest if e.path != "config.pbtxt"
    }
    labels = new.metadata.labels
    assert labels["tuning.tuned_from"] == "1"
    assert json.loads(labels["tuning.config"]) == BEST.as_dict()
    assert labels["tuning.throughput_rps"] == "2050.0" and labels["tuning.p99_ms"] == "5.000"
    assert labels["tuning.objective_p99_ms"] == "6"
    assert labels["tuning.default_throughput_rps"] == "1000.0" and labels["tuning.default_p99_ms"] == "2.000"
    _assert_standby_and_live_untouched(world)
    assert world.triton("green").model_status(TUNING)[0].state == "UNAVAILABLE"
    assert _claims(world) == []
    assert [e["outcome"] for e in _events(world, "tune.start")] == ["running"]
    finish = _events(world, "tune.finish")
    assert [(e["outcome"], e["new_version"]) for e in finish] == [("succeeded", 3)]


def test_a_run_holds_the_idle_pool_so_no_other_operation_may_change_it_meanwhile(
    world: World, tuner: Tuner, load: FakeLoad
) -> None:
    held: list[list[str]] = []
    load.hook = lambda _n: held.append(_claims(world))

    run = tuner.wait(tuner.start("mlp", SPEC, actor="alice").id, 30)

    assert run.state is TuningState.SUCCEEDED
    assert held and all(claims == [f"green: tune {run.id}"] for claims in held)
    skipped = world.repair.reconcile()
    assert skipped == []  # the claim is gone, and nothing was left to repair


def test_the_idle_pool_held_by_another_operation_is_answered_pool_busy_and_nothing_is_staged(
    world: World, tuner: Tuner, load: FakeLoad
) -> None:
    other = PoolClaims(world.db)
    with world.db.transaction() as session:
        other.take(session, ["green"], Holder(HolderKind.RECYCLE, "elsewhere"))
    try:
        with pytest.raises(PoolBusy) as busy:
            tuner.start("mlp", SPEC, actor="alice")
    finally:
        other.end(Holder(HolderKind.RECYCLE, "elsewhere"))
        other.close()

    assert busy.value.details["holder"]["kind"] == "recycle"
    assert load.seen == []
    assert tuner.list() == []
    assert _events(world, "tune.start") == []
    _assert_standby_and_live_untouched(world)


def test_an_absurd_request_is_refused_before_any_pool_is_claimed(world: World, tuner: Tuner) -> None:
    with pytest.raises(InvalidInput) as refused:
        tuner.start("mlp", SweepSpec(p99_ms=6.0, preferred_batch_sizes=(4, 64)), actor="alice")

    assert "max_batch_size 8" in refused.value.message
    assert _claims(world) == []
    assert _events(world, "tune.start") == []


def test_when_no_configuration_meets_the_objective_nothing_is_written_and_the_run_says_why(
    world: World, tuner: Tuner, load: FakeLoad
) -> None:
    load.figures = lambda b: (1000.0, 50.0)

    run = tuner.wait(tuner.start("mlp", SPEC, actor="alice").id, 30)

    assert run.state is TuningState.FAILED
    assert run.error is not None and run.error["code"] == "objective_not_met"
    assert "p99 <= 6 ms" in run.error["message"]
    assert len(run.trials) == 7  # every figure is still there to read
    assert run.new_version is None
    assert [v.number for v in world.registry.list_versions("mlp")] == [1, 2]
    _assert_standby_and_live_untouched(world)
    assert _claims(world) == []
    assert [e["outcome"] for e in _events(world, "tune.finish")] == ["failed"]


def test_a_failure_mid_sweep_still_unloads_and_removes_the_tuning_model_and_releases_the_pool(
    world: World, tuner: Tuner, load: FakeLoad
) -> None:
    def fail_third(count: int) -> None:
        if count == 3:
            raise TritonUnavailable("Triton did not answer an inference")

    load.hook = fail_third

    run = tuner.wait(tuner.start("mlp", SPEC, actor="alice").id, 30)

    assert run.state is TuningState.FAILED
    assert run.error is not None and run.error["code"] == "triton_unavailable"
    assert len(run.trials) == 2
    _assert_standby_and_live_untouched(world)
    assert TUNING not in world.triton("green").ready_models()
    assert list(world.pools["green"].repository.staging.iterdir()) == []
    assert _claims(world) == []


def test_a_configuration_triton_cannot_load_is_reported_and_never_chosen(
    world: World, tuner: Tuner, load: FakeLoad
) -> None:
    green = world.triton("green")

    def refuse_two_instances(model: str, _version: int | None) -> None:
        staged = (green.repository.live / model / "config.pbtxt").read_text(encoding="utf-8")
        if model == TUNING and batching_of(read_config(staged)).instance_count == 2:
            raise ModelLoadFailed("Triton failed to load 'mlp~tune' version 1: out of memory")

    green.before["load"] = refuse_two_instances

    run = tuner.wait(tuner.start("mlp", SPEC, actor="alice").id, 30)

    assert run.state is TuningState.SUCCEEDED, run.error
    failed = [t for t in run.trials if t.failure is not None]
    assert [t.config.instance_count for t in failed] == [2, 2, 2]
    assert all("out of memory" in (t.failure or "") for t in failed)
    assert run.best is not None and run.best.config.instance_count == 1
    _assert_standby_and_live_untouched(world)


def test_the_run_stops_when_the_idle_pool_gets_traffic(world: World, tuner: Tuner, load: FakeLoad) -> None:
    def traffic_arrives(count: int) -> None:
        if count == 1:
            with world.db.transaction() as session:
                rollout_store.set_pool_weights(session, {"blue": 90, "green": 10})

    load.hook = traffic_arrives

    run = tuner.wait(tuner.start("mlp", SPEC, actor="alice").id, 30)

    assert run.state is TuningState.FAILED
    assert run.error is not None and run.error["code"] == "pool_serving"
    assert len(run.trials) == 1
    assert len(load.seen) == 1
    assert TUNING not in world.triton("green").ready_models()
    assert world.pools["green"].repository.live_models() == ["mlp"]


def test_stopping_the_control_plane_ends_a_run_cleanly(world: World, tuner: Tuner, load: FakeLoad) -> None:
    stopper: list[threading.Thread] = []

    def stop_now(count: int) -> None:
        if count == 2:
            stopper.append(threading.Thread(target=tuner.stop))
            stopper[0].start()
            stopper[0].join(0.2)  # the stop flag is set; the join waits for this very thread

    load.hook = stop_now

    run = tuner.wait(tuner.start("mlp", SPEC, actor="alice").id, 30)
    stopper[0].join(5)

    assert run.state is TuningState.FAILED
    assert run.error is not None and run.error["code"] == "tuning_stopped"
    assert len(load.seen) == 2
    assert TUNING not in world.triton("green").ready_models()
    assert _claims(world) == []


def test_a_tuning_leftover_is_removed_by_the_next_repair_once_and_not_counted_as_drift(world: World) -> None:
    green = world.pools["green"]
    leftover = green.repository.live / TUNING
    (leftover / "1").mkdir(parents=True)
    mlp = green.repository.live / "mlp"
    config = (mlp / "config.pbtxt").read_text(encoding="utf-8").replace('name: "mlp"', f'name: "{TUNING}"')
    (leftover / "config.pbtxt").write_text(config, encoding="utf-8")
    (leftover / "1" / "model.onnx").write_bytes((mlp / "1" / "model.onnx").read_bytes())
    world.triton("green").force_loaded(TUNING, 1)

    first = world.repair.reconcile()
    second = world.repair.reconcile()

    assert first == [f"removed tuning leftover {TUNING} from green"]
    assert second == []
    assert not leftover.exists()
    assert TUNING not in world.triton("green").ready_models()
    assert world.triton("green").ready_models() == {"mlp": 1}
    assert [(e["target"], e["loaded"]) for e in _events(world, "tune.cleanup")] == [(f"green/{TUNING}", True)]
    assert _events(world, "drift.repair") == []


def test_the_default_version_is_the_one_serving_production(world: World, tuner: Tuner) -> None:
    run = tuner.wait(tuner.start("mlp", SPEC, actor="alice").id, 30)
    explicit = tuner.wait(tuner.start("mlp", SPEC, version=2, actor="alice").id, 30)

    assert run.version == 1
    assert explicit.version == 2
    assert explicit.new_version == 4
    assert world.registry.get_version("mlp", 4).metadata.labels["tuning.tuned_from"] == "2"


def test_each_configuration_loads_on_every_replica_and_is_measured_on_the_first(
    world: World, load: FakeLoad
) -> None:
    green = world.pools["green"]
    second = FakeTriton(green.repository)
    second.force_loaded("mlp", 1)
    pools = {
        **world.pools,
        "green": Pool(
            name="green", repository=green.repository, triton=ReplicatedTriton([green.triton, second])
        ),
    }
    tuner = Tuner(
        db=world.db,
        pools=pools,
        endpoints={"blue": [URLS["blue"]], "green": [URLS["green"], "green:8002"]},
        claims=world.repair.claims,
        blobs=world.blobs,
        registry=world.registry,
        work_dir=world.root / "uploads",
        load_timeout=5.0,
        measure=load,
    )
    try:
        run = tuner.wait(tuner.start("mlp", SPEC, actor="alice").id, 30)
    finally:
        tuner.stop()

    assert run.state is TuningState.SUCCEEDED, run.error
    for replica in (world.triton("green"), second):
        ops = [op for op, model, _v in replica.calls if model == TUNING]
        assert ops.count("load") == 7
        assert ops.count("unload") >= 7
        assert TUNING not in replica.ready_models() and replica.ready_models() == {"mlp": 1}
    assert {s["url"] for s in load.seen} == {URLS["green"]}
