"""Rollouts across two real Triton pools behind a real HAProxy, driven in-process.

Clients are plain tritonclient gRPC clients on the proxy port. The engine,
registry (SQLite) and pools are the same objects ``controlplane up`` wires.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pytest
from rollout_load import FIXED_INPUT, Load, rollout_spec
from triton_helpers import load_examples_module

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.analysis import Gates
from controlplane.domain.models import VersionMetadata
from controlplane.domain.policy import ModelPolicy
from controlplane.domain.rollouts import RolloutState, Strategy
from controlplane.errors import Conflict
from controlplane.registry import store
from controlplane.runtime.local import LocalStack
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import Services, local_services
from controlplane.settings import Settings

pytestmark = pytest.mark.integration

examples = load_examples_module()


@dataclass
class Env:
    services: Services
    stack: LocalStack
    grpc_url: str
    outputs: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("rollouts")
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(state_dir=root / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port)
    with local_services(settings, pool_names=("blue", "green")) as (stack, services):
        folders = {
            "v1": examples.build_mlp(root / "v1", seed=1),
            "v2": examples.build_mlp(root / "v2", seed=2),
            "flaky": examples.build_flaky(root / "flaky"),
            "faulty": examples.build_faulty(root / "faulty", "mlp"),
        }
        # The flaky version runs on the Python backend: folder code needs the model's explicit consent.
        services.signing.set_policy(
            "mlp", ModelPolicy(allow_code_backends=True, code_backends_require_signature=False), actor="tests"
        )
        for name in ("v1", "v2", "flaky", "faulty"):
            archive = pack_directory(folders[name], root / f"{name}.tar.gz")
            services.registry.push(model="mlp", archive=archive, metadata=VersionMetadata())
        services.deployer.deploy("mlp", 1)
        outputs = {
            name: examples.reference_outputs(folders[name], {"INPUT0": FIXED_INPUT})["OUTPUT0"]
            for name in ("v1", "v2")
        }
        yield Env(services, stack, f"127.0.0.1:{grpc_port}", outputs)


# For the tests that send no client traffic: no request to wait for before a step's gates count.
WITHOUT_CLIENTS = Gates(max_error_rate=0.01, min_requests=0)


def _event_time(rollout, state: RolloutState) -> datetime:  # type: ignore[no-untyped-def]
    return next(e.at for e in rollout.events if e.to_state == state.value)


def test_promote_rollback_and_promote_again_under_load_fail_no_request(env: Env) -> None:
    engine = env.services.engine
    with Load(env.grpc_url, env.outputs) as load:
        first = engine.start(rollout_spec(2, Strategy.CANARY, (25, 100)), actor="test")
        first = engine.wait(first.id, 120)
        assert first.state is RolloutState.SUCCEEDED, first.reason
        back = engine.rollback_model("mlp", actor="test")
        back = engine.wait(back.id, 120)
        assert back.state is RolloutState.SUCCEEDED, back.reason
        assert back.spec.version == 1
        again = engine.start(rollout_spec(2, Strategy.BLUEGREEN, (100,)), actor="test")
        again = engine.wait(again.id, 120)
        assert again.state is RolloutState.SUCCEEDED, again.reason
        time.sleep(0.5)
    assert load.failures == []
    assert len(load.answers) > 200
    print(f"promote, rollback, promote: {len(load.answers)} requests, 0 failed")
    slack = 0.5

    def window(a: datetime, b: datetime) -> set[str]:
        return load.kinds_between(a + timedelta(seconds=slack), b - timedelta(seconds=slack))

    first_shift = _event_time(first, RolloutState.SHIFTING)
    assert window(load.answers[0][0] - timedelta(seconds=slack), first_shift) == {"v1"}
    assert window(_event_time(first, RolloutState.BAKING), _event_time(back, RolloutState.SHIFTING)) == {"v2"}
    assert window(_event_time(back, RolloutState.BAKING), _event_time(again, RolloutState.SHIFTING)) == {"v1"}
    assert window(_event_time(again, RolloutState.BAKING), load.answers[-1][0]) == {"v2"}
    assert "other" not in {k for _at, k in load.answers}
    standby = again.source_pool
    assert env.services.router.weights()[standby] == 0
    assert env.services.pools[standby].triton.is_model_ready("mlp", 2), "the old pool stays warm"
    with env.services.db.transaction() as session:
        assert store.get_model(session, "mlp").deployments and all(
            d.version == 2 for d in store.get_model(session, "mlp").deployments
        )


def test_a_canary_that_fails_requests_is_rolled_back_by_its_gate_before_full_traffic(env: Env) -> None:
    engine = env.services.engine
    live_before = engine.router.weights()
    with Load(env.grpc_url, env.outputs, random_inputs=True) as load:
        rollout = engine.start(
            rollout_spec(
                3,
                Strategy.CANARY,
                (20, 50, 100),
                step_seconds=2.0,
                gates=Gates(max_error_rate=0.05, min_requests=10),
            ),
            actor="test",
        )
        rollout = engine.wait(rollout.id, 120)
        time.sleep(0.5)
        rolled_back_at = _event_time(rollout, RolloutState.ROLLED_BACK)
    assert rollout.state is RolloutState.ROLLED_BACK
    assert rollout.step_index is not None and rollout.spec.steps[rollout.step_index] < 100
    breach = next(e for e in rollout.events if e.to_state == RolloutState.ROLLING_BACK.value)
    assert "error rate" in breach.reason
    measured = [e.measurements for e in rollout.events if e.measurements]
    assert measured and measured[-1]["passed"] is False
    assert engine.router.weights() == live_before
    assert load.failures, "the canary got traffic and failed some of it"
    assert all(at <= rolled_back_at for at, _msg in load.failures), "no failure after the rollback"
    print(f"canary: {len(load.failures)} failed of {len(load.failures) + len(load.answers)}; {breach.reason}")
    with env.services.db.transaction() as session:
        assert store.get_version(session, "mlp", 3).state.value == "failed"


def test_a_version_the_target_pool_cannot_load_fails_the_rollout_and_moves_no_traffic(env: Env) -> None:
    engine = env.services.engine
    before = engine.router.weights()
    rollout = engine.wait(engine.start(rollout_spec(4, Strategy.BLUEGREEN, (100,)), actor="test").id, 120)
    assert rollout.state is RolloutState.FAILED
    assert "staging failed" in rollout.reason and "mlp" in rollout.reason
    assert engine.router.weights() == before
    assert [e.to_state for e in rollout.events] == ["pending", "staging", "failed"]


def test_two_rollouts_at_once_on_one_pool_pair_accept_exactly_one(env: Env) -> None:
    engine = env.services.engine

    def attempt(version: int) -> str:
        try:
            spec = rollout_spec(version, Strategy.BLUEGREEN, (100,), gates=WITHOUT_CLIENTS)
            return f"accepted {engine.start(spec, actor='test').id}"
        except Conflict as exc:
            return f"conflict {exc.code}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(attempt, [1, 1, 1, 1]))
    accepted = [r for r in results if r.startswith("accepted")]
    assert len(accepted) == 1, results
    assert results.count("conflict pool_busy") == 3
    rollout_id = int(accepted[0].split()[1])
    assert engine.wait(rollout_id, 120).state is RolloutState.SUCCEEDED


def test_a_deploy_or_an_inplace_rollout_during_a_bluegreen_rollout_is_refused_naming_it(env: Env) -> None:
    engine = env.services.engine
    with env.services.db.transaction() as session:
        serving = store.get_model(session, "mlp").deployments[0].version
    target = 2 if serving == 1 else 1
    running = engine.start(
        rollout_spec(target, Strategy.BLUEGREEN, (100,), gates=WITHOUT_CLIENTS), actor="test"
    )

    with pytest.raises(Conflict) as deploy:
        env.services.deployer.deploy("mlp", serving, actor="test")
    with pytest.raises(Conflict) as inplace:
        engine.start(rollout_spec(target, Strategy.INPLACE, (100,)), actor="test")

    for refused in (deploy.value, inplace.value):
        assert refused.code == "pool_busy"
        assert refused.details["holder"]["kind"] == "rollout"
        assert refused.details["holder"]["id"] == str(running.id)
    assert engine.wait(running.id, 120).state is RolloutState.SUCCEEDED


def test_an_inplace_rollout_swaps_the_version_on_the_live_pool_without_moving_weights(env: Env) -> None:
    engine = env.services.engine
    before = engine.router.weights()
    with env.services.db.transaction() as session:
        serving = store.get_model(session, "mlp").deployments[0].version
    target = 2 if serving == 1 else 1
    with Load(env.grpc_url, env.outputs, threads=4) as load:
        rollout = engine.wait(
            engine.start(rollout_spec(target, Strategy.INPLACE, (100,)), actor="test").id, 120
        )
        time.sleep(0.5)
    assert rollout.state is RolloutState.SUCCEEDED, rollout.reason
    assert rollout.source_pool == rollout.target_pool
    assert engine.router.weights() == before
    assert load.failures == []
    assert load.answers[-1][1] == f"v{target}"
