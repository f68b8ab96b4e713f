"""Tuning on a real stack: two tritonservers behind HAProxy, SQLite, the REST API with tokens.

``mlp`` version 1 serves on blue; green, without traffic, holds it as the
warm standby. A tiny sweep runs over the API on green while client threads
send requests through the proxy the whole time. Afterwards the tuned version
is rolled out blue-green like any other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from rollout_load import FIXED_INPUT, Load, rollout_spec
from triton_helpers import load_examples_module

from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.artifacts.archive import pack_directory
from controlplane.domain.auth import Role
from controlplane.domain.models import VersionMetadata
from controlplane.domain.rollouts import RolloutState, Strategy
from controlplane.domain.tuning import tuning_model_name
from controlplane.registry import claim_store, rollout_store, store, token_store
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import Services, local_services
from controlplane.settings import Settings
from controlplane.triton.client import TritonClient

pytestmark = pytest.mark.integration

examples = load_examples_module()
TUNING = tuning_model_name("mlp")
# Version 2, the one tuned, holds batches for half a second: its own configuration (the baseline,
# which competes too) cannot meet the objective, so a swept one wins and a new version is written.
SLOW_DELAY_US = 500_000
SWEEP = {
    "version": 2,
    "p99_ms": 250,
    "delays_us": [200, 2000],
    "preferred_batch_sizes": [0],
    "instance_counts": [1],
    "backend_threads": [2],
    "concurrency": 8,
    "seconds_per_config": 1.5,
}


@dataclass
class Env:
    services: Services
    client: TestClient
    headers: dict[str, str]
    grpc_url: str
    outputs: dict[str, np.ndarray]
    green_urls: list[str]
    admin_headers: dict[str, dict[str, str]]
    control_urls: dict[str, list[str]]

    def claims(self) -> list[str]:
        with self.services.db.transaction() as session:
            return [f"{c.pool}: {c.holder}" for c in claim_store.list_claims(session)]

    def recorded(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        with self.services.db.transaction() as session:
            weights = rollout_store.pool_weights(session)
            return weights, {p: rollout_store.pool_release(session, p) for p in weights}

    def replicas(self, pool: str) -> list[TritonClient]:
        urls = self.control_urls[pool]
        return [TritonClient(url, timeout=5.0, headers=self.admin_headers[pool]) for url in urls]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("tuner")
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(state_dir=root / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port)
    with local_services(settings, pool_names=("blue", "green")) as (stack, services):
        folder = examples.build_mlp(root / "v1", seed=1)
        archive = pack_directory(folder, root / "v1.tar.gz")
        services.registry.push(
            model="mlp", archive=archive, metadata=VersionMetadata(metrics={"accuracy": 0.9}, api_version="1")
        )
        slow = examples.build_mlp(root / "v2", seed=1)
        config = slow / "config.pbtxt"
        batching = "dynamic_batching {\n}"
        assert batching in config.read_text()
        config.write_text(
            config.read_text().replace(
                batching, f"dynamic_batching {{\n  max_queue_delay_microseconds: {SLOW_DELAY_US}\n}}"
            )
        )
        services.registry.push(
            model="mlp",
            archive=pack_directory(slow, root / "v2.tar.gz"),
            metadata=VersionMetadata(metrics={"accuracy": 0.9}, api_version="1"),
        )
        services.deployer.deploy("mlp", 1)
        services.reconciler.run_once()  # green, the standby, takes the release
        with services.db.transaction() as session:
            token, _info = token_store.create_token(
                session, name="ops", role=Role.DEPLOYER, created_by="tests"
            )
        api = ApiServices(
            db=services.db,
            registry=services.registry,
            signing=services.signing,
            health=services.health,
            engine=services.engine,
            deployer=services.deployer,
            tuner=services.tuner,
        )
        app = create_app(api, max_upload_bytes=1 << 20, auth=Authenticator(services.db, required=True))
        outputs = {"v1": examples.reference_outputs(folder, {"INPUT0": FIXED_INPUT})["OUTPUT0"]}
        with TestClient(app) as client:
            yield Env(
                services=services,
                client=client,
                headers={"Authorization": f"Bearer {token}"},
                grpc_url=f"127.0.0.1:{grpc_port}",
                outputs=outputs,
                green_urls=list(stack.pools["green"].grpc_urls),
                admin_headers={name: dict(p.admin_headers) for name, p in stack.pools.items()},
                control_urls={name: list(p.http_urls) for name, p in stack.pools.items()},
            )


def test_a_sweep_on_the_idle_pool_fails_no_client_request_leaves_the_standby_and_writes_a_version(
    env: Env,
) -> None:
    weights_before, releases_before = env.recorded()
    assert weights_before == {"blue": 100, "green": 0}
    assert releases_before == {"blue": {"mlp": 1}, "green": {"mlp": 1}}
    proxy_before = env.services.router.weights()
    seen_during: list[dict[str, Any]] = []

    with Load(env.grpc_url, env.outputs, threads=4) as load:
        started = env.client.post("/v1/models/mlp/tune", json=SWEEP, headers=env.headers)
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        refused_rollout = env.client.post(
            "/v1/rollouts",
            json={"model": "mlp", "version": 1, "strategy": "bluegreen", "steps": [100]},
            headers=env.headers,
        )
        deadline = time.monotonic() + 90
        while True:
            run = env.client.get(location, headers=env.headers).json()
            green = env.replicas("green")
            seen_during.append(
                {
                    "weights": env.services.router.weights(),
                    "standby_ready": all(c.is_model_ready("mlp", 1) for c in green),
                    "blue_models": {s.name for s in env.replicas("blue")[0].repository_index()},
                }
            )
            for c in green:
                c.close()
            if run["state"] != "running" or time.monotonic() > deadline:
                break
            time.sleep(0.5)

    assert run["state"] == "succeeded", run["error"]
    assert load.failures == []
    assert len(load.answers) > 100
    assert {kind for _at, kind in load.answers} == {"v1"}
    # Nothing else could take the idle pool meanwhile.
    assert refused_rollout.status_code == 409, refused_rollout.text
    assert refused_rollout.json()["error"]["details"]["holder"]["kind"] == "tune"
    # The serving pool and the standby, as seen during the run and after it.
    assert all(s["weights"] == proxy_before for s in seen_during)
    assert all(s["standby_ready"] for s in seen_during)
    assert all(TUNING not in s["blue_models"] for s in seen_during)
    assert env.recorded() == (weights_before, releases_before)
    assert env.services.router.weights() == proxy_before
    for pool in ("blue", "green"):
        for replica in env.replicas(pool):
            assert replica.is_model_ready("mlp", 1), pool
            assert TUNING not in replica.ready_anywhere()
            replica.close()
        assert env.services.pools[pool].repository.live_models() == ["mlp"]
    assert env.claims() == []
    # Every configuration was measured, without a failed request.
    assert len(run["trials"]) == 3
    for trial in run["trials"]:
        measured = trial["measurement"]
        assert measured is not None and measured["errors"] == 0 and measured["requests"] > 0, trial
    # The new version: the same model file, the chosen configuration, its provenance.
    baseline = next(t for t in run["trials"] if t["baseline"])
    assert baseline["measurement"]["p99_ms"] > SWEEP["p99_ms"]
    number = run["new_version"]
    assert number == 3 and run["version_created"] is True
    version = env.services.registry.get_version("mlp", number)
    source = env.services.registry.get_version("mlp", 2)
    assert [e.sha256 for e in version.manifest if e.path != "config.pbtxt"] == [
        e.sha256 for e in source.manifest if e.path != "config.pbtxt"
    ]
    labels = version.metadata.labels
    assert labels["tuning.tuned_from"] == "2"
    assert labels["tuning.objective_p99_ms"] == "250"
    assert float(labels["tuning.throughput_rps"]) > 0 and float(labels["tuning.p99_ms"]) > 0
    assert float(labels["tuning.default_throughput_rps"]) > 0
    assert version.metadata.metrics == {"accuracy": 0.9} and version.metadata.api_version == "1"
    with env.services.db.transaction() as session:
        actions = [(e.action, e.outcome) for e in store.list_events(session, limit=10_000)]
    assert ("tune.start", "running") in actions and ("tune.finish", "succeeded") in actions


def test_the_tuned_version_rolls_out_blue_green_under_load_with_its_configuration(env: Env) -> None:
    tuned = env.services.tuner.list()[0]
    assert tuned.best is not None and tuned.new_version is not None
    engine = env.services.engine

    with Load(env.grpc_url, env.outputs, threads=4) as load:
        rollout = engine.start(rollout_spec(tuned.new_version, Strategy.BLUEGREEN, (100,)), actor="test")
        done = engine.wait(rollout.id, 90)

    assert done.state is RolloutState.SUCCEEDED, done.reason
    assert load.failures == []
    # Same weights, so the same answers; now from the tuned version's configuration.
    assert {kind for _at, kind in load.answers} == {"v1"}
    serving = env.services.router.weights()
    live = max(serving, key=lambda p: serving[p])
    assert live == done.target_pool
    replica = env.replicas(live)[0]
    try:
        running = replica.model_config("mlp")
    finally:
        replica.close()
    batching = running.get("dynamic_batching", {})
    assert int(batching.get("max_queue_delay_microseconds", 0)) == tuned.best.config.max_queue_delay_us
    # The stand-in backend runs the session threads the sweep chose, as the native one would.
    assert running["parameters"]["intra_op_thread_count"]["string_value"] == "2"
