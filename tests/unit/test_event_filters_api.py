"""GET /v1/events filters (model, actor, action) and newest-first paging, on SQLite and PostgreSQL.

The audit log is written as the services write it; the API runs in-process
with token auth, and the CLI's HTTP client is pointed at the same app.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from controlplane import cli
from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.artifacts.archive import ArchiveLimits
from controlplane.artifacts.blobs import BlobStore
from controlplane.domain.auth import Role
from controlplane.registry import token_store
from controlplane.registry.db import Database
from controlplane.services import audit
from controlplane.services.health import Health
from controlplane.services.registry import Registry
from controlplane.services.signing import Signing

EVENTS = "/v1/events"

# (actor, action, target), written in this order after the token's own event.
LOG = [
    ("alice", "version.push", "mlp/1"),
    ("alice", "version.push", "mlp2/1"),
    ("bob", "rollout.start", "mlp/2"),
    ("bob", "rollout.step", "mlp/2"),
    ("bob", "rollouts.sweep", "mlp/2"),
    ("carol", "drift.repair", "blue/mlp"),
    ("carol", "drift.repair", "blue/mlp2"),
    ("alice", "alias.set", "mlp@production"),
    ("alice", "signature.policy", "mlp"),
    ("alice", "signature.policy", "mlpx"),
    ("bob", "rollout.start", "MLP/3"),
    ("bob", "rollout_x.start", "m_p/1"),
    ("bob", "rollout", "resnet/1"),
    ("alice", "version.push", "pool/mlp/extra"),
]


@dataclass
class Api:
    client: TestClient
    token: str
    ids: dict[int, int]  # LOG index -> event id

    def get(self, **params: Any) -> httpx.Response:
        return self.client.get(EVENTS, params=params, headers={"Authorization": f"Bearer {self.token}"})

    def picked(self, **params: Any) -> list[int]:
        """The LOG indexes of the events the API answers (the token's own event left out)."""
        answer = self.get(**params)
        assert answer.status_code == 200, answer.text
        index = {event_id: i for i, event_id in self.ids.items()}
        return [index[e["id"]] for e in answer.json() if e["id"] in index]


@pytest.fixture
def api(database: Database, tmp_path: Path) -> Iterator[Api]:
    blobs = BlobStore(tmp_path / "artifacts")
    signing = Signing(db=database, blobs=blobs, uploads_dir=tmp_path / "uploads")
    registry = Registry(
        db=database, blobs=blobs, uploads_dir=tmp_path / "uploads", signing=signing, limits=ArchiveLimits()
    )
    services = ApiServices(
        db=database, registry=registry, signing=signing, health=Health(db=database, pools={})
    )
    with database.transaction() as session:
        token, _info = token_store.create_token(session, name="reader", role=Role.VIEWER, created_by="t")
    for actor, action, target in LOG:
        audit.record(database, actor=actor, action=action, target=target, outcome="ok", details={})
    ids = {i: event["id"] for i, event in enumerate(registry_events(registry)[-len(LOG) :])}
    app = create_app(services, max_upload_bytes=1 << 20, auth=Authenticator(database))
    with TestClient(app) as client:
        yield Api(client, token, ids)


def registry_events(registry: Registry) -> list[dict[str, Any]]:
    return [{"id": e.id, "target": e.target} for e in registry.events(limit=1000)]


def test_without_filters_the_page_is_every_event_after_an_id_oldest_first_as_before(api: Api) -> None:
    everything = api.get().json()
    after_third = api.get(after=api.ids[2], limit=2).json()

    assert [e["id"] for e in everything] == sorted(e["id"] for e in everything)
    assert everything[0]["action"] == "token.create"
    assert [e["id"] for e in after_third] == [api.ids[3], api.ids[4]]


def test_model_matches_the_model_its_versions_its_aliases_and_its_release_on_a_pool_only(api: Api) -> None:
    # Not mlp2/mlpx (another model), not MLP/3 (names are case-sensitive), not pool/mlp/extra.
    assert api.picked(model="mlp") == [0, 2, 3, 4, 5, 7, 8]


def test_model_wildcard_characters_are_plain_characters(api: Api) -> None:
    assert api.picked(model="m_p") == [11]
    assert api.picked(model="m%") == []


def test_actor_matches_exactly(api: Api) -> None:
    assert api.picked(actor="carol") == [5, 6]
    assert api.picked(actor="caro") == []


def test_action_matches_exactly_or_as_a_prefix_when_it_ends_in_dot_star(api: Api) -> None:
    assert api.picked(action="rollout") == [12]
    assert api.picked(action="rollout.start") == [2, 10]
    # rollouts.sweep, rollout_x.start and rollout do not start with "rollout.".
    assert api.picked(action="rollout.*") == [2, 3, 10]


def test_filters_combine(api: Api) -> None:
    assert api.picked(model="mlp", actor="bob", action="rollout.*") == [2, 3]
    assert api.picked(model="mlp", actor="alice") == [0, 7, 8]


def test_desc_pages_newest_first_and_before_gives_the_next_page(api: Api) -> None:
    first = api.picked(model="mlp", order="desc", limit=3)
    last_id = api.ids[first[-1]]
    second = api.picked(model="mlp", order="desc", limit=3, before=last_id)
    third = api.picked(model="mlp", order="desc", limit=3, before=api.ids[second[-1]])

    assert (first, second, third) == ([8, 7, 5], [4, 3, 2], [0])


def test_after_and_before_bound_both_orders(api: Api) -> None:
    window = {"after": api.ids[2], "before": api.ids[8]}

    assert api.picked(**window) == [3, 4, 5, 6, 7]
    assert api.picked(**window, order="desc") == [7, 6, 5, 4, 3]
    assert api.picked(model="mlp", order="desc", after=api.ids[4]) == [8, 7, 5]


@pytest.mark.parametrize(
    "params",
    [
        {"model": "m" * 257},
        {"actor": "a" * 257},
        {"action": "x" * 257},
        {"model": "mlp\n"},
        {"actor": "bob\x00"},
        {"action": "rollout.\x1b*"},
        {"order": "sideways"},
        {"before": -1},
        {"before": 2**31},
    ],
    ids=lambda p: next(iter(p)),
)
def test_a_filter_too_long_with_a_control_character_or_out_of_range_is_refused_422(
    api: Api, params: dict[str, Any]
) -> None:
    answer = api.get(**params)

    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] in {"invalid_request", f"invalid_{next(iter(params))}"}


