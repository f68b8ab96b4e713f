"""Admission, compatibility and version metadata over the REST API and the CLI, on a real SQLite registry.

Version 1 of ``mlp`` (INPUT0 FP32 [4] -> OUTPUT0 FP32 [2], api_version 1)
serves on blue; the API runs in-process (TestClient) with token auth, and the
CLI's HTTP client is pointed at the same app.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import World, build_world, model_folder
from fastapi.testclient import TestClient
from interface_versions import admitting_engine, push
from typer.testing import CliRunner

from controlplane import cli
from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.artifacts.archive import pack_directory
from controlplane.domain.auth import Role
from controlplane.registry import store, token_store
from controlplane.services.deploys import Deployer
from controlplane.services.health import Health

RENAMED = [("FEATURES", "FP32", (4,))]


@dataclass
class Api:
    world: World
    client: TestClient
    tokens: dict[Role, str]

    def as_(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    world = build_world(tmp_path)
    world.deploy("mlp", push(world, api_version="1", metrics={"accuracy": 0.9}))
    engine = admitting_engine(world)
    services = ApiServices(
        db=world.db,
        registry=world.registry,
        signing=world.signing,
        health=Health(db=world.db, pools={}),
        engine=engine,
        deployer=Deployer(db=world.db, engine=engine, answer_within=60.0),
    )
    tokens: dict[Role, str] = {}
    with world.db.transaction() as session:
        for role in Role:
            tokens[role], _info = token_store.create_token(
                session, name=role.value, role=role, created_by="tests"
            )
    app = create_app(services, max_upload_bytes=1 << 20, auth=Authenticator(world.db, required=True))
    with TestClient(app) as client:
        yield Api(world, client, tokens)
    world.close()


def _events(api: Api, action: str) -> list[Any]:
    with api.world.db.transaction() as session:
        return [e for e in store.list_events(session, limit=1000) if e.action == action]


def test_a_breaking_rollout_answers_409_with_every_difference_in_the_error_body(api: Api) -> None:
    candidate = push(api.world, inputs=RENAMED, outputs=[("OUTPUT0", "FP16", (2,))], api_version="1.1")

    answer = api.client.post(
        "/v1/rollouts",
        json={"model": "mlp", "version": candidate, "strategy": "bluegreen"},
        headers=api.as_(Role.DEPLOYER),
    )

    assert answer.status_code == 409
    error = answer.json()["error"]
    assert error["code"] == "breaking_change"
    assert "'INPUT0' was renamed to 'FEATURES'" in error["message"]
    assert "FP32 -> FP16" in error["message"]
    details = error["details"]
    assert [(d["code"], d["tensor"], d["breaking"]) for d in details["differences"]] == [
        ("input_renamed", "INPUT0", True),
        ("dtype_changed", "OUTPUT0", True),
    ]
    assert details["serving_version"] == 1 and details["candidate_version"] == candidate
    assert details["serving_api_version"] == "1" and details["candidate_api_version"] == "1.1"
    assert api.client.get("/v1/rollouts", headers=api.as_(Role.VIEWER)).json()[0]["strategy"] == "inplace"


def test_a_breaking_deploy_is_refused_unless_allow_breaking_is_asked_with_a_new_major(api: Api) -> None:
    candidate = push(api.world, inputs=RENAMED, api_version="2")
    path = f"/v1/models/mlp/versions/{candidate}/deploy"

    refused = api.client.post(path, headers=api.as_(Role.DEPLOYER))
    served = api.client.post(path, params={"allow_breaking": "true"}, headers=api.as_(Role.DEPLOYER))

    assert refused.status_code == 409 and refused.json()["error"]["code"] == "breaking_change"
    assert served.status_code == 200, served.text
    assert served.json()["version"] == candidate


def test_a_version_shows_its_compatibility_with_the_version_serving_production(api: Api) -> None:
    candidate = push(api.world, inputs=[("INPUT0", "FP32", (-1,))])

    shown = api.client.get(f"/v1/models/mlp/versions/{candidate}", headers=api.as_(Role.VIEWER)).json()
    serving = api.client.get("/v1/models/mlp/versions/1", headers=api.as_(Role.VIEWER)).json()

    assert shown["compatibility"] == {
        "serving_version": 1,
        "compatible": True,
        "differences": [
            {
                "code": "dims_widened",
                "tensor": "INPUT0",
                "detail": "input 'INPUT0' dims [-1, 4] -> [-1, -1]: accepts every size it accepted",
                "breaking": False,
            }
        ],
    }
    assert serving["compatibility"] == {"serving_version": 1, "compatible": True, "differences": []}


def test_a_push_answers_with_the_new_version_compatibility_too(api: Api, tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "source", "mlp", b"other weights")
    archive = pack_directory(folder, tmp_path / "mlp.tar.gz")

    pushed = api.client.post(
        "/v1/models/mlp/versions",
        content=archive.read_bytes(),
        headers={**api.as_(Role.PUBLISHER), "content-type": "application/gzip"},
    )

    assert pushed.status_code == 201, pushed.text
    compatibility = pushed.json()["compatibility"]
    assert compatibility["serving_version"] == 1 and compatibility["compatible"] is True
    assert [d["code"] for d in compatibility["differences"]] == ["backend_changed"]


def test_a_version_of_a_model_nothing_serves_has_null_compatibility(api: Api) -> None:
    api.world.push("other", b"weights")

    shown = api.client.get("/v1/models/other/versions/1", headers=api.as_(Role.VIEWER))

    assert shown.status_code == 200
    assert shown.json()["compatibility"] is None


def test_metrics_and_labels_are_set_and_removed_later_and_the_change_is_audited(api: Api) -> None:
    path = "/v1/models/mlp/versions/1/metadata"
    first = api.client.patch(
        path,
        json={"metrics": {"f1": 0.8, "latency_ms": 3}, "labels": {"team": "search"}},
        headers=api.as_(Role.DEPLOYER),
    )

    second = api.client.patch(
        path, json={"metrics": {"accuracy": 0.93, "latency_ms": None}}, headers=api.as_(Role.ADMIN)
    )

    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    assert second.json()["metadata"] == {
        "labels": {"team": "search"},
        "metrics": {"accuracy": 0.93, "f1": 0.8},
        "api_version": "1",
    }
    stored = api.world.registry.get_version("mlp", 1).metadata
    assert dict(stored.metrics) == {"accuracy": 0.93, "f1": 0.8}
    events = _events(api, "version.metadata")
    assert [(e.actor, e.target, e.outcome) for e in events] == [
        ("deployer", "mlp/1", "changed"),
        ("admin", "mlp/1", "changed"),
    ]
    assert events[1].details["before"]["metrics"] == {"accuracy": 0.9, "f1": 0.8, "latency_ms": 3.0}


@pytest.mark.parametrize("role", [Role.VIEWER, Role.PUBLISHER])
def test_only_a_deployer_or_an_admin_may_change_metadata(api: Api, role: Role) -> None:
    answer = api.client.patch(
        "/v1/models/mlp/versions/1/metadata", json={"metrics": {"accuracy": 1.0}}, headers=api.as_(role)
    )

    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "forbidden"
    assert api.world.registry.get_version("mlp", 1).metadata.metrics == {"accuracy": 0.9}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ('{"api_version": "2"}', "api_version_fixed"),
        ('{"metrics": {"accuracy": NaN}}', "invalid_metric"),
        ('{"metrics": {"accuracy": Infinity}}', "invalid_metric"),
        ('{"metrics": {"top 1": 0.5}}', "invalid_metric"),
        ('{"metrics": {"accuracy": true}}', "invalid_request"),
        ('{"metrics": {"accuracy": "0.9"}}', "invalid_request"),
        ('{"labels": {"team": "a\\u0000b"}}', "invalid_label"),
        ("{}", "empty_metadata_change"),
    ],
)
def test_an_invalid_metadata_change_is_refused_and_changes_nothing(api: Api, body: str, code: str) -> None:
    answer = api.client.patch(
        "/v1/models/mlp/versions/1/metadata",
        content=body,
        headers={**api.as_(Role.DEPLOYER), "content-type": "application/json"},
    )

    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == code
    assert api.world.registry.get_version("mlp", 1).metadata.metrics == {"accuracy": 0.9}


def test_metadata_of_an_unknown_version_is_not_found(api: Api) -> None:
    answer = api.client.patch(
        "/v1/models/mlp/versions/9/metadata", json={"metrics": {"a": 1.0}}, headers=api.as_(Role.DEPLOYER)
    )

    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "version_not_found"


def test_a_metric_set_later_lets_the_metric_gate_judge_a_rollout(api: Api) -> None:
    candidate = push(api.world)
    body = {"model": "mlp", "version": candidate, "strategy": "bluegreen", "gates": {"metric": "accuracy"}}

    missing = api.client.post("/v1/rollouts", json=body, headers=api.as_(Role.DEPLOYER))
    api.client.patch(
        f"/v1/models/mlp/versions/{candidate}/metadata",
        json={"metrics": {"accuracy": 0.91}},
        headers=api.as_(Role.DEPLOYER),
    )
    started = api.client.post("/v1/rollouts", json=body, headers=api.as_(Role.DEPLOYER))

    assert missing.status_code == 422 and missing.json()["error"]["code"] == "metric_missing"
    assert started.status_code == 202, started.text


# -- the CLI, against the same app ------------------------------------------------------


@pytest.fixture
def run_cli(api: Api, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CONTROLPLANE_TOKEN", api.tokens[Role.ADMIN])
    monkeypatch.setattr(cli.httpx, "Client", lambda **_kwargs: _Borrowed(api.client))

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli.app, list(args))

    return run


class _Borrowed(httpx.Client):
    """The test app's client, lent to the CLI without closing it at the end of a command."""

    def __init__(self, client: TestClient) -> None:
        self._client = client

    def __enter__(self) -> TestClient:  # type: ignore[override]
        return self._client

    def __exit__(self, *_exc: object) -> None:
        return None


