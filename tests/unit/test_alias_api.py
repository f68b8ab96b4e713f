"""Aliases over the REST API and the CLI, on a real SQLite registry with the rollout engine on fakes.

Versions 1-3 of ``mlp`` are pushed and version 1 serves on blue (so
``production`` points at it); the API runs in-process with token auth, and the
CLI's HTTP client is pointed at the same app.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import World, build_world
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from controlplane import cli
from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.domain.auth import Role
from controlplane.domain.rollouts import RolloutState
from controlplane.registry import store, token_store
from controlplane.rollout.engine import RolloutEngine
from controlplane.services.aliases import Aliases
from controlplane.services.deploys import Deployer
from controlplane.services.health import Health

ALIASES = "/v1/models/mlp/aliases"
QUICK = {"strategy": "bluegreen", "step_seconds": 0, "bake_seconds": 0}


@dataclass
class Api:
    world: World
    engine: RolloutEngine
    client: TestClient
    tokens: dict[Role, str]

    def as_(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def audit(self, action: str) -> list[Any]:
        with self.world.db.transaction() as session:
            return [e for e in store.list_events(session, limit=1000) if e.action == action]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    world = build_world(tmp_path)
    for n in (1, 2, 3):
        world.push("mlp", f"weights of version {n}".encode())
    world.deploy("mlp", 1)
    engine = world.engine()
    services = ApiServices(
        db=world.db,
        registry=world.registry,
        signing=world.signing,
        health=Health(db=world.db, pools={}),
        engine=engine,
        deployer=Deployer(db=world.db, engine=engine, answer_within=60.0),
        aliases=Aliases(db=world.db),
    )
    tokens: dict[Role, str] = {}
    with world.db.transaction() as session:
        for role in Role:
            tokens[role], _info = token_store.create_token(
                session, name=role.value, role=role, created_by="tests"
            )
    app = create_app(services, max_upload_bytes=1 << 20, auth=Authenticator(world.db, required=True))
    with TestClient(app) as client:
        yield Api(world, engine, client, tokens)
    world.close()


def test_a_deployer_sets_an_alias_and_a_viewer_reads_it_with_the_version_it_points_to(api: Api) -> None:
    put = api.client.put(
        f"{ALIASES}/challenger",
        json={"version": 2, "reason": "better recall"},
        headers=api.as_(Role.DEPLOYER),
    )
    shown = api.client.get(f"{ALIASES}/challenger", headers=api.as_(Role.VIEWER))
    listed = api.client.get(ALIASES, headers=api.as_(Role.VIEWER))

    assert put.status_code == 200, put.text
    body = shown.json()
    assert shown.status_code == 200 and body == put.json()
    assert (body["model"], body["alias"], body["version"], body["actor"]) == (
        "mlp",
        "challenger",
        2,
        "deployer",
    )
    assert body["version_summary"]["version"] == 2 and len(body["version_summary"]["digest"]) == 64
    assert [(a["alias"], a["version"]) for a in listed.json()] == [("challenger", 2), ("production", 1)]
    (event,) = api.audit("alias.set")[1:]
    assert event.actor == "deployer" and event.details["previous"] is None and event.details["version"] == 2


def test_an_admin_moves_an_alias_and_its_history_says_who_moved_it_from_where_and_why(api: Api) -> None:
    api.client.put(f"{ALIASES}/champion", json={"version": 1}, headers=api.as_(Role.DEPLOYER))
    api.client.put(f"{ALIASES}/champion", json={"version": 3, "reason": "won"}, headers=api.as_(Role.ADMIN))

    history = api.client.get(f"{ALIASES}/champion/history", headers=api.as_(Role.VIEWER))

    assert history.status_code == 200
    assert [(m["previous"], m["version"], m["actor"], m["reason"]) for m in history.json()] == [
        (None, 1, "deployer", ""),
        (1, 3, "admin", "won"),
    ]


@pytest.mark.parametrize("role", [Role.VIEWER, Role.PUBLISHER])
def test_a_role_that_may_not_deploy_cannot_set_or_delete_an_alias(api: Api, role: Role) -> None:
    api.client.put(f"{ALIASES}/challenger", json={"version": 2}, headers=api.as_(Role.DEPLOYER))

    put = api.client.put(f"{ALIASES}/challenger", json={"version": 3}, headers=api.as_(role))
    deleted = api.client.delete(f"{ALIASES}/challenger", headers=api.as_(role))

    assert put.status_code == 403 and deleted.status_code == 403
    assert put.json()["error"]["code"] == "forbidden"
    assert api.client.get(f"{ALIASES}/challenger", headers=api.as_(role)).json()["version"] == 2


def test_without_a_token_aliases_cannot_even_be_read(api: Api) -> None:
    assert api.client.get(ALIASES).status_code == 401
    assert api.client.put(f"{ALIASES}/challenger", json={"version": 2}).status_code == 401


def test_production_is_readable_but_reserved_for_the_control_plane(api: Api) -> None:
    put = api.client.put(f"{ALIASES}/production", json={"version": 2}, headers=api.as_(Role.ADMIN))
    deleted = api.client.delete(f"{ALIASES}/production", headers=api.as_(Role.ADMIN))
    shown = api.client.get(f"{ALIASES}/production", headers=api.as_(Role.VIEWER))

    assert put.status_code == 409 and put.json()["error"]["code"] == "alias_reserved"
    assert deleted.status_code == 409 and deleted.json()["error"]["code"] == "alias_reserved"
    assert shown.status_code == 200 and shown.json()["version"] == 1


def test_an_unknown_alias_is_404_naming_it(api: Api) -> None:
    for method, path in [
        ("GET", f"{ALIASES}/nope"),
        ("DELETE", f"{ALIASES}/nope"),
        ("GET", f"{ALIASES}/nope/history"),
    ]:
        answer = api.client.request(method, path, headers=api.as_(Role.ADMIN))
        assert answer.status_code == 404, (method, path)
        error = answer.json()["error"]
        assert error["code"] == "alias_not_found" and "'nope'" in error["message"]


def test_a_malformed_alias_name_a_missing_version_or_model_is_refused(api: Api) -> None:
    bad_name = api.client.put(f"{ALIASES}/Champion", json={"version": 1}, headers=api.as_(Role.ADMIN))
    no_version = api.client.put(f"{ALIASES}/champion", json={"version": 9}, headers=api.as_(Role.ADMIN))
    no_model = api.client.get("/v1/models/nope/aliases", headers=api.as_(Role.ADMIN))

    assert bad_name.status_code == 422 and bad_name.json()["error"]["code"] == "invalid_alias_name"
    assert no_version.status_code == 404 and no_version.json()["error"]["code"] == "version_not_found"
    assert no_model.status_code == 404 and no_model.json()["error"]["code"] == "model_not_found"


def test_a_rollout_asked_for_by_alias_rolls_out_its_version_and_the_audit_says_which_alias(api: Api) -> None:
    api.client.put(f"{ALIASES}/challenger", json={"version": 2}, headers=api.as_(Role.DEPLOYER))

    started = api.client.post(
        "/v1/rollouts",
        json={"model": "mlp", "version": "challenger", **QUICK},
        headers=api.as_(Role.DEPLOYER),
    )

    assert started.status_code == 202, started.text
    assert started.json()["version"] == 2
    done = api.engine.wait(started.json()["id"], timeout=10)
    assert done.state is RolloutState.SUCCEEDED
    (noted,) = api.audit("rollout.alias")
    assert noted.details == {"rollout": done.id, "alias": "challenger", "version": 2}
    assert noted.target == "mlp/2" and noted.actor == "deployer"
    production = api.client.get(f"{ALIASES}/production", headers=api.as_(Role.VIEWER)).json()
    assert production["version"] == 2


def test_a_rollout_to_an_unknown_alias_is_404_and_starts_nothing(api: Api) -> None:
    answer = api.client.post(
        "/v1/rollouts", json={"model": "mlp", "version": "nope", **QUICK}, headers=api.as_(Role.DEPLOYER)
    )

    assert answer.status_code == 404 and answer.json()["error"]["code"] == "alias_not_found"
    assert "'nope'" in answer.json()["error"]["message"]
    assert [r.id for r in api.engine.list()] == [1]


def test_a_rollout_version_may_still_be_a_number_or_digits(api: Api) -> None:
    for version in (2, "3"):
        started = api.client.post(
            "/v1/rollouts", json={"model": "mlp", "version": version, **QUICK}, headers=api.as_(Role.DEPLOYER)
        )
        assert started.status_code == 202, started.text
        assert api.engine.wait(started.json()["id"], timeout=10).state is RolloutState.SUCCEEDED
    assert api.audit("rollout.alias") == []
    assert [r.spec.version for r in api.engine.list()] == [3, 2, 1]


# -- the CLI, against the same app ------------------------------------------------------


class _Borrowed(httpx.Client):
    """The test app's client, lent to the CLI without closing it at the end of a command."""

    def __init__(self, client: TestClient) -> None:
        self._client = client

    def __enter__(self) -> TestClient:  # type: ignore[override]
        return self._client

    def __exit__(self, *_exc: object) -> None:
        return None


