"""The reconciler (``Reconciler.run_once`` / ``run_forever`` and ``PoolRepair.reconcile``) over fakes.

Version 1 of ``mlp`` serves on blue with green as its warm standby. Each
drift test changes the live pool behind the control plane's back, runs one
pass, and checks the repair, its audit event, and that a second pass finds
nothing more to do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakes import World, build_world, serving_world
from sqlalchemy.exc import OperationalError

from controlplane.domain.models import VersionState
from controlplane.registry import rollout_store


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = serving_world(tmp_path)
    yield world
    world.close()


def _drift_events(world: World) -> list[tuple[str, str]]:
    return [(e.target, e.outcome) for e in world.registry.events(limit=1000) if e.action == "drift.repair"]


def _unexpected_folder(world: World) -> None:
    rogue = world.pools["blue"].repository.live / "rogue"
    (rogue / "1").mkdir(parents=True)
    (rogue / "config.pbtxt").write_text('name: "rogue"\nbackend: "python"\n', encoding="utf-8")


def _unexpected_model(world: World) -> None:
    world.triton("blue").force_loaded("rogue", 3)


def _files(world: World) -> None:
    weights = world.pools["blue"].repository.live / "mlp" / "1" / "model.onnx"
    # Unlink first: the file is a hard link to the read-only blob, which must stay intact.
    weights.unlink()
    weights.write_bytes(b"someone else's weights")


def _config(world: World) -> None:
    world.triton("blue").overrides["mlp"] = {"max_batch_size": 1}


def _not_loaded(world: World) -> None:
    world.triton("blue").unload("mlp")


@pytest.mark.parametrize(
    ("make_drift", "target", "kind"),
    [
        (_unexpected_folder, "blue/rogue", "unexpected_folder"),
        (_unexpected_model, "blue/rogue", "unexpected_model"),
        (_files, "blue/mlp", "files"),
        (_config, "blue/mlp", "config"),
        (_not_loaded, "blue/mlp", "not_loaded"),
    ],
    ids=["unexpected_folder", "unexpected_model", "files", "config", "not_loaded"],
)
def test_each_kind_of_drift_on_the_live_pool_is_repaired_and_audited(
    world: World, make_drift: Callable[[World], None], target: str, kind: str
) -> None:
    reconciler = world.reconciler(world.engine())
    make_drift(world)

    changes = reconciler.run_once()

    assert changes, "the pass reported no change"
    assert _drift_events(world) == [(target, kind)]
    blue = world.pools["blue"]
    version = world.registry.get_version("mlp", 1)
    assert blue.repository.live_models() == ["mlp"]
    assert blue.repository.differences(version, world.blobs) == []
    assert world.triton("blue").ready_models() == {"mlp": 1}
    assert world.triton("blue").model_config("mlp")["max_batch_size"] == 8
    assert reconciler.run_once() == []


def test_a_repair_reinstalls_through_load_and_smoke_test(world: World) -> None:
    reconciler = world.reconciler(world.engine())
    blue = world.triton("blue")
    _files(world)
    blue.calls.clear()

    reconciler.run_once()

    assert [op for op, _m, _v in blue.calls if op in ("load", "smoke_test")] == ["load", "smoke_test"]


def test_a_repair_that_triton_refuses_is_reported_and_the_other_models_are_still_reconciled(
    world: World,
) -> None:
    world.push("other", b"weights of other")
    world.deploy("other", 1, actor="tests")
    reconciler = world.reconciler(world.engine())
    reconciler.run_once()
    blue = world.triton("blue")
    blue.unload("mlp")
    blue.unload("other")
    blue.load_failures[("mlp", 1)] = "the GPU is gone"

    changes = reconciler.run_once()

    assert any(c.startswith("failed mlp version 1 on blue") for c in changes)
    assert blue.ready_models() == {"other": 1}


def test_the_standby_follows_the_live_release_after_a_deploy(world: World) -> None:
    reconciler = world.reconciler(world.engine())
    world.deploy("mlp", 2, actor="tests")
    assert world.releases()["green"] == {"mlp": 1}

    changes = reconciler.run_once()

    assert any(c.startswith("standby green follows blue") for c in changes)
    assert world.releases() == {"blue": {"mlp": 2}, "green": {"mlp": 2}}
    assert world.triton("green").ready_models() == {"mlp": 2}
    syncs = [e for e in world.registry.events(limit=1000) if e.action == "standby.sync"]
    assert syncs[-1].target == "green" and syncs[-1].details["to"] == {"mlp": 2}
    assert world.registry.get_version("mlp", 1).state is VersionState.RETIRED
    assert reconciler.run_once() == []


def test_a_new_pool_gets_the_live_release_installed_without_reporting_drift(tmp_path: Path) -> None:
    world = build_world(tmp_path)
    try:
        world.push("mlp", b"weights of version 1")
        world.deploy("mlp", 1, actor="tests")
        reconciler = world.reconciler(world.engine())

        reconciler.run_once()

        assert world.triton("green").ready_models() == {"mlp": 1}
        assert _drift_events(world) == []
    finally:
        world.close()


def test_the_proxy_gets_back_the_recorded_weights(world: World) -> None:
    reconciler = world.reconciler(world.engine())
    world.router.set_weights({"blue": 0, "green": 100})

    changes = reconciler.run_once()

    assert changes == ["proxy weights {'blue': 0, 'green': 100} -> {'blue': 100, 'green': 0}"]
    assert world.router.weights() == {"blue": 100, "green": 0}


def test_weight_leaves_a_pool_whose_models_are_not_ready_while_another_pool_can_serve(world: World) -> None:
    reconciler = world.reconciler(world.engine())
    world.router.set_weights({"blue": 50, "green": 50})
    with world.db.transaction() as session:
        rollout_store.set_pool_weights(session, {"blue": 50, "green": 50})
    world.triton("green").load_failures[("mlp", 1)] = "broken"
    world.triton("green").unload("mlp")

    reconciler.run_once()

    assert world.router.weights() == {"blue": 50, "green": 0}


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("a bug in one pass"),
        OperationalError("SELECT 1", {}, Exception("terminating connection due to administrator command")),
    ],
    ids=["bug", "database"],
)
def test_run_forever_survives_an_exception_in_a_pass_and_repairs_on_the_next(
    world: World, failure: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    reconciler = world.reconciler(world.engine())
    blue = world.triton("blue")
    failed: list[bool] = []

    def fail_once(_model: str, _version: int | None) -> None:
        if not failed:
            failed.append(True)
            raise failure

    blue.before["repository_index"] = fail_once
    blue.unload("mlp")
    stop = threading.Event()
    loop = threading.Thread(target=reconciler.run_forever, args=(stop,), kwargs={"interval": 0.01})

    with caplog.at_level(logging.WARNING, logger="controlplane.rollout.reconciler"):
        loop.start()
        deadline = time.monotonic() + 5
        while blue.ready_models() != {"mlp": 1} and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        reconciler.wake()
        loop.join(timeout=5)

    assert failed == [True]
    assert blue.ready_models() == {"mlp": 1}
    assert not loop.is_alive()
    assert "reconcile pass failed" in caplog.text
