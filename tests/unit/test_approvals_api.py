"""Protected promotions over the REST API and the CLI, with token auth (in-process app, fakes, SQLite).

Version 1 of ``mlp`` serves on blue, version 2 is pushed, and an admin has
made ``mlp`` require approval. There is one token per role (named after it)
and a second admin, ``admin2``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import World, serving_world
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from controlplane import cli
from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.domain.auth import Role
from controlplane.registry import claim_store, token_store
from controlplane.rollout.engine import RolloutEngine
from controlplane.services.deploys import Deployer
from controlplane.services.health import Health

CANARY = {"model": "mlp", "version": 2, "strategy": "canary", "steps": [50, 100], "step_seconds": 0}


@dataclass
class Api:
    world: World
    engine: RolloutEngine
    client: TestClient
    tokens: dict[str, str]

    def as_(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def request_rollout(self, by: str = "deployer") -> dict[str, Any]:
        answer = self.client.post("/v1/rollouts", json=CANARY, headers=self.as_(by))
        assert answer.status_code == 202, answer.text
        return dict(answer.json())


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    world = serving_world(tmp_path)
    engine = world.engine()
    services = ApiServices(
        db=world.db,
        registry=world.registry,
        signing=world.signing,
        health=Health(db=world.db, pools={}),
        engine=engine,
        deployer=Deployer(db=world.db, engine=engine, answer_within=60.0),
    )
    tokens: dict[str, str] = {}
    with world.db.transaction() as session:
        for name, role in [*((r.value, r) for r in Role), ("admin2", Role.ADMIN)]:
            tokens[name], _info = token_store.create_token(session, name=name, role=role, created_by="tests")
    app = create_app(services, max_upload_bytes=1 << 20, auth=Authenticator(world.db, required=True))
    with TestClient(app) as client:
        api = Api(world, engine, client, tokens)
        protect = client.put(
            "/v1/models/mlp/policy",
            json={"require_approval": True, "approval_timeout_seconds": 600},
            headers=api.as_("admin"),
        )
        assert protect.status_code == 200, protect.text
        yield api
    world.close()


def _error(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, answer.json()["error"]["code"]


def test_the_policy_shows_and_takes_the_approval_settings(api: Api) -> None:
    shown = api.client.get("/v1/models/mlp/policy", headers=api.as_("viewer")).json()
    too_short = api.client.put(
        "/v1/models/mlp/policy", json={"approval_timeout_seconds": 59}, headers=api.as_("admin")
    )
    unprotected = api.client.get("/v1/models/other/policy", headers=api.as_("viewer")).json()

    assert (shown["require_approval"], shown["approval_timeout_seconds"]) == (True, 600)
    assert shown["effective"]["require_approval"] is True
    assert too_short.status_code == 422
    assert (unprotected["require_approval"], unprotected["approval_timeout_seconds"]) == (False, 86_400)


def test_a_protected_rollout_is_accepted_waiting_for_approval_with_its_deadline(api: Api) -> None:
    before = datetime.now(UTC)

    waiting = api.request_rollout()

    assert waiting["state"] == "pending_approval" and waiting["active"] is True
    assert waiting["approved_by"] is None and waiting["decided_at"] is None
    deadline = datetime.fromisoformat(waiting["approval_expires_at"])
    assert before + timedelta(seconds=599) < deadline <= datetime.now(UTC) + timedelta(seconds=600)
    listed = api.client.get("/v1/rollouts?active=true", headers=api.as_("viewer")).json()
    assert [r["id"] for r in listed] == [waiting["id"]]


@pytest.mark.parametrize("role", ["viewer", "publisher", "deployer"])
def test_a_role_without_the_approve_permission_can_neither_approve_nor_reject(api: Api, role: str) -> None:
    waiting = api.request_rollout(by="admin")

    approve = api.client.post(f"/v1/rollouts/{waiting['id']}/approve", headers=api.as_(role))
    reject = api.client.post(
        f"/v1/rollouts/{waiting['id']}/reject", json={"reason": "no"}, headers=api.as_(role)
    )

    assert _error(approve) == _error(reject) == (403, "forbidden")
    assert approve.json()["error"]["details"] == {"role": role, "needs": "approve"}
    assert api.engine.get(waiting["id"]).state.value == "pending_approval"


def test_an_approver_approves_and_the_rollout_runs_to_success(api: Api) -> None:
    waiting = api.request_rollout(by="deployer")

    approved = api.client.post(f"/v1/rollouts/{waiting['id']}/approve", headers=api.as_("approver"))
    done = api.engine.wait(waiting["id"], timeout=10)

    assert approved.status_code == 202, approved.text
    assert approved.json()["approved_by"] == "approver"
    assert approved.json()["state"] in {"pending", "staging", "shifting", "baking", "succeeded"}
    assert done.state.value == "succeeded", done.reason
    shown = api.client.get(f"/v1/rollouts/{waiting['id']}", headers=api.as_("viewer")).json()
    assert (shown["approved_by"], shown["state"]) == ("approver", "succeeded")
    assert shown["decided_at"] is not None


def test_an_admin_may_approve_another_principal_request_but_never_their_own(api: Api) -> None:
    own = api.request_rollout(by="admin")

    refused = api.client.post(f"/v1/rollouts/{own['id']}/approve", headers=api.as_("admin"))
    by_another_admin = api.client.post(f"/v1/rollouts/{own['id']}/approve", headers=api.as_("admin2"))

    assert _error(refused) == (403, "self_approval")
    assert refused.json()["error"]["details"] == {"rollout": own["id"], "requested_by": "admin"}
    assert by_another_admin.status_code == 202, by_another_admin.text
    assert api.engine.wait(own["id"], timeout=10).state.value == "succeeded"


def test_a_rejected_request_ends_with_the_reason_and_a_second_decision_is_refused(api: Api) -> None:
    waiting = api.request_rollout()

    rejected = api.client.post(
        f"/v1/rollouts/{waiting['id']}/reject", json={"reason": "change freeze"}, headers=api.as_("approver")
    )
    again = api.client.post(f"/v1/rollouts/{waiting['id']}/approve", headers=api.as_("approver"))

    assert rejected.status_code == 200, rejected.text
    body = rejected.json()
    assert (body["state"], body["active"]) == ("rejected", False)
    assert body["reason"] == "rejected by approver: change freeze"
    assert _error(again) == (409, "not_pending_approval")


def test_a_rejection_needs_a_printable_reason(api: Api) -> None:
    waiting = api.request_rollout()

    for body in ({}, {"reason": ""}, {"reason": "bad\x1b[31m"}):
        answer = api.client.post(
            f"/v1/rollouts/{waiting['id']}/reject", json=body, headers=api.as_("approver")
        )
        assert answer.status_code == 422, body
    assert api.engine.get(waiting["id"]).state.value == "pending_approval"


def test_approving_an_expired_request_answers_409_and_it_shows_as_expired(api: Api) -> None:
    waiting = api.request_rollout()
    moved = datetime.now(UTC) + timedelta(seconds=601)
    api.engine.now = lambda: moved

    late = api.client.post(f"/v1/rollouts/{waiting['id']}/approve", headers=api.as_("approver"))

    assert _error(late) == (409, "approval_expired")
    shown = api.client.get(f"/v1/rollouts/{waiting['id']}", headers=api.as_("viewer")).json()
    assert (shown["state"], shown["active"]) == ("expired", False)


def test_a_deploy_of_a_protected_model_answers_202_at_once_with_the_rollout_location(api: Api) -> None:
    started = time.monotonic()

    answer = api.client.post("/v1/models/mlp/versions/2/deploy", headers=api.as_("deployer"))

    assert answer.status_code == 202, answer.text
    assert time.monotonic() - started < 5, "the answer does not wait for the approval"
    body = answer.json()
    assert (body["status"], body["state"]) == ("pending", "pending_approval")
    assert answer.headers["location"] == f"/v1/rollouts/{body['rollout']}"
    with api.world.db.transaction() as session:
        assert claim_store.list_claims(session) == []


def test_a_rollback_of_a_protected_model_starts_at_once(api: Api) -> None:
    waiting = api.request_rollout()
    api.client.post(f"/v1/rollouts/{waiting['id']}/approve", headers=api.as_("approver"))
    assert api.engine.wait(waiting["id"], timeout=10).state.value == "succeeded"

    back = api.client.post("/v1/models/mlp/rollback", headers=api.as_("deployer"))

    assert back.status_code == 202, back.text
    assert back.json()["state"] != "pending_approval" and back.json()["approval_expires_at"] is None
    assert api.engine.wait(back.json()["id"], timeout=10).state.value == "succeeded"


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
def run_cli(api: Api, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setattr(cli.httpx, "Client", lambda **_kwargs: _Borrowed(api.client))

    def run(*args: str, token: str = "deployer") -> Any:
        monkeypatch.setenv("CONTROLPLANE_TOKEN", api.tokens[token])
        return CliRunner().invoke(cli.app, list(args))

    return run


def _decide_while_following(api: Api, monkeypatch: pytest.MonkeyPatch, decide: Callable[[int], None]) -> None:
    """At the CLI's first pause while following a waiting rollout, ``decide`` on it (as an approver)."""
    real_sleep = time.sleep
    decided: list[int] = []

    def pause(seconds: float) -> None:
        if not decided:
            (waiting,) = api.engine.list(active_only=True)
            decided.append(waiting.id)
            decide(waiting.id)
        real_sleep(0.01)

    monkeypatch.setattr(time, "sleep", pause)


