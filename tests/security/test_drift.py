"""Drift: what a Triton serves differs from the registry, and the reconciler puts it back.

Each test plants one kind of drift on a real pool the way someone holding
Triton's admin key (or write access to a pool folder) would, runs one
reconciler pass, and asserts the repair, the audit event and the metric,
while clients of the proxy keep getting version 1's answers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from triton_helpers import load_examples_module, wait_until

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.models import VersionMetadata
from controlplane.metrics import REGISTRY
from controlplane.registry import rollout_store, store
from controlplane.runtime.local import LocalStack
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import Services, local_services
from controlplane.settings import Settings

pytestmark = pytest.mark.integration

examples = load_examples_module()
INPUT = np.full((1, 16), 0.25, dtype=np.float32)


class AdminClient:
    """tritonclient's gRPC client that sends the pool's admin key on every call."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self._client = grpcclient.InferenceServerClient(url)
        self._headers = headers

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        method = getattr(self._client, name)
        if name == "close":
            return method
        return lambda *args, **kw: method(*args, headers=self._headers, **kw)


@dataclass
class Env:
    services: Services
    stack: LocalStack
    root: Path
    proxy_url: str
    v1_output: np.ndarray

    def admin(self, pool: str) -> AdminClient:
        """A raw Triton client on the pool's own port, as an insider with the admin key would hold."""
        return AdminClient(self.stack.pools[pool].grpc_url, self.stack.pools[pool].admin_headers)

    def infer_through_proxy(self) -> np.ndarray:
        client = grpcclient.InferenceServerClient(self.proxy_url)
        try:
            tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
            tensor.set_data_from_numpy(INPUT)
            return client.infer("mlp", [tensor]).as_numpy("OUTPUT0")
        finally:
            client.close()

    def drift_events(self, after: int) -> list:
        with self.services.db.transaction() as session:
            events = store.list_events(session, after_id=after, limit=1000)
        return [e for e in events if e.action == "drift.repair"]

    def last_event_id(self) -> int:
        with self.services.db.transaction() as session:
            events = store.list_events(session, limit=100_000)
        return events[-1].id if events else 0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("drift")
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(state_dir=root / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port)
    with local_services(settings, pool_names=("blue", "green")) as (stack, services):
        v1 = examples.build_mlp(root / "v1", seed=1)
        archive = pack_directory(v1, root / "v1.tar.gz")
        services.registry.push(model="mlp", archive=archive, metadata=VersionMetadata())
        services.deployer.deploy("mlp", 1)
        reference = examples.reference_outputs(v1, {"INPUT0": INPUT})["OUTPUT0"]
        yield Env(services, stack, root, f"127.0.0.1:{grpc_port}", reference)


def _drift_count(pool: str, kind: str) -> float:
    value = REGISTRY.get_sample_value("controlplane_drift_repairs_total", {"pool": pool, "kind": kind})
    return value or 0.0


def test_the_standby_pool_gets_the_production_release_loaded(env: Env) -> None:
    changes = env.services.reconciler.run_once()

    assert any("standby green follows blue" in c for c in changes), changes
    green = env.stack.pools["green"]
    assert env.services.pools["green"].triton.is_model_ready("mlp", 1)
    assert (green.repository.live / "mlp" / "1" / "model.onnx").is_file()
    with env.services.db.transaction() as session:
        assert rollout_store.pool_weights(session) == {"blue": 100, "green": 0}
        assert rollout_store.pool_release(session, "green") == {"mlp": 1}
    assert env.services.router.weights() == {"blue": 100, "green": 0}