@pytest.fixture
def run_cli(api: Api, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CONTROLPLANE_TOKEN", api.tokens[Role.DEPLOYER])
    monkeypatch.setattr(cli.httpx, "Client", lambda **_kwargs: _Borrowed(api.client))

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli.app, list(args))

    return run


def test_the_cli_sets_lists_shows_and_deletes_aliases(api: Api, run_cli: Any) -> None:
    set_ = run_cli("alias", "set", "mlp", "challenger", "2", "--reason", "better recall")
    listed = run_cli("alias", "list", "mlp")
    shown = run_cli("alias", "show", "mlp", "challenger")
    deleted = run_cli("alias", "delete", "mlp", "challenger")
    history = run_cli("alias", "history", "mlp", "challenger")
    reserved = run_cli("alias", "set", "mlp", "production", "2")

    assert set_.exit_code == 0, set_.output
    assert set_.output.startswith("mlp@challenger") and " v2 " in set_.output
    assert [line.split()[:2] for line in listed.output.splitlines()] == [
        ["mlp@challenger", "v2"],
        ["mlp@production", "v1"],
    ]
    assert shown.output.splitlines()[1].startswith("v2: registered, ")
    assert deleted.output.strip() == "mlp@challenger deleted (it pointed to v2)"
    lines = history.output.splitlines()
    assert "-> v2" in lines[0] and "better recall" in lines[0]
    assert "v2 -> deleted" in lines[1]
    assert reserved.exit_code == 1 and "(alias_reserved)" in reserved.output