def test_rollout_start_on_a_protected_model_says_it_waits_and_follows_it_until_it_succeeds(
    api: Api, run_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _decide_while_following(api, monkeypatch, lambda i: api.engine.approve(i, actor="approver"))

    result = run_cli("rollout", "start", "mlp", "2", "--steps", "50,100", "--step-seconds", "0")

    assert result.exit_code == 0, result.output
    assert "waits for approval until" in result.output
    assert "controlplane rollout approve" in result.output
    assert ": pending_approval (until " in result.output
    assert "(approved by approver)" in result.output
    assert result.output.rstrip().endswith("succeeded: promoted")


def test_rollout_start_that_is_rejected_while_followed_exits_1(
    api: Api, run_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _decide_while_following(api, monkeypatch, lambda i: api.engine.reject(i, actor="approver", reason="no"))

    result = run_cli("rollout", "start", "mlp", "2")

    assert result.exit_code == 1
    assert "rejected: rejected by approver: no" in result.output


def test_rollout_approve_and_reject_commands(api: Api, run_cli: Callable[..., Any]) -> None:
    first, second = api.request_rollout(), api.request_rollout()

    own = run_cli("rollout", "approve", str(first["id"]), token="deployer")
    rejected = run_cli("rollout", "reject", str(second["id"]), "--reason", "wrong version", token="approver")
    approved = run_cli("rollout", "approve", str(first["id"]), "--no-watch", token="approver")

    assert own.exit_code == 1 and "(forbidden)" in own.output
    assert rejected.exit_code == 0, rejected.output
    assert f"rollout {second['id']} rejected: rejected by approver: wrong version" in rejected.output
    assert approved.exit_code == 0, approved.output
    assert "(approved by approver)" in approved.output
    assert api.engine.wait(first["id"], timeout=10).state.value == "succeeded"


def test_policy_set_turns_approval_on_with_its_timeout(api: Api, run_cli: Callable[..., Any]) -> None:
    result = run_cli(
        "policy", "set", "other", "--require-approval", "--approval-timeout", "3600", token="admin"
    )

    assert result.exit_code == 0, result.output
    shown = api.client.get("/v1/models/other/policy", headers=api.as_("viewer")).json()
    assert (shown["require_approval"], shown["approval_timeout_seconds"]) == (True, 3600)


def test_token_create_makes_an_approver_token_that_may_approve(api: Api) -> None:
    url = str(api.world.db.engine.url)
    made = CliRunner().invoke(
        cli.app, ["token", "create", "release-manager", "--role", "approver", "--database-url", url]
    )
    waiting = api.request_rollout()

    assert made.exit_code == 0, made.output
    secret = made.stdout.splitlines()[0]
    approved = api.client.post(
        f"/v1/rollouts/{waiting['id']}/approve", headers={"Authorization": f"Bearer {secret}"}
    )
    assert approved.status_code == 202, approved.text
    assert approved.json()["approved_by"] == "release-manager"
