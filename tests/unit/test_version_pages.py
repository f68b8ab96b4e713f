"""Pages of a model's versions: GET /v1/models/{m}/versions, the registry under it, the CLI paging through.

``mlp`` gets a pushed version 1 and copies of it registered through the
store (own digest, same manifest), as many as a test needs; the API runs
in-process (TestClient) with token auth on a real SQLite registry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fakes import World, build_world
from fastapi.testclient import TestClient
from sqlalchemy import event
from typer.testing import CliRunner

from controlplane import cli
from controlplane.api import schemas
from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.domain.auth import Role
from controlplane.domain.models import ModelName, VersionMetadata
from controlplane.errors import NotFound
from controlplane.registry import store, token_store
from controlplane.services.health import Health

VERSIONS = "/v1/models/mlp/versions"


@dataclass
class Api:
    world: World
    client: TestClient
    headers: dict[str, str]

    def page(self, **params: object) -> httpx.Response:
        return self.client.get(VERSIONS, params=params, headers=self.headers)

    def numbers(self, **params: object) -> list[int]:
        answer = self.page(**params)
        assert answer.status_code == 200, answer.text
        return [v["version"] for v in answer.json()]


def add_versions(world: World, up_to: int) -> None:
    """Register versions of ``mlp`` up to number ``up_to``: copies of version 1 with digests of their own."""
    with world.db.transaction() as session:
        first = store.get_version(session, "mlp", 1)
        for n in range(len(store.list_versions(session, "mlp")) + 1, up_to + 1):
            store.register_version(
                session,
                model=ModelName("mlp"),
                digest=hashlib.sha256(f"{first.digest}/{n}".encode()).hexdigest(),
                manifest=first.manifest,
                source_version_dir=first.source_version_dir,
                signature=first.signature,
                metadata=VersionMetadata(labels={"build": str(n)}),
            )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    world = build_world(tmp_path)
    world.push("mlp", b"weights of version 1")
    services = ApiServices(
        db=world.db, registry=world.registry, signing=world.signing, health=Health(db=world.db, pools={})
    )
    with world.db.transaction() as session:
        secret, _info = token_store.create_token(session, name="viewer", role=Role.VIEWER, created_by="tests")
    app = create_app(services, max_upload_bytes=1 << 20, auth=Authenticator(world.db, required=True))
    with TestClient(app) as client:
        yield Api(world, client, {"Authorization": f"Bearer {secret}"})
    world.close()


def test_the_list_is_the_oldest_100_versions_by_default_as_a_json_list(api: Api) -> None:
    add_versions(api.world, 150)

    answer = api.page()

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert [v["version"] for v in answer.json()] == list(range(1, 101))


def test_order_desc_lists_the_newest_first_and_before_pages_further_back(api: Api) -> None:
    add_versions(api.world, 12)

    newest = api.numbers(order="desc", limit=5)
    older = api.numbers(order="desc", limit=5, before=newest[-1])
    oldest = api.numbers(order="desc", limit=5, before=older[-1])

    assert newest == [12, 11, 10, 9, 8]
    assert older == [7, 6, 5, 4, 3]
    assert oldest == [2, 1]


def test_after_pages_forward_and_an_exhausted_history_answers_an_empty_list(api: Api) -> None:
    add_versions(api.world, 7)

    first = api.numbers(limit=3)
    second = api.numbers(limit=3, after=first[-1])
    third = api.numbers(limit=3, after=second[-1])
    beyond = api.numbers(limit=3, after=third[-1])

    assert (first, second, third, beyond) == ([1, 2, 3], [4, 5, 6], [7], [])


def test_after_and_before_together_bound_the_page_on_both_sides(api: Api) -> None:
    add_versions(api.world, 10)

    assert api.numbers(after=3, before=7) == [4, 5, 6]
    assert api.numbers(after=3, before=7, order="desc") == [6, 5, 4]


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 1001}, {"order": "newest"}, {"after": -1}, {"before": 0}, {"after": "x"}],
    ids=["limit-0", "limit-1001", "order-unknown", "after-negative", "before-0", "after-not-a-number"],
)
def test_a_page_outside_the_bounds_is_refused_with_422(api: Api, params: dict[str, object]) -> None:
    answer = api.page(**params)

    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_request"


def test_a_page_of_an_unknown_model_is_404_and_of_a_known_one_past_its_end_is_empty(api: Api) -> None:
    unknown = api.client.get("/v1/models/nope/versions", headers=api.headers)

    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert api.numbers(after=1) == []


def test_a_listed_version_is_the_summary_of_that_version(api: Api) -> None:
    api.world.push("mlp", b"weights of version 2")
    with api.world.db.transaction() as session:
        full = [store.get_version(session, "mlp", n) for n in (1, 2)]

    listed = api.page(limit=1000).json()

    assert listed == [json.loads(schemas.version_summary(v).model_dump_json()) for v in full]
    assert set(listed[0]) == {
        "model",
        "version",
        "digest",
        "state",
        "size_bytes",
        "created_at",
        "last_error",
        "metadata",
    }


def _statements(api: Api) -> list[str]:
    executed: list[str] = []
    event.listen(api.world.db.engine, "before_cursor_execute", lambda *a: executed.append(a[2]))
    return executed


def test_a_page_costs_the_same_queries_whatever_the_length_of_the_history(api: Api) -> None:
    add_versions(api.world, 20)
    executed = _statements(api)
    token_store.TOKEN_CACHE.clear()  # both pages read the token, whatever the time between them
    short = api.page(order="desc", limit=10).json()
    short_queries = list(executed)
    add_versions(api.world, 600)
    executed.clear()
    token_store.TOKEN_CACHE.clear()

    long = api.page(order="desc", limit=10).json()

    assert [v["version"] for v in short] == list(range(20, 10, -1))
    assert [v["version"] for v in long] == list(range(600, 590, -1))
    assert executed == short_queries
    assert not any("manifest_entries" in sql for sql in executed)


def test_the_registry_pages_versions_without_their_manifests(api: Api) -> None:
    add_versions(api.world, 5)

    page = api.world.registry.list_versions("mlp", limit=2, newest_first=True)

    assert [v.number for v in page] == [5, 4]
    assert not hasattr(page[0], "manifest")
    with pytest.raises(NotFound):
        api.world.registry.list_versions("nope")


class _Borrowed(httpx.Client):
    """The test app's client, lent to the CLI (not closed after a command); it keeps each request's query."""

    def __init__(self, client: TestClient, queries: list[dict[str, str]]) -> None:
        self._client = client
        self._queries = queries

    def __enter__(self) -> _Borrowed:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def request(self, method: str, url: object, **kwargs: object) -> httpx.Response:  # type: ignore[override]
        self._queries.append({k: str(v) for k, v in dict(kwargs.get("params") or {}).items()})  # type: ignore[call-overload]
        return self._client.request(method, url, **kwargs)  # type: ignore[arg-type]


def _cli(api: Api, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[list[str], list[dict[str, str]]]:
    """Run ``controlplane versions mlp ARGS`` against the in-process app: its output lines and its queries."""
    queries: list[dict[str, str]] = []
    monkeypatch.setattr(cli.httpx, "Client", lambda **_kwargs: _Borrowed(api.client, queries))
    monkeypatch.setenv("CONTROLPLANE_TOKEN", api.headers["Authorization"].removeprefix("Bearer "))
    result = CliRunner().invoke(cli.app, ["versions", "mlp", *args])
    assert result.exit_code == 0, result.output
    return result.output.splitlines(), queries


def test_the_cli_lists_every_version_oldest_first_page_by_page(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_versions(api.world, 7)
    monkeypatch.setattr(cli, "VERSION_PAGE", 3)

    lines, queries = _cli(api, monkeypatch)

    assert [line.split()[0] for line in lines] == [f"v{n}" for n in range(1, 8)]
    assert queries == [{"limit": "3"}, {"limit": "3", "after": "3"}, {"limit": "3", "after": "6"}]


def test_the_cli_shows_only_the_newest_versions_with_newest(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_versions(api.world, 7)
    monkeypatch.setattr(cli, "VERSION_PAGE", 3)

    lines, queries = _cli(api, monkeypatch, "--newest", "5")
    json_lines, _queries = _cli(api, monkeypatch, "--newest", "2", "--json")

    assert [line.split()[0] for line in lines] == ["v7", "v6", "v5", "v4", "v3"]
    assert queries == [{"limit": "3", "order": "desc"}, {"limit": "2", "order": "desc", "before": "5"}]
    assert [v["version"] for v in json.loads("\n".join(json_lines))] == [7, 6]