def test_show_and_deploy_take_model_at_alias_for_the_version(api: Api, run_cli: Any) -> None:
    run_cli("alias", "set", "mlp", "challenger", "3")

    shown = run_cli("show", "mlp@challenger")
    deployed = run_cli("deploy", "mlp@challenger")

    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("mlp version 3:")
    assert deployed.exit_code == 0, deployed.output
    assert deployed.output.strip() == "mlp version 3 is serving on pool blue"


def test_rollout_start_sends_the_alias_for_the_api_to_resolve_and_record(api: Api, run_cli: Any) -> None:
    run_cli("alias", "set", "mlp", "challenger", "2")

    started = run_cli(
        "rollout", "start", "mlp@challenger", "--strategy", "bluegreen", "--step-seconds", "0",
        "--bake-seconds", "0", "--no-watch",
    )  # fmt: skip

    assert started.exit_code == 0, started.output
    assert started.output.startswith("rollout 2 mlp v2:")
    assert api.engine.wait(2, timeout=10).state is RolloutState.SUCCEEDED
    assert [e.details["alias"] for e in api.audit("rollout.alias")] == ["challenger"]


def test_the_cli_refuses_an_alias_and_a_version_together_or_neither(api: Api, run_cli: Any) -> None:
    both = run_cli("deploy", "mlp@challenger", "2")
    neither = run_cli("show", "mlp")
    unknown = run_cli("show", "mlp@nope")

    assert both.exit_code == 1 and "not both" in both.output
    assert neither.exit_code == 1 and "mlp@ALIAS" in neither.output
    assert unknown.exit_code == 1 and "(alias_not_found)" in unknown.output
