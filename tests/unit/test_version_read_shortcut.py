"""The version read answered before FastAPI's routing: same answer as the route, only when safe.

Version 1 of ``mlp`` serves on blue; the API runs in-process (TestClient)
with token auth. A spy on the app behind the shortcut shows which requests
went on to FastAPI's routing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fakes import World, build_world
from fastapi.testclient import TestClient
from interface_versions import push
from starlette.types import Receive, Scope, Send

from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.api.read_shortcut import VersionReadShortcut
from controlplane.domain.auth import Role
from controlplane.registry import token_store
from controlplane.services.health import Health

VERSION_1 = "/v1/models/mlp/versions/1"


@dataclass
class Api:
    world: World
    client: TestClient
    tokens: dict[Role, str]
    routed: list[str] = field(default_factory=list)

    def as_(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def get(self, path: str, role: Role = Role.VIEWER):  # type: ignore[no-untyped-def]
        return self.client.get(path, headers=self.as_(role))


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    world = build_world(tmp_path)
    world.deploy("mlp", push(world, api_version="1"))
    tokens: dict[Role, str] = {}
    with world.db.transaction() as session:
        for role in Role:
            tokens[role], _info = token_store.create_token(
                session, name=role.value, role=role, created_by="t"
            )
    routed: list[str] = []
    original_init = VersionReadShortcut.__init__

    def spying_init(self: VersionReadShortcut, app, **kwargs) -> None:  # type: ignore[no-untyped-def]
        async def spy(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                routed.append(scope["path"])
            await app(scope, receive, send)

        original_init(self, spy, **kwargs)

    monkeypatch.setattr(VersionReadShortcut, "__init__", spying_init)
    services = ApiServices(
        db=world.db, registry=world.registry, signing=world.signing, health=Health(db=world.db, pools={})
    )
    app = create_app(services, max_upload_bytes=1 << 20, auth=Authenticator(world.db, required=True))
    with TestClient(app) as client:
        yield Api(world, client, tokens, routed)
    world.close()


def test_a_version_read_again_is_answered_before_routing_with_the_same_status_headers_and_bytes(
    api: Api,
) -> None:
    first = api.get(VERSION_1)
    second = api.get(VERSION_1)

    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"] == "application/json"
    assert second.headers["content-length"] == first.headers["content-length"]
    assert second.headers["x-request-id"] != first.headers["x-request-id"]  # the guard still wraps it
    assert api.routed == [VERSION_1]


def test_after_a_commit_the_read_goes_to_the_route_and_shows_the_change(api: Api) -> None:
    api.get(VERSION_1)
    changed = api.client.patch(
        f"{VERSION_1}/metadata", json={"labels": {"team": "search"}}, headers=api.as_(Role.DEPLOYER)
    )
    assert changed.status_code == 200, changed.text

    after = api.get(VERSION_1)

    assert after.json()["metadata"]["labels"] == {"team": "search"}
    assert api.routed.count(VERSION_1) == 2


def test_a_caller_without_a_valid_token_never_gets_the_kept_answer(api: Api) -> None:
    api.get(VERSION_1)

    anonymous = api.client.get(VERSION_1)
    wrong = api.client.get(VERSION_1, headers={"Authorization": "Bearer cp_not-a-token"})

    assert anonymous.status_code == wrong.status_code == 401
    assert "versions" not in anonymous.text and "versions" not in wrong.text


@pytest.mark.parametrize(
    "path", [f"{VERSION_1}?x=1", "/v1/models/mlp/versions/01", "/v1/models/mlp/versions/1/"]
)
def test_a_read_the_shortcut_does_not_recognise_exactly_goes_to_the_route(api: Api, path: str) -> None:
    api.get(VERSION_1)
    api.routed.clear()

    api.get(path)

    assert api.routed == [path.split("?")[0]]


def test_an_unknown_version_and_an_invalid_model_name_get_the_routes_errors(api: Api) -> None:
    unknown = api.get("/v1/models/mlp/versions/99")
    invalid = api.get("/v1/models/no%20such%20model/versions/1")

    assert unknown.status_code == 404 and unknown.json()["error"]["code"]
    assert invalid.status_code == 422 and invalid.json()["error"]["code"]
