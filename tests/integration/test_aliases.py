"""Aliases end to end: ``controlplane up`` with real Tritons and HAProxy, driven by the CLI and the API.

The production alias must always name what a plain tritonclient gets
through the proxy: it follows a deploy, a canary that succeeds and a
rollback, and stays put when a rollout fails. The tests share one stack and
run in order. The registry part also runs on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from stack import Stack, start_stack
from triton_helpers import load_examples_module

from controlplane.domain.models import (
    ManifestEntry,
    ModelName,
    ModelSignature,
    TensorSpec,
    VersionMetadata,
    manifest_digest,
)
from controlplane.registry import alias_store, rollout_store, store
from controlplane.registry.db import Database

pytestmark = pytest.mark.integration

examples = load_examples_module()
MLP_INPUT = np.random.default_rng(11).standard_normal((2, 16)).astype(np.float32)
QUICK_CANARY = (
    "--strategy", "canary", "--steps", "50,100", "--step-seconds", "1", "--bake-seconds", "1",
    "--min-requests", "0", "--warmup-requests", "2",
)  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("alias-examples")
    return {
        "v1": examples.build_mlp(root / "v1", seed=1),
        "v2": examples.build_mlp(root / "v2", seed=2),
        "faulty": examples.build_faulty(root / "faulty", "mlp"),
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, folders: dict[str, Path]) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("alias-stack") / "state")
    try:
        for name in ("v1", "v2", "faulty"):
            pushed = running.push(folders[name], "mlp")
            assert pushed.status_code == 201, pushed.text
        yield running
    finally:
        code = running.stop()
        assert code == 0, running.log()


def _infer(stack: Stack) -> np.ndarray:
    client = grpcclient.InferenceServerClient(stack.grpc_url)
    try:
        tensor = grpcclient.InferInput("INPUT0", list(MLP_INPUT.shape), "FP32")
        tensor.set_data_from_numpy(MLP_INPUT)
        return client.infer("mlp", [tensor]).as_numpy("OUTPUT0")
    finally:
        client.close()


def _serves(stack: Stack, folder: Path) -> bool:
    expected = examples.reference_outputs(folder, {"INPUT0": MLP_INPUT})["OUTPUT0"]
    return bool(np.allclose(_infer(stack), expected, rtol=1e-5))


def _get(stack: Stack, path: str, **params: Any) -> Any:
    with stack.client() as client:
        answer = client.get(path, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _production_history(stack: Stack) -> list[tuple[int | None, int | None]]:
    return [(m["version"], m["rollout"]) for m in _get(stack, "/v1/models/mlp/aliases/production/history")]


def _rollout_ids(stack: Stack) -> list[int]:
    return sorted(r["id"] for r in _get(stack, "/v1/rollouts"))


def test_production_follows_a_deploy_a_canary_by_alias_and_a_rollback(
    stack: Stack, folders: dict[str, Path]
) -> None:
    deployed = stack.cli("deploy", "mlp", "1")
    assert deployed.returncode == 0, deployed.stderr
    (deploy_rollout,) = _rollout_ids(stack)
    assert _production_history(stack) == [(1, deploy_rollout)]
    before_alias = _get(stack, "/v1/events", limit=1000)[-1]["id"]

    set_ = stack.cli("alias", "set", "mlp", "challenger", "2", "--reason", "offline eval")
    assert set_.returncode == 0, set_.stderr
    canary = stack.cli("rollout", "start", "mlp@challenger", *QUICK_CANARY)
    assert canary.returncode == 0, canary.stdout + canary.stderr
    canary_rollout = _rollout_ids(stack)[-1]
    assert _get(stack, f"/v1/rollouts/{canary_rollout}")["version"] == 2
    assert _serves(stack, folders["v2"])

    back = stack.cli("rollback", "mlp")
    assert back.returncode == 0, back.stdout + back.stderr
    rollback_rollout = _rollout_ids(stack)[-1]
    assert _serves(stack, folders["v1"])

    history = _get(stack, "/v1/models/mlp/aliases/production/history")
    assert [(m["version"], m["previous"], m["rollout"]) for m in history] == [
        (1, None, deploy_rollout),
        (2, 1, canary_rollout),
        (1, 2, rollback_rollout),
    ]
    assert history[2]["reason"] == f"rollback to version 1: rollout {rollback_rollout} succeeded"
    shown = stack.cli("alias", "history", "mlp", "production")
    assert [line.split()[2:5] for line in shown.stdout.splitlines()] == [
        ["-", "->", "v1"],
        ["v1", "->", "v2"],
        ["v2", "->", "v1"],
    ]
    noted = [e for e in _get(stack, "/v1/events", limit=1000) if e["action"] == "rollout.alias"]
    assert [e["details"] for e in noted] == [{"rollout": canary_rollout, "alias": "challenger", "version": 2}]
    # The reconciler may still have been installing the deploy on the idle pool when the alias was set.
    since = [e for e in _get(stack, "/v1/events", limit=1000) if e["id"] > before_alias]
    upto_alias = next(i for i, e in enumerate(since) if e["action"] == "alias.set") + 1
    followed = stack.cli(
        "events", "--follow", "--after", str(before_alias), "--count", str(upto_alias), "--json"
    )
    assert followed.returncode == 0, followed.stderr
    printed = [json.loads(line) for line in followed.stdout.splitlines()]
    assert [e["id"] for e in printed] == [e["id"] for e in since[:upto_alias]]
    assert (printed[-1]["action"], printed[-1]["target"], printed[-1]["details"]["version"]) == (
        "alias.set",
        "mlp@challenger",
        2,
    )


def test_a_rollout_that_fails_leaves_production_where_it_was(stack: Stack, folders: dict[str, Path]) -> None:
    before = _production_history(stack)
    assert before[-1][0] == 1
    assert stack.cli("alias", "set", "mlp", "broken", "3").returncode == 0

    failed = stack.cli("rollout", "start", "mlp@broken", "--strategy", "bluegreen", "--bake-seconds", "0")
    refused_deploy = stack.cli("deploy", "mlp@broken")

    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert _get(stack, f"/v1/rollouts/{_rollout_ids(stack)[-2]}")["state"] == "failed"
    assert refused_deploy.returncode == 1 and "(deploy_failed)" in refused_deploy.stderr
    assert _production_history(stack) == before
    assert _get(stack, "/v1/models/mlp/aliases/production")["version"] == 1
    assert _serves(stack, folders["v1"])


def test_production_cannot_be_moved_by_hand_and_show_reads_it_as_model_at_alias(stack: Stack) -> None:
    moved = stack.cli("alias", "set", "mlp", "production", "2")
    shown = stack.cli("show", "mlp@production")

    assert moved.returncode == 1 and "(alias_reserved)" in moved.stderr
    assert shown.returncode == 0 and shown.stdout.startswith("mlp version 1: serving")


# -- the registry part on SQLite and PostgreSQL --------------------------------------------------

SIGNATURE = ModelSignature(
    backend="onnxruntime",
    max_batch_size=8,
    inputs=(TensorSpec("INPUT0", "FP32", (16,)),),
    outputs=(TensorSpec("OUTPUT0", "FP32", (4,)),),
)


def _register(db: Database, seed: str) -> int:
    manifest = (
        ManifestEntry("1/model.onnx", 100, (seed * 64)[:64]),
        ManifestEntry("config.pbtxt", 10, "c" * 64),
    )
    with db.transaction() as session:
        version, _created = store.register_version(
            session,
            model=ModelName("m"),
            digest=manifest_digest(manifest),
            manifest=manifest,
            source_version_dir="1",
            signature=SIGNATURE,
            metadata=VersionMetadata(),
        )
    return version.number


def test_aliases_move_and_the_upgrade_points_production_at_the_live_pool_on_both_databases(
    database: Database,
) -> None:
    one, two = _register(database, "1"), _register(database, "2")
    with database.transaction() as session:
        alias_store.set_alias(session, model="m", name="champion", version=one, actor="a")
    with database.transaction() as session:
        alias_store.set_alias(session, model="m", name="champion", version=two, actor="b", reason="won")
        rollout_store.ensure_pools(session, ("blue", "green"))
        store.set_deployment(session, model="m", pool="blue", number=two)
    database.downgrade("0007")
    database.upgrade()
    with database.transaction() as session:
        assert alias_store.list_aliases(session, model="m")[0].name == "production"
        alias_store.set_alias(session, model="m", name="champion", version=one, actor="c")
    with database.transaction() as session:
        champion = alias_store.history(session, model="m", name="champion")
        production = alias_store.get_alias(session, model="m", name="production")
        alias_store.delete_alias(session, model="m", name="champion", actor="d")

    assert [(m.previous, m.version) for m in champion] == [(None, one)]
    assert (production.version, production.actor) == (two, "migration 0008")