def test_a_configuration_override_loaded_into_triton_is_replaced_by_the_staged_one(env: Env) -> None:
    before, counted = env.last_event_id(), _drift_count("blue", "config")
    override = {
        "name": "mlp",
        "backend": "onnxruntime",
        "max_batch_size": 2,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
    }
    admin = env.admin("blue")
    admin.load_model("mlp", config=json.dumps(override))
    assert admin.get_model_config("mlp", as_json=True)["config"]["max_batch_size"] == 2

    changes = env.services.reconciler.run_once()

    assert any("repaired mlp version 1 on blue (config" in c for c in changes), changes
    assert admin.get_model_config("mlp", as_json=True)["config"]["max_batch_size"] == 64
    events = env.drift_events(before)
    assert [(e.target, e.outcome) for e in events] == [("blue/mlp", "config")]
    assert "max_batch_size" in events[0].details["detail"]
    assert _drift_count("blue", "config") == counted + 1
    np.testing.assert_allclose(env.infer_through_proxy(), env.v1_output, rtol=1e-5)
    admin.close()


def test_a_model_loaded_behind_the_registrys_back_is_unloaded_and_its_folder_removed(env: Env) -> None:
    before = env.last_event_id()
    repository = env.stack.pools["blue"].repository.live
    examples.build_two_inputs(repository)
    admin = env.admin("blue")
    admin.load_model("two_inputs")
    assert admin.is_model_ready("two_inputs")

    changes = env.services.reconciler.run_once()

    assert "removed two_inputs from blue" in changes and "unloaded two_inputs from blue" in changes, changes
    assert not (repository / "two_inputs").exists()
    wait_until(lambda: not admin.is_model_ready("two_inputs"), timeout=10, what="two_inputs unloaded")
    kinds = {(e.target, e.outcome) for e in env.drift_events(before)}
    assert kinds == {("blue/two_inputs", "unexpected_folder"), ("blue/two_inputs", "unexpected_model")}
    admin.close()


def test_a_file_planted_in_a_model_folder_is_removed_by_restaging(env: Env) -> None:
    before = env.last_event_id()
    folder = env.stack.pools["blue"].repository.live / "mlp"
    (folder / "1" / "model.py").write_text("import os\nos.system('id')\n")

    changes = env.services.reconciler.run_once()

    assert any("(files: 1/model.py is not a staged file)" in c for c in changes), changes
    assert not (folder / "1" / "model.py").exists()
    assert [(e.target, e.outcome) for e in env.drift_events(before)] == [("blue/mlp", "files")]
    np.testing.assert_allclose(env.infer_through_proxy(), env.v1_output, rtol=1e-5)


def test_a_model_file_replaced_by_other_bytes_is_restaged_from_the_artifact_store(env: Env) -> None:
    before = env.last_event_id()
    folder = env.stack.pools["blue"].repository.live / "mlp"
    other = examples.build_mlp(env.root / "impostor", seed=99)
    target = folder / "1" / "model.onnx"
    target.unlink()  # a hard link to the read-only blob: replace the name, never the blob's bytes
    shutil.copyfile(other / "1" / "model.onnx", target)

    changes = env.services.reconciler.run_once()

    assert any("1/model.onnx is not the staged blob" in c for c in changes), changes
    assert [(e.target, e.outcome) for e in env.drift_events(before)] == [("blue/mlp", "files")]
    np.testing.assert_allclose(env.infer_through_proxy(), env.v1_output, rtol=1e-5)


def test_a_model_unloaded_behind_the_registrys_back_is_loaded_again(env: Env) -> None:
    before = env.last_event_id()
    admin = env.admin("green")
    admin.unload_model("mlp")
    wait_until(lambda: not admin.is_model_ready("mlp"), timeout=10, what="mlp unloaded on green")

    changes = env.services.reconciler.run_once()

    assert any("repaired mlp version 1 on green (not_loaded" in c for c in changes), changes
    assert admin.is_model_ready("mlp", "1")
    assert [(e.target, e.outcome) for e in env.drift_events(before)] == [("green/mlp", "not_loaded")]
    admin.close()


def test_a_pool_that_matches_its_release_records_no_drift(env: Env) -> None:
    before = env.last_event_id()

    assert env.services.reconciler.run_once() == []
    assert env.drift_events(before) == []