def test_show_prints_one_line_per_difference_against_production(api: Api, run_cli: Any) -> None:
    candidate = push(api.world, inputs=RENAMED, outputs=[("OUTPUT0", "FP32", (2,)), ("SCORES", "FP32", (1,))])

    result = run_cli("show", "mlp", str(candidate))

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "compatibility with v1 (serving): BREAKING" in lines
    difference_lines = [line for line in lines if line.startswith("  ")]
    assert len(difference_lines) == 2
    assert difference_lines[0].split()[:2] == ["breaking", "input_renamed"]
    assert difference_lines[1].split()[:2] == ["ok", "output_added"]


def test_show_json_prints_the_api_answer(api: Api, run_cli: Any) -> None:
    result = run_cli("show", "mlp", "1", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["compatibility"]["serving_version"] == 1


def test_metrics_set_changes_a_version_metrics_and_labels(api: Api, run_cli: Any) -> None:
    result = run_cli("metrics", "set", "mlp", "1", "accuracy=0.93", "f1=0.5", "--label", "team=search")

    assert result.exit_code == 0, result.output
    assert "accuracy=0.93, f1=0.5" in result.output
    metadata = api.world.registry.get_version("mlp", 1).metadata
    assert dict(metadata.metrics) == {"accuracy": 0.93, "f1": 0.5}
    assert dict(metadata.labels) == {"team": "search"}


@pytest.mark.parametrize("argument", ["accuracy", "accuracy=high", "accuracy=nan"])
def test_metrics_set_refuses_what_is_not_a_finite_number(api: Api, run_cli: Any, argument: str) -> None:
    result = run_cli("metrics", "set", "mlp", "1", argument)

    assert result.exit_code == 1
    assert api.world.registry.get_version("mlp", 1).metadata.metrics == {"accuracy": 0.9}


def test_deploy_allow_breaking_reaches_the_api(api: Api, run_cli: Any) -> None:
    candidate = push(api.world, inputs=RENAMED, api_version="2")

    refused = run_cli("deploy", "mlp", str(candidate))
    deployed = run_cli("deploy", "mlp", str(candidate), "--allow-breaking")

    assert refused.exit_code == 1 and "breaking_change" in refused.output
    assert deployed.exit_code == 0, deployed.output
    assert f"mlp version {candidate} is serving on pool blue" in deployed.output
