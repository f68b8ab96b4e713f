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
from controlplane.domain.auth import ROLE_PERMISSIONS, Role
from controlplane.domain.version_metadata import MetadataChange
from controlplane.registry import token_store
from controlplane.registry.db import Database
from controlplane.registry.store import CommitWatch
from controlplane.services.health import Health
from controlplane.services.version_metadata import change_metadata

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


def _elsewhere(api: Api) -> Database:
    """The registry as another process (the CLI) opens it: an engine and connections of its own."""
    return Database(api.world.db.url)


def test_a_token_revoked_by_another_process_is_refused_at_the_very_next_read(api: Api) -> None:
    assert api.get(VERSION_1).status_code == 200
    other = _elsewhere(api)
    try:
        with other.transaction() as session:
            token_store.revoke_token(session, name=Role.VIEWER.value, revoked_by="cli")
    finally:
        other.dispose()

    after = api.get(VERSION_1)

    assert after.status_code == 401
    assert "versions" not in after.text


def test_a_token_revoked_in_this_process_is_refused_at_the_very_next_read(api: Api) -> None:
    assert api.get(VERSION_1).status_code == 200
    with api.world.db.transaction() as session:
        token_store.revoke_token(session, name=Role.VIEWER.value, revoked_by="admin")

    assert api.get(VERSION_1).status_code == 401


def test_a_role_that_may_not_read_never_gets_the_kept_answer(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert api.get(VERSION_1).status_code == 200
    monkeypatch.setitem(ROLE_PERMISSIONS, Role.VIEWER, frozenset())

    refused = api.get(VERSION_1)

    assert refused.status_code == 403
    assert api.routed == [VERSION_1, VERSION_1]


def test_a_commit_by_another_process_shows_in_the_very_next_read(api: Api) -> None:
    api.get(VERSION_1)
    other = _elsewhere(api)
    try:
        change_metadata(
            other,
            model="mlp",
            number=1,
            change=MetadataChange(metrics={}, labels={"team": "search"}),
            actor="cli",
        )
    finally:
        other.dispose()

    after = api.get(VERSION_1)

    assert after.json()["metadata"]["labels"] == {"team": "search"}
    assert api.routed == [VERSION_1, VERSION_1]


def test_a_read_with_a_body_goes_to_the_route_which_reads_it_under_the_guards_limits(api: Api) -> None:
    api.get(VERSION_1)

    with_body = api.client.request("GET", VERSION_1, headers=api.as_(Role.VIEWER), content=b"{}")

    assert with_body.status_code == 200
    assert api.routed == [VERSION_1, VERSION_1]


def test_the_kept_answer_echoes_the_clients_request_id_or_makes_one(api: Api) -> None:
    api.get(VERSION_1)

    echoed = api.client.get(VERSION_1, headers={**api.as_(Role.VIEWER), "X-Request-ID": "ci-run-7"})
    refused_id = api.client.get(VERSION_1, headers={**api.as_(Role.VIEWER), "X-Request-ID": "no spaces"})

    assert echoed.headers["x-request-id"] == "ci-run-7"
    assert refused_id.headers["x-request-id"] not in ("", "no spaces")
    assert api.routed == [VERSION_1]


def test_a_kept_read_takes_one_commit_mark_for_the_token_and_the_answer(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.get(VERSION_1)
    marks: list[int | None] = []
    mark = CommitWatch.mark

    def counted(watch: CommitWatch) -> int | None:
        marks.append(mark(watch))
        return marks[-1]

    monkeypatch.setattr(CommitWatch, "mark", counted)

    assert api.get(VERSION_1).status_code == 200
    assert len(marks) == 1
    assert api.routed == [VERSION_1]


def test_without_commit_marks_every_read_goes_to_the_route_with_the_same_answer(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: no mark tells that nothing changed, so nothing is answered from what was kept."""
    monkeypatch.setattr(CommitWatch, "mark", lambda _watch: None)

    first = api.get(VERSION_1)
    second = api.get(VERSION_1)

    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert api.routed == [VERSION_1, VERSION_1]