def test_a_filter_of_256_characters_is_accepted(api: Api) -> None:
    assert api.get(model="m" * 256).json() == []


def test_filters_need_a_token_like_the_page_itself(api: Api) -> None:
    assert api.client.get(EVENTS, params={"model": "mlp"}).status_code == 401


# -- the CLI, against the same app ------------------------------------------------------


class _Borrowed(httpx.Client):
    """The test app's client, lent to the CLI without closing it at the end of a command."""

    def __init__(self, client: TestClient) -> None:
        self._client = client

    def __enter__(self) -> TestClient:  # type: ignore[override]
        return self._client

    def __exit__(self, *_exc: object) -> None:
        return None


def test_the_cli_passes_model_actor_and_action_to_the_api(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLPLANE_TOKEN", api.token)
    monkeypatch.setattr(cli.httpx, "Client", lambda **_kwargs: _Borrowed(api.client))

    listed = CliRunner().invoke(
        cli.app, ["events", "--model", "mlp", "--actor", "bob", "--action", "rollout.*", "--json"]
    )
    following = CliRunner().invoke(cli.app, ["events", "--follow", "--model", "mlp"])

    assert listed.exit_code == 0, listed.output
    shown = [json.loads(line) for line in listed.output.splitlines()]
    assert [(e["actor"], e["action"], e["target"]) for e in shown] == [
        ("bob", "rollout.start", "mlp/2"),
        ("bob", "rollout.step", "mlp/2"),
    ]
    assert following.exit_code == 1 and "filter the listing" in following.output
