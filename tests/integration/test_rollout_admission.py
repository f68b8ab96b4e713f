"""Rollout admission on the embedded stack: real Tritons, HAProxy, SQLite, and the REST API in-process.

mlp v1 (INPUT0 FP32 [16] -> OUTPUT0 FP32 [4]) serves on blue with green as
its warm standby. v2 is the same network whose input is named FEATURES (graph
and config agree, so the push is accepted): clients sending INPUT0 would fail
against it, so a rollout to it is refused before anything moves.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
from fastapi.testclient import TestClient
from triton_helpers import load_examples_module

from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.artifacts.archive import pack_directory
from controlplane.domain.models import VersionMetadata, VersionState
from controlplane.registry import rollout_store, store
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import Services, local_services
from controlplane.settings import Settings

pytestmark = pytest.mark.integration

examples = load_examples_module()


@dataclass
class Running:
    services: Services
    client: TestClient
    renamed: int


def _rename_input(folder: Path, old: str, new: str) -> Path:
    """Rename a graph input of the model folder's ONNX file and its config, consistently."""
    model_path = folder / "1" / "model.onnx"
    model = onnx.load(str(model_path))
    for tensor in model.graph.input:
        if tensor.name == old:
            tensor.name = new
    for node in model.graph.node:
        renamed = [new if name == old else name for name in node.input]
        del node.input[:]
        node.input.extend(renamed)
    onnx.save(model, str(model_path))
    config = folder / "config.pbtxt"
    config.write_text(config.read_text(encoding="utf-8").replace(f'"{old}"', f'"{new}"'), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("admission")
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(state_dir=root / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port)
    with local_services(settings, pool_names=("blue", "green")) as (_stack, services):
        v1 = examples.build_mlp(root / "v1", seed=1)
        v2 = _rename_input(examples.build_mlp(root / "v2", seed=2), "INPUT0", "FEATURES")
        numbers = [
            services.registry.push(
                model="mlp",
                archive=pack_directory(folder, folder.parent / f"{folder.parent.name}.tar.gz"),
                metadata=VersionMetadata(api_version=api_version),
            )[0].number
            for folder, api_version in ((v1, "1"), (v2, "1.1"))
        ]
        services.deployer.deploy("mlp", numbers[0])
        services.reconciler.run_once()
        app = create_app(
            ApiServices(
                db=services.db,
                registry=services.registry,
                signing=services.signing,
                health=services.health,
                engine=services.engine,
                deployer=services.deployer,
            ),
            max_upload_bytes=settings.max_upload_bytes,
            auth=Authenticator(services.db, required=False),
        )
        with TestClient(app) as client:
            yield Running(services, client, renamed=numbers[1])


def _pools(services: Services) -> tuple[dict[str, int], dict[str, dict[str, int]], int]:
    with services.db.transaction() as session:
        weights = rollout_store.pool_weights(session)
        releases = {pool: rollout_store.pool_release(session, pool) for pool in services.pools}
        rollouts = len(rollout_store.list_rollouts(session, limit=1000))
    return weights, releases, rollouts


def test_a_rollout_to_a_version_whose_input_is_renamed_is_refused_with_409_and_nothing_moves(
    running: Running,
) -> None:
    services = running.services
    before = _pools(services)
    proxy_before = services.router.weights()

    answer = running.client.post(
        "/v1/rollouts", json={"model": "mlp", "version": running.renamed, "strategy": "canary"}
    )

    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["code"] == "breaking_change"
    assert "'INPUT0' was renamed to 'FEATURES'" in error["message"]
    assert error["details"]["differences"][0]["code"] == "input_renamed"
    assert _pools(services) == before
    assert services.router.weights() == proxy_before
    for pool in services.pools.values():
        assert not pool.triton.is_model_ready("mlp", running.renamed)
        assert pool.triton.is_model_ready("mlp", 1)
    with services.db.transaction() as session:
        assert store.get_version(session, "mlp", running.renamed).state is VersionState.REGISTERED
        refusals = [e for e in store.list_events(session, limit=1000) if e.action == "rollout.admission"]
    assert [(e.target, e.outcome) for e in refusals] == [(f"mlp/{running.renamed}", "refused")]


def test_the_version_shows_why_it_is_refused(running: Running) -> None:
    shown = running.client.get(f"/v1/models/mlp/versions/{running.renamed}")

    assert shown.status_code == 200
    assert shown.json()["compatibility"]["serving_version"] == 1
    assert shown.json()["compatibility"]["compatible"] is False
