"""The API's surface: every route keeps its method, path, tag and success status across refactors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from controlplane.api.app import create_app

# (method, path) -> (OpenAPI tag, success status)
ROUTES = {
    ("POST", "/v1/rollouts"): ("rollouts", "202"),
    ("GET", "/v1/rollouts"): ("rollouts", "200"),
    ("GET", "/v1/rollouts/{rollout_id}"): ("rollouts", "200"),
    ("POST", "/v1/rollouts/{rollout_id}/abort"): ("rollouts", "202"),
    ("POST", "/v1/rollouts/{rollout_id}/promote"): ("rollouts", "202"),
    ("POST", "/v1/models/{model}/rollback"): ("rollouts", "202"),
    ("GET", "/v1/models"): ("registry", "200"),
    ("GET", "/v1/models/{model}"): ("registry", "200"),
    ("GET", "/v1/models/{model}/versions"): ("registry", "200"),
    ("POST", "/v1/models/{model}/versions"): ("registry", "201"),
    ("GET", "/v1/models/{model}/versions/{version}"): ("registry", "200"),
    ("POST", "/v1/models/{model}/versions/{version}/deploy"): ("deploy", "200"),
    ("PUT", "/v1/models/{model}/versions/{version}/signature"): ("signatures", "200"),
    ("GET", "/v1/models/{model}/versions/{version}/signature"): ("signatures", "200"),
    ("GET", "/v1/models/{model}/policy"): ("signatures", "200"),
    ("PUT", "/v1/models/{model}/policy"): ("signatures", "200"),
    ("GET", "/v1/events"): ("audit", "200"),
    ("GET", "/healthz"): ("health", "200"),
    ("GET", "/readyz"): ("health", "200"),
    ("GET", "/metrics"): ("health", "200"),
}


def _openapi(*, with_engine: bool) -> dict[str, Any]:
    # Building the app touches neither the database nor the engine: stand-ins are enough.
    cp: Any = SimpleNamespace(db=None, uploads_dir=Path("/nonexistent/uploads"))
    engine: Any = SimpleNamespace() if with_engine else None
    return create_app(cp, max_upload_bytes=1 << 20, engine=engine).openapi()


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m.upper(), path): op for path, ops in spec["paths"].items() for m, op in ops.items()}


def test_the_api_serves_exactly_the_known_routes_with_their_tags_and_success_statuses() -> None:
    operations = _operations(_openapi(with_engine=True))
    assert set(operations) == set(ROUTES)
    for key, (tag, status) in ROUTES.items():
        assert operations[key]["tags"] == [tag], key
        assert status in operations[key]["responses"], key


def test_without_a_rollout_engine_only_the_rollout_routes_are_missing() -> None:
    operations = _operations(_openapi(with_engine=False))
    assert set(operations) == {key for key, (tag, _) in ROUTES.items() if tag != "rollouts"}


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
