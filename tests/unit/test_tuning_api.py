"""Tuning over the REST API and the CLI (in-process app, fakes, SQLite, token auth)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import World, serving_world
from fastapi.testclient import TestClient
from test_tuning_service import URLS, FakeLoad
from typer.testing import CliRunner

from controlplane import cli
from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.claims import PoolClaims
from controlplane.domain.auth import Role
from controlplane.domain.claims import Holder, HolderKind
from controlplane.registry import token_store
from controlplane.services.health import Health
from controlplane.tuning.tuner import Tuner

SWEEP = {"p99_ms": 6, "delays_us": [0, 500, 2000], "instance_counts": [1, 2], "seconds_per_config": 1}


@dataclass
class Api:
    world: World
    tuner: Tuner
    client: TestClient
    tokens: dict[str, str]

    def as_(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def follow(self, location: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.client.get(location, headers=self.as_("viewer")).json()
            if run["state"] != "running" or time.monotonic() > deadline:
                return dict(run)
            time.sleep(0.05)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    world = serving_world(tmp_path)
    tuner = Tuner(
        db=world.db,
        pools=world.pools,
        endpoints={name: [url] for name, url in URLS.items()},
        claims=world.repair.claims,
        blobs=world.blobs,
        registry=world.registry,
        work_dir=world.root / "uploads",
        load_timeout=5.0,
        measure=FakeLoad(world),
    )
    services = ApiServices(
        db=world.db,
        registry=world.registry,
        signing=world.signing,
        health=Health(db=world.db, pools={}),
        tuner=tuner,
    )
    tokens: dict[str, str] = {}
    with world.db.transaction() as session:
        for role in Role:
            tokens[role.value], _info = token_store.create_token(
                session, name=role.value, role=role, created_by="tests"
            )
    app = create_app(services, max_upload_bytes=1 << 20, auth=Authenticator(world.db, required=True))
    with TestClient(app) as client:
        yield Api(world, tuner, client, tokens)
    tuner.stop()
    world.close()


def test_a_tuning_run_answers_202_at_once_and_its_location_shows_results_and_the_new_version(
    api: Api,
) -> None:
    answer = api.client.post("/v1/models/mlp/tune", json=SWEEP, headers=api.as_("deployer"))

    assert answer.status_code == 202, answer.text
    started = answer.json()
    assert answer.headers["Location"] == f"/v1/tunings/{started['id']}"
    assert started["state"] == "running"
    assert started["pool"] == "green" and started["tuning_model"] == "mlp~tune"
    done = api.follow(answer.headers["Location"])
    assert done["state"] == "succeeded", done["error"]
    assert len(done["trials"]) == 7 and done["trials"][0]["baseline"] is True
    assert done["best"]["config"] == {
        "max_queue_delay_us": 500,
        "preferred_batch_sizes": [],
        "instance_count": 2,
    }
    assert done["new_version"] == 3 and done["version_created"] is True
    listed = api.client.get("/v1/tunings", headers=api.as_("viewer")).json()
    assert [r["id"] for r in listed] == [started["id"]]
    version = api.client.get("/v1/models/mlp/versions/3", headers=api.as_("viewer")).json()
    assert version["metadata"]["labels"]["tuning.tuned_from"] == "1"


@pytest.mark.parametrize(
    "body",
    [
        {"p99_ms": 0},
        {"p99_ms": 5, "seconds_per_config": 100_000},
        {"p99_ms": 5, "concurrency": 10_000},
        {"p99_ms": 5, "instance_counts": [1, 99]},
        {"p99_ms": 5, "delays_us": []},
        {"p99_ms": 5, "delays_us": list(range(0, 1600, 100)), "preferred_batch_sizes": [0, 2, 4, 8]},
        {"p99_ms": 5, "preferred_batch_sizes": [64]},
        {"p99_ms": 5, "backend_threads": [1, 65]},
        {"p99_ms": 5, "backend_threads": [-1]},
        {"p99_ms": 5, "surprise": True},
    ],
)
def test_absurd_requests_are_refused_with_422_and_start_nothing(api: Api, body: dict[str, Any]) -> None:
    answer = api.client.post("/v1/models/mlp/tune", json=body, headers=api.as_("deployer"))

    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] in {"invalid_request", "invalid_tuning_request"}
    assert api.tuner.list() == []


def test_a_held_idle_pool_is_409_pool_busy_naming_the_holder(api: Api) -> None:
    other = PoolClaims(api.world.db)
    holder = Holder(HolderKind.ROLLOUT, "77")
    with api.world.db.transaction() as session:
        other.take(session, ["green"], holder)
    try:
        answer = api.client.post("/v1/models/mlp/tune", json=SWEEP, headers=api.as_("deployer"))
    finally:
        other.end(holder)
        other.close()

    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["code"] == "pool_busy"
    assert error["details"]["holder"]["kind"] == "rollout"


def test_tuning_needs_the_deployer_role_and_unknown_things_are_404(api: Api) -> None:
    publisher = api.client.post("/v1/models/mlp/tune", json=SWEEP, headers=api.as_("publisher"))
    unknown_model = api.client.post("/v1/models/nope/tune", json=SWEEP, headers=api.as_("deployer"))
    unknown_version = api.client.post(
        "/v1/models/mlp/tune", json={**SWEEP, "version": 9}, headers=api.as_("deployer")
    )
    unknown_run = api.client.get("/v1/tunings/abc123", headers=api.as_("viewer"))

    assert publisher.status_code == 403
    assert unknown_model.status_code == 404
    assert unknown_version.status_code == 404
    assert unknown_run.status_code == 404 and unknown_run.json()["error"]["code"] == "tuning_not_found"
    assert api.tuner.list() == []


# -- the CLI ---------------------------------------------------------------------------------


class _Borrowed(httpx.Client):
    """The test app's client, lent to the CLI without closing it at the end of a command."""

    def __init__(self, client: TestClient) -> None:
        self._client = client

    def __enter__(self) -> TestClient:  # type: ignore[override]
        return self._client

    def __exit__(self, *_exc: object) -> None:
        return None


