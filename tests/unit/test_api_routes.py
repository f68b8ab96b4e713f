"""The API's surface: every route keeps its method, path, tag and success status across refactors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.errors import DeployPending

# (method, path) -> (OpenAPI tag, success status)
ROUTES = {
    ("POST", "/v1/rollouts"): ("rollouts", "202"),
    ("GET", "/v1/rollouts"): ("rollouts", "200"),
    ("GET", "/v1/rollouts/{rollout_id}"): ("rollouts", "200"),
    ("POST", "/v1/rollouts/{rollout_id}/abort"): ("rollouts", "202"),
    ("POST", "/v1/rollouts/{rollout_id}/promote"): ("rollouts", "202"),
    ("POST", "/v1/rollouts/{rollout_id}/approve"): ("rollouts", "202"),
    ("POST", "/v1/rollouts/{rollout_id}/reject"): ("rollouts", "200"),
    ("POST", "/v1/models/{model}/rollback"): ("rollouts", "202"),
    ("GET", "/v1/models"): ("registry", "200"),
    ("GET", "/v1/models/{model}"): ("registry", "200"),
    ("GET", "/v1/models/{model}/versions"): ("registry", "200"),
    ("POST", "/v1/models/{model}/versions"): ("registry", "201"),
    ("GET", "/v1/models/{model}/versions/{version}"): ("registry", "200"),
    ("PATCH", "/v1/models/{model}/versions/{version}/metadata"): ("registry", "200"),
    ("POST", "/v1/models/{model}/versions/{version}/deploy"): ("deploy", "200"),
    ("PUT", "/v1/models/{model}/versions/{version}/signature"): ("signatures", "200"),
    ("GET", "/v1/models/{model}/versions/{version}/signature"): ("signatures", "200"),
    ("GET", "/v1/models/{model}/policy"): ("signatures", "200"),
    ("PUT", "/v1/models/{model}/policy"): ("signatures", "200"),
    ("GET", "/v1/events"): ("audit", "200"),
    ("GET", "/v1/events/stream"): ("audit", "200"),
    ("GET", "/v1/pools"): ("pools", "200"),
    ("GET", "/v1/whoami"): ("auth", "200"),
    ("POST", "/v1/pools/{pool}/recycle"): ("pools", "200"),
    ("GET", "/healthz"): ("health", "200"),
    ("GET", "/readyz"): ("health", "200"),
    ("GET", "/metrics"): ("health", "200"),
}


def _openapi(*, with_engine: bool) -> dict[str, Any]:
    # Building the app touches neither the database nor the engine: stand-ins are enough.
    stand_in: Any = SimpleNamespace(uploads_dir=Path("/nonexistent/uploads"))
    engine: Any = stand_in if with_engine else None
    services = ApiServices(
        db=stand_in,
        registry=stand_in,
        signing=stand_in,
        health=stand_in,
        engine=engine,
        deployer=engine,
        recycler=engine,
    )
    return create_app(services, max_upload_bytes=1 << 20).openapi()


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m.upper(), path): op for path, ops in spec["paths"].items() for m, op in ops.items()}


def test_the_api_serves_exactly_the_known_routes_with_their_tags_and_success_statuses() -> None:
    operations = _operations(_openapi(with_engine=True))
    assert set(operations) == set(ROUTES)
    for key, (tag, status) in ROUTES.items():
        assert operations[key]["tags"] == [tag], key
        assert status in operations[key]["responses"], key


def test_without_a_rollout_engine_the_rollout_deploy_and_pool_routes_are_missing() -> None:
    operations = _operations(_openapi(with_engine=False))
    assert set(operations) == {
        key for key, (tag, _) in ROUTES.items() if tag not in {"rollouts", "deploy", "pools"}
    }


@pytest.mark.parametrize(
    ("key", "schema"),
    [
        (("GET", "/v1/models"), "ModelOut"),
        (("POST", "/v1/models/{model}/versions"), "PushOut"),
        (("POST", "/v1/models/{model}/versions/{version}/deploy"), "DeploymentOut"),
        (("PUT", "/v1/models/{model}/policy"), "PolicyOut"),
        (("GET", "/readyz"), "HealthOut"),
    ],
)
def test_routes_keep_their_response_models(key: tuple[str, str], schema: str) -> None:
    operation = _operations(_openapi(with_engine=True))[key]
    status = ROUTES[key][1]
    assert f"#/components/schemas/{schema}" in str(operation["responses"][status])


def test_a_deploy_still_running_when_the_request_has_waited_answers_202_pointing_to_its_rollout() -> None:
    def deploy(*_args: object, **_kwargs: object) -> None:
        raise DeployPending(
            "the deploy of mlp version 2 is not done after 270 s; it goes on as rollout 7",
            details={"rollout": 7, "state": "staging"},
        )

    stand_in: Any = SimpleNamespace(uploads_dir=Path("/nonexistent/uploads"), deploy=deploy)
    services = ApiServices(
        db=stand_in, registry=stand_in, signing=stand_in, health=stand_in, engine=stand_in, deployer=stand_in
    )
    app = create_app(services, max_upload_bytes=1 << 20, auth=Authenticator(stand_in, required=False))

    with TestClient(app) as client:
        answer = client.post("/v1/models/mlp/versions/2/deploy")

    assert answer.status_code == 202
    assert answer.headers["location"] == "/v1/rollouts/7"
    assert answer.json() == {
        "status": "pending",
        "message": "the deploy of mlp version 2 is not done after 270 s; it goes on as rollout 7",
        "rollout": 7,
        "state": "staging",
    }
