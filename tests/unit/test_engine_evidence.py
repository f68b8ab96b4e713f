"""A canary step judges its candidate on evidence: enough requests, over a window that grows while it holds.

Version 1 of ``mlp`` serves on blue; each test rolls version 2 out to green
on the fake clock. Client traffic is simulated by ``MeteredSampler``: a
total request rate split between the pools by the router's weights, so the
candidate sees traffic only in proportion to its weight (none at all when
the rate is zero) and the baseline none once the candidate has it all.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeClock, FakeRouter, World, serving_world, spec

from controlplane.domain.analysis import Gates, OnNoData, PoolSample
from controlplane.domain.models import VersionState
from controlplane.domain.rollouts import RequestedAction, Rollout, RolloutState
from controlplane.errors import SmokeTestFailed
from controlplane.pools import Pool
from controlplane.rollout.engine import EngineSettings, RolloutEngine
from controlplane.rollout.warmup import warm_up


class MeteredSampler:
    """Counters that grow with the fake clock: ``rate`` requests per second, split by the router's weights.

    ``error_rate[pool]`` is the share of a pool's requests that fail and
    ``p99_ms[pool]`` the p99 Triton reports for it. Change ``rate`` with
    ``set_rate`` so what came before is counted at the old rate.
    """

    def __init__(self, clock: FakeClock, router: FakeRouter) -> None:
        self.clock = clock
        self.router = router
        self.rate = 0.0
        self.error_rate: dict[str, float] = {}
        self.p99_ms: dict[str, float] = {}
        self._requests: dict[str, float] = {}
        self._errors: dict[str, float] = {}
        self._last = clock()
        self._lock = threading.Lock()

    def _accrue(self) -> None:
        now = self.clock()
        elapsed, self._last = now - self._last, now
        for pool, weight in self.router.weights().items():
            served = self.rate * elapsed * weight / 100.0
            self._requests[pool] = self._requests.get(pool, 0.0) + served
            self._errors[pool] = self._errors.get(pool, 0.0) + served * self.error_rate.get(pool, 0.0)

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self._accrue()
            self.rate = rate

    def __call__(self, pool: str, models: Collection[str]) -> PoolSample:
        with self._lock:
            self._accrue()
            requests = round(self._requests.get(pool, 0.0))
            errors = round(self._errors.get(pool, 0.0))
            p99 = self.p99_ms.get(pool)
            return PoolSample(
                at=self.clock(),
                proxy_requests=requests,
                proxy_errors=errors,
                triton_success=requests - errors,
                triton_failure=0,
                p99_us=None if p99 is None else p99 * 1000.0,
            )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = serving_world(tmp_path)
    yield world
    world.close()


@pytest.fixture
def sampler(world: World) -> MeteredSampler:
    return MeteredSampler(world.clock, world.router)


def _engine(world: World, sampler: MeteredSampler, **kwargs: object) -> RolloutEngine:
    engine = RolloutEngine(
        db=world.db,
        pools=world.pools,
        blobs=world.blobs,
        router=world.router,
        sampler=sampler,
        settings=EngineSettings(load_timeout=5.0, drain_timeout=1.0, pool_up_timeout=5.0, poll_interval=1.0),
        clock=world.clock,
        sleep=world.clock.sleep,
        policy_check=world.signing.check_deployable,
        **kwargs,  # type: ignore[arg-type]
    )
    world.engines.append(engine)
    return engine


def _run(engine: RolloutEngine, gates: Gates, steps: tuple[int, ...] = (10, 50, 100)) -> Rollout:
    rollout = engine.start(
        spec(2, steps=steps, step_seconds=30.0, bake_seconds=0.0, gates=gates), actor="tests"
    )
    return engine.wait(rollout.id, timeout=10)


def _reasons(rollout: Rollout) -> list[str]:
    """The reasons of the analysis events, in order."""
    return [e.reason for e in rollout.events if "requests" in e.measurements]


def _active_id(engine: RolloutEngine) -> int:
    (rollout,) = engine.list(active_only=True)
    return rollout.id


# -- no evidence ---------------------------------------------------------------------------


def test_a_canary_without_traffic_holds_then_rolls_back_saying_why(
    world: World, sampler: MeteredSampler
) -> None:
    engine = _engine(world, sampler)
    gates = Gates(max_error_rate=0.01, min_requests=20, max_hold_seconds=90.0)

    done = _run(engine, gates)

    assert done.state is RolloutState.ROLLED_BACK
    assert done.reason == (
        "rolled back: no evidence: 0 requests < min 20 on green after holding 90 s at step 1/3;"
        " set on_no_data=promote to go on without traffic"
    )
    assert _reasons(done) == [
        "holding: 0 of 20 requests at step 1/3, 0 s held of max 90 s",
        "holding: 0 of 20 requests at step 1/3, 30 s held of max 90 s",
        "holding: 0 of 20 requests at step 1/3, 60 s held of max 90 s",
        "no evidence: 0 requests < min 20 on green after holding 90 s at step 1/3;"
        " set on_no_data=promote to go on without traffic",
    ]
    holding = [e.measurements["holding"] for e in done.events if "requests" in e.measurements]
    assert [h["held_seconds"] for h in holding] == [0.0, 30.0, 60.0, 90.0]
    assert all(e.measurements["passed"] is False for e in done.events if "requests" in e.measurements)
    # The canary kept its 10 % through the whole hold, then gave it back.
    assert world.router.timeline("green")[1][0] - world.router.timeline("green")[0][0] == 120.0
    assert world.router.shares("green") == [10, 0]
    assert world.router.weights() == {"blue": 100, "green": 0}
    # No evidence says nothing against the version: it is not marked failed.
    assert world.registry.get_version("mlp", 2).state is not VersionState.FAILED


def test_a_window_that_holds_keeps_its_start_so_evidence_accumulates(
    world: World, sampler: MeteredSampler
) -> None:
    engine = _engine(world, sampler)
    started = world.clock()
    # 10 requests/s in all: 1 a second to green at 10 %; it starts 15 s into step 1's hold.
    world.clock.at(started + 45.0, lambda: sampler.set_rate(10.0))

    done = _run(engine, Gates(max_error_rate=0.01, min_requests=20, max_hold_seconds=300.0))

    assert done.state is RolloutState.SUCCEEDED, done.reason
    first_pass = next(e.measurements for e in done.events if e.measurements.get("passed") is True)
    # 15 requests at 30 s held (traffic came at 45 s), 45 at 60 s held: the window kept the step's start.
    assert first_pass["requests"] == 45
    assert first_pass["window_seconds"] == 90.0
    assert _reasons(done)[:3] == [
        "holding: 0 of 20 requests at step 1/3, 0 s held of max 300 s",
        "holding: 15 of 20 requests at step 1/3, 30 s held of max 300 s",
        "analysis passed",
    ]
    assert world.router.shares("green") == [10, 50, 100]


def test_on_no_data_promote_goes_on_without_traffic_with_a_note_at_every_step(
    world: World, sampler: MeteredSampler
) -> None:
    engine = _engine(world, sampler)
    gates = Gates(max_error_rate=0.01, min_requests=20, max_hold_seconds=30.0, on_no_data=OnNoData.PROMOTE)

    done = _run(engine, gates)

    assert done.state is RolloutState.SUCCEEDED, done.reason
    notes = [r for r in _reasons(done) if r.startswith("no evidence")]
    assert notes == [
        f"no evidence: 0 requests < min 20 on green after holding 30 s at step {i}/3;"
        " going on without it (on_no_data=promote)"
        for i in (1, 2, 3)
    ]
    assert world.router.shares("green") == [10, 50, 100]


def test_on_no_data_hold_keeps_holding_past_the_limit_until_traffic_comes(
    world: World, sampler: MeteredSampler
) -> None:
    engine = _engine(world, sampler)
    world.clock.at(world.clock() + 200.0, lambda: sampler.set_rate(10.0))
    gates = Gates(max_error_rate=0.01, min_requests=20, max_hold_seconds=30.0, on_no_data=OnNoData.HOLD)

    done = _run(engine, gates)

    assert done.state is RolloutState.SUCCEEDED, done.reason
    reasons = _reasons(done)
    assert reasons[:2] == [
        "holding: 0 of 20 requests at step 1/3, 0 s held of max 30 s",
        "holding: 0 of 20 requests at step 1/3, 30 s held"
        " (on_no_data=hold: until traffic comes or an operator promotes or aborts)",
    ]
    assert reasons[reasons.index("analysis passed") - 1].startswith("holding: ")
    green = world.router.timeline("green")
    assert green[1][0] - green[0][0] >= 200.0, "step 1 held well past max_hold_seconds"


def test_an_operator_promote_while_holding_goes_to_full_traffic(
    world: World, sampler: MeteredSampler
) -> None:
    engine = _engine(world, sampler)
    world.clock.at(
        world.clock() + 100.0,
        lambda: engine.request(_active_id(engine), RequestedAction.PROMOTE, actor="operator"),
    )

    done = _run(engine, Gates(max_error_rate=0.01, min_requests=20, max_hold_seconds=300.0))

    assert done.state is RolloutState.SUCCEEDED, done.reason
    assert world.router.shares("green") == [10, 100]
    assert _reasons(done)[-1].endswith("at step 1/3; an operator asked to promote")


def test_an_operator_abort_while_holding_rolls_back(world: World, sampler: MeteredSampler) -> None:
    engine = _engine(world, sampler)
    world.clock.at(
        world.clock() + 100.0,
        lambda: engine.request(_active_id(engine), RequestedAction.ABORT, actor="operator"),
    )

    done = _run(engine, Gates(max_error_rate=0.01, min_requests=20, max_hold_seconds=300.0))

    assert done.state is RolloutState.ROLLED_BACK
    assert done.reason == "rolled back: aborted by an operator"
    assert world.router.shares("green") == [10, 0]


def test_errors_already_seen_roll_back_at_once_without_waiting_for_evidence(
    world: World, sampler: MeteredSampler
) -> None:
    engine = _engine(world, sampler)
    # 1 request in 3 s to green (10 %), every one failing: 10 errors in the first window.
    sampler.set_rate(10.0 / 3.0)
    sampler.error_rate["green"] = 1.0

    done = _run(engine, Gates(max_error_rate=0.01, min_requests=100, max_hold_seconds=300.0))

    assert done.state is RolloutState.ROLLED_BACK
    assert "even counted over the minimum of 100 requests" in done.reason
    assert len(_reasons(done)) == 1
    assert world.registry.get_version("mlp", 2).state is VersionState.FAILED


def test_min_requests_zero_judges_every_window_as_it_is(world: World, sampler: MeteredSampler) -> None:
    engine = _engine(world, sampler)

    done = _run(engine, Gates(max_error_rate=0.01, min_requests=0))

    assert done.state is RolloutState.SUCCEEDED, done.reason
    assert _reasons(done) == ["analysis passed"] * 3


# -- relative gates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("worse", "gates", "breach"),
    [
        (
            {"error_rate": 0.04},
            Gates(max_error_rate=0.05, max_error_rate_increase=0.01, min_requests=20),
            "error rate increase 0.04 > max 0.01 (candidate 0.04: 12 of 300 requests;"
            " baseline 0: 0 of 2700 requests)",
        ),
        (
            {"p99_ms": 30.0},
            Gates(max_p99_ms=100.0, max_p99_ratio=1.5, min_requests=20),
            "p99 ratio 3.00 > max 1.50 (candidate 30.0 ms, baseline 10.0 ms)",
        ),
    ],
    ids=["error-rate", "p99"],
)
def test_a_canary_worse_than_the_baseline_but_under_the_absolute_gate_is_rolled_back(
    world: World, sampler: MeteredSampler, worse: Mapping[str, float], gates: Gates, breach: str
) -> None:
    sampler.set_rate(100.0)
    sampler.p99_ms.update({"blue": 10.0, "green": 10.0})
    if "error_rate" in worse:
        sampler.error_rate["green"] = worse["error_rate"]
    if "p99_ms" in worse:
        sampler.p99_ms["green"] = worse["p99_ms"]
    engine = _engine(world, sampler)

    done = _run(engine, gates)

    assert done.state is RolloutState.ROLLED_BACK
    assert done.reason == f"rolled back: gate breached: {breach}"
    (event,) = [e for e in done.events if "requests" in e.measurements]
    assert event.measurements["requests"] == 300
    assert event.measurements["baseline"]["requests"] == 2700
    assert event.measurements["breaches"] == [breach]
    assert world.router.shares("green") == [10, 0]
    assert world.registry.get_version("mlp", 2).state is VersionState.FAILED


def test_a_canary_as_good_as_the_baseline_passes_and_the_last_step_has_no_baseline_to_compare(
    world: World, sampler: MeteredSampler
) -> None:
    sampler.set_rate(100.0)
    sampler.p99_ms.update({"blue": 10.0, "green": 11.0})
    engine = _engine(world, sampler)

    done = _run(engine, Gates(max_p99_ratio=1.5, max_error_rate_increase=0.01, min_requests=20))

    assert done.state is RolloutState.SUCCEEDED, done.reason
    windows = [e.measurements for e in done.events if "requests" in e.measurements]
    assert [w["baseline"]["requests"] for w in windows] == [2700, 1500, 0]
    assert windows[-1]["notes"] == [
        "baseline has too little traffic: 0 requests < min 20; error rate increase gate not applied",
        "baseline has too little traffic: 0 requests < min 20; p99 ratio gate not applied",
    ]


def test_without_relative_gates_the_baseline_is_not_sampled(world: World, sampler: MeteredSampler) -> None:
    sampled: list[str] = []

    def recording(pool: str, models: Collection[str]) -> PoolSample:
        sampled.append(pool)
        return sampler(pool, models)

    sampler.set_rate(100.0)
    engine = _engine(world, sampler)
    engine.sampler = recording

    done = _run(engine, Gates(max_error_rate=0.01, min_requests=20))

    assert done.state is RolloutState.SUCCEEDED, done.reason
    assert set(sampled) == {"green"}
    assert all(e.measurements.get("baseline", None) is None for e in done.events)


# -- warm-up before traffic ----------------------------------------------------------------


def _warming(world: World) -> object:
    def checks(rollout: Rollout, pool: Pool) -> Mapping[str, object]:
        version = world.registry.get_version(rollout.spec.model, rollout.spec.version)
        return warm_up(pool, version, rollout.spec.gates.warmup_requests)

    return checks


def test_the_candidate_is_warmed_up_on_its_pool_before_any_weight_moves(
    world: World, sampler: MeteredSampler
) -> None:
    green = world.triton("green")
    weights_when_warmed: list[dict[str, int]] = []

    def answer(model: str, version: int, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict:
        weights_when_warmed.append(world.router.weights())
        assert inputs["INPUT0"].shape == (1, 4) and not inputs["INPUT0"].any()
        return {name: np.zeros((1, 2), dtype=np.float32) for name in outputs}

    green.answer = answer
    sampler.set_rate(100.0)
    engine = _engine(world, sampler, candidate_checks=_warming(world))

    done = _run(engine, Gates(max_error_rate=0.01, min_requests=20, warmup_requests=7))

    assert done.state is RolloutState.SUCCEEDED, done.reason
    assert [c for c in green.calls if c[0] == "infer"] == [("infer", "mlp", 2)] * 7
    assert all(w["green"] == 0 for w in weights_when_warmed)
    report = next(e for e in done.events if e.reason == "candidate checks passed on green").measurements
    assert report["warmup"]["requests"] == 7
    assert report["warmup"]["model_warmup"] is False
    assert set(report["warmup"]["replicas"]) == {"replica 1"}


def test_a_failing_warm_up_inference_fails_the_rollout_naming_the_replica_and_request(
    world: World, sampler: MeteredSampler
) -> None:
    green = world.triton("green")
    answered: list[int] = []

    def third_fails(model: str, version: int, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict:
        answered.append(1)
        if len(answered) == 3:
            raise SmokeTestFailed(f"inference on {model!r} version {version} failed: out of memory")
        return {name: np.zeros((1, 2), dtype=np.float32) for name in outputs}

    green.answer = third_fails
    engine = _engine(world, sampler, candidate_checks=_warming(world))

    done = _run(engine, Gates(max_error_rate=0.01, min_requests=20, warmup_requests=5))

    assert done.state is RolloutState.FAILED
    assert "warm-up inference 3 of 5 on replica 1 failed" in done.reason
    assert "out of memory" in done.reason
    failure = done.events[-1].measurements
    assert failure["cause"] == "warmup_failed"
    assert failure["warmup"]["replica"] == "replica 1"
    assert failure["warmup"]["request"] == 3
    assert all(w["green"] == 0 for _at, w in world.router.history)
