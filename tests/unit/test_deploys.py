"""Deploys: an inplace rollout with no steps and no bake, answered when it has ended (fakes, SQLite).

Version 1 of ``mlp`` serves on blue (all traffic) with green as its warm
standby; version 2 is pushed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import World, serving_world

from controlplane.domain.models import VersionState
from controlplane.domain.rollouts import RolloutState, Strategy
from controlplane.errors import DeployFailed, DeployPending, NotFound, TritonUnavailable
from controlplane.services.deploys import Deployer


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = serving_world(tmp_path)
    yield world
    world.close()


def test_a_deploy_answers_once_its_inplace_rollout_has_succeeded(world: World) -> None:
    deployment = world.deploy("mlp", 2)

    assert (deployment.model, deployment.pool, deployment.version) == ("mlp", "blue", 2)
    latest = world.engine().list(limit=1)[0]
    assert latest.spec.strategy is Strategy.INPLACE
    assert (latest.spec.version, latest.source_pool, latest.target_pool) == (2, "blue", "blue")
    assert latest.state is RolloutState.SUCCEEDED
    assert world.triton("blue").ready_models() == {"mlp": 2}
    assert world.releases()["blue"] == {"mlp": 2}
    assert world.desired_weights() == {"blue": 100, "green": 0}, "a deploy moves no traffic"
    assert world.registry.get_version("mlp", 2).state is VersionState.SERVING
    deploys = [e for e in world.registry.events(limit=1000) if e.action == "deploy"]
    assert deploys[-1].outcome == "serving" and deploys[-1].details["rollout"] == latest.id


def test_a_deploy_that_triton_refuses_names_the_reason_and_the_previous_version_still_serves(
    world: World,
) -> None:
    world.triton("blue").load_failures[("mlp", 2)] = "onnx runtime error: bad graph"

    with pytest.raises(DeployFailed) as refused:
        world.deploy("mlp", 2)

    assert "bad graph" in refused.value.message
    assert refused.value.details["cause"] == "model_load_failed"
    assert refused.value.details["still_serving"] == 1
    rollout = world.engine().get(refused.value.details["rollout"])
    assert rollout.state is RolloutState.FAILED
    assert world.triton("blue").ready_models() == {"mlp": 1}
    assert world.releases()["blue"] == {"mlp": 1}
    assert world.registry.get_version("mlp", 2).state is VersionState.FAILED
    assert world.registry.get_version("mlp", 1).state is VersionState.SERVING


def test_a_deploy_to_a_pool_that_does_not_exist_is_refused_before_any_rollout_is_recorded(
    world: World,
) -> None:
    before = world.engine().list()

    with pytest.raises(NotFound) as refused:
        world.deploy("mlp", 2, pool="purple")

    assert refused.value.code == "pool_not_found"
    assert world.engine().list() == before


def test_a_deploy_to_the_standby_changes_only_the_standby(world: World) -> None:
    deployment = world.deploy("mlp", 2, pool="green")

    assert (deployment.pool, deployment.version) == ("green", 2)
    assert world.triton("green").ready_models() == {"mlp": 2}
    assert world.triton("blue").ready_models() == {"mlp": 1}
    assert world.releases() == {"blue": {"mlp": 1}, "green": {"mlp": 2}}


def test_a_deploy_still_waiting_out_an_outage_answers_pending_and_ends_on_its_own(world: World) -> None:
    lifted = threading.Event()

    def unreachable(*_args: object) -> None:
        if not lifted.is_set():
            raise TritonUnavailable("Triton did not answer load 'mlp'")

    world.triton("blue").before["load"] = unreachable
    engine = world.engine(retry_backoff=0.05, retry_backoff_max=0.05)
    deployer = Deployer(db=world.db, engine=engine, answer_within=0.5)

    with pytest.raises(DeployPending) as pending:
        deployer.deploy("mlp", 2, actor="tests")
    rollout_id = pending.value.details["rollout"]
    assert f"rollout {rollout_id}" in pending.value.message
    assert world.registry.get_version("mlp", 2).state is not VersionState.FAILED, "an outage is no verdict"
    lifted.set()

    assert engine.wait(rollout_id, timeout=10).state is RolloutState.SUCCEEDED
    assert world.triton("blue").ready_models() == {"mlp": 2}