@pytest.fixture
def run_cli(api: Api, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setattr(cli.httpx, "Client", lambda **_kwargs: _Borrowed(api.client))
    monkeypatch.setattr(time, "sleep", lambda _s: None)

    def run(*args: str) -> Any:
        monkeypatch.setenv("CONTROLPLANE_TOKEN", api.tokens["deployer"])
        return CliRunner().invoke(cli.app, list(args))

    return run


def test_the_cli_follows_the_run_and_prints_the_table_the_chart_and_the_new_version(
    run_cli: Callable[..., Any],
) -> None:
    result = run_cli(
        "tune", "mlp", "--p99-ms", "6", "--delays", "0,500,2000", "--instances", "1,2", "--seconds", "1"
    )

    assert result.exit_code == 0, result.output
    out = result.output
    assert "tuning mlp v1 on pool green" in out
    assert "#0 no dynamic batching, preferred -, 1 instance: 1000.0 req/s" in out
    assert "req/s x" in out and "BEST" in out
    assert "objective p99 <= 6 ms" in out
    assert "best: #5 delay 500 us, preferred -, 2 instances: throughput 2.05x" in out
    assert "wrote mlp version 3 (tuned from v1)" in out


def test_the_cli_exits_1_naming_the_reason_when_no_configuration_meets_the_objective(
    run_cli: Callable[..., Any],
) -> None:
    result = run_cli("tune", "mlp", "--p99-ms", "0.5", "--delays", "0", "--instances", "1", "--seconds", "1")

    assert result.exit_code == 1
    assert "no configuration met the objective p99 <= 0.5 ms" in result.output
    assert "(objective_not_met)" in result.output


def test_the_cli_refuses_a_list_that_is_not_numbers(run_cli: Callable[..., Any]) -> None:
    result = run_cli("tune", "mlp", "--p99-ms", "5", "--delays", "0,soon")

    assert result.exit_code == 1
    assert "--delays takes comma-separated whole numbers" in result.output
