"""Every failure of the API answers JSON with a code, and says no more than the caller may see.

Real uvicorn and a real SQLite registry (made unreachable by replacing its
file), no Triton: the routes used here need only the registry.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.domain.limits import MAX_ID

from .api_fixtures import ApiServer, serve_api

pytestmark = pytest.mark.integration


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    with serve_api(tmp_path / "state") as server:
        yield server


def error_of(answer: object) -> dict:
    assert answer.headers["content-type"].startswith("application/json"), answer.text  # type: ignore[attr-defined]
    return answer.json()["error"]  # type: ignore[attr-defined]


def take_database_away(api: ApiServer) -> Path:
    """Make the SQLite file unopenable (a directory in its place); root ignores file modes."""
    path = Path(api.settings.state_dir) / "registry.db"
    api.db.dispose()
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{path}{suffix}").exists():
            os.rename(f"{path}{suffix}", f"{path}{suffix}.away")
    path.mkdir()
    return path


def test_a_database_that_cannot_be_opened_gives_503_database_unavailable_also_at_the_token_lookup(
    api: ApiServer,
) -> None:
    take_database_away(api)
    with api.client(api.admin) as client:
        listed = client.get("/v1/models")
        ready = client.get("/readyz")
    with api.client() as anonymous:
        anonymous_ready = anonymous.get("/readyz")
    assert listed.status_code == 503
    assert error_of(listed)["code"] == "database_unavailable"
    assert str(api.settings.state_dir) not in listed.text
    assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"
    assert anonymous_ready.status_code == 503
    assert anonymous_ready.json() == {
        "status": "unavailable",
        "checks": {"database": "failing", "storage": "ok"},
    }


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/models/mlp/versions/{MAX_ID + 1}",
        f"/v1/models/mlp/versions/{2**63}",
        "/v1/models/mlp/versions/0",
        f"/v1/events?after={2**63}",
        f"/v1/models/mlp/versions/{10**30}/signature",
    ],
)
def test_integers_beyond_what_the_databases_hold_are_refused_with_422(api: ApiServer, path: str) -> None:
    with api.client(api.admin) as client:
        answer = client.get(path)
    assert answer.status_code == 422
    assert error_of(answer)["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models/a%00b"),
        ("GET", "/v1/models/a%00b/versions"),
        ("GET", "/v1/models/a%0Ab/versions/1"),
        ("GET", "/v1/models/a%1Bb/policy"),
        ("POST", "/v1/models/a%00b/versions/1/deploy"),
        ("GET", "/healthz?model=a%00b"),
    ],
)
def test_a_control_character_in_a_model_name_is_refused_with_422_on_every_route(
    api: ApiServer, method: str, path: str
) -> None:
    with api.client(api.admin) as client:
        answer = client.request(method, path)
    assert answer.status_code == 422, answer.text
    assert error_of(answer)["code"] in {"invalid_model_name", "invalid_request"}


def test_an_unexpected_exception_is_a_500_json_without_trace_or_paths(
    api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp_list = "controlplane.services.registry.Registry.list_models"

    def explode(_self: object) -> list:
        raise RuntimeError(f"secret detail in {api.settings.state_dir}")

    monkeypatch.setattr(cp_list, explode)
    with api.client(api.admin) as client:
        answer = client.get("/v1/models")
    assert answer.status_code == 500
    assert error_of(answer)["code"] == "internal_error"
    assert "secret detail" not in answer.text and "Traceback" not in answer.text
    assert str(api.settings.state_dir) not in answer.text


def test_readyz_is_not_ready_below_the_free_space_minimum_and_hides_details_without_a_token(
    api: ApiServer,
) -> None:
    free = shutil.disk_usage(api.settings.state_dir).free
    api.app.state.limits = type(api.app.state.limits)(min_free_bytes=free * 10)
    with api.client() as anonymous, api.client(api.viewer) as viewer:
        hidden = anonymous.get("/readyz")
        shown = viewer.get("/readyz")
    assert hidden.status_code == shown.status_code == 503
    assert hidden.json() == {"status": "unavailable", "checks": {"database": "ok", "storage": "failing"}}
    assert "bytes free" in shown.json()["checks"]["storage"]


def test_healthz_for_a_model_needs_a_token_and_without_one_hides_whether_the_model_exists(
    tmp_path: Path,
) -> None:
    with (
        serve_api(tmp_path / "closed") as closed,
        closed.client() as anonymous,
        closed.client(closed.viewer) as viewer,
    ):
        refused = anonymous.get("/healthz", params={"model": "nope"})
        alive = anonymous.get("/healthz")
        known_to_viewer = viewer.get("/healthz", params={"model": "nope"})
    assert refused.status_code == 401 and error_of(refused)["code"] == "unauthorized"
    assert alive.status_code == 200
    assert known_to_viewer.status_code == 404
    with serve_api(tmp_path / "open", open_reads=True) as opened, opened.client() as anonymous:
        unknown = anonymous.get("/healthz", params={"model": "nope"})
    assert unknown.status_code == 503
    assert unknown.json() == {"status": "unavailable", "model": "nope"}


def test_readyz_masks_a_password_in_a_url_even_for_a_viewer() -> None:
    from controlplane.api.routes_health import masked

    text = "connection to postgresql+psycopg://cp:s3cret@db.internal:5432/registry failed"
    assert masked(text) == "connection to postgresql+psycopg://cp:***@db.internal:5432/registry failed"
