"""The webhook API and CLI: admins only, secrets shown once, internal targets refused at subscription time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from controlplane import cli
from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.domain.auth import Role
from controlplane.domain.webhook_targets import TargetAllowlist
from controlplane.domain.webhooks import AttemptResult, DeliveryOutcome, RetryPolicy
from controlplane.registry import store, token_store, webhook_store
from controlplane.registry.db import Database
from controlplane.services.webhook_targets import TargetChecker
from controlplane.services.webhooks import Webhooks

DNS = {
    "hooks.example.test": ["93.184.216.34"],
    "intranet.example.test": ["10.1.2.3"],
    "mixed.example.test": ["93.184.216.34", "192.168.0.9"],
    "localhost": ["127.0.0.1", "::1"],
}


def fake_dns(host: str, _port: int, _timeout: float) -> list[str]:
    if host not in DNS:
        raise OSError(f"[Errno -2] Name or service not known: {host}")
    return DNS[host]


@dataclass
class Api:
    client: TestClient
    app: Any
    db: Database
    tokens: dict[Role, str]
    checker: TargetChecker

    def headers(self, role: Role | None = Role.ADMIN) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role is not None else {}

    def create(self, **body: Any) -> Any:
        return self.client.post("/v1/webhooks", json=body, headers=self.headers())

    def audit_actions(self) -> list[str]:
        with self.db.transaction() as session:
            return [
                e.action for e in store.list_events(session, limit=1000) if e.action.startswith("webhook.")
            ]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    db.upgrade()
    tokens = {}
    with db.transaction() as session:
        for role in Role:
            tokens[role], _info = token_store.create_token(
                session, name=role.value, role=role, created_by="t"
            )
    checker = TargetChecker(TargetAllowlist(), resolver=fake_dns)
    stand_in: Any = SimpleNamespace(uploads_dir=tmp_path / "uploads")
    services = ApiServices(
        db=db,
        registry=stand_in,
        signing=stand_in,
        health=stand_in,
        webhooks=Webhooks(db=db, targets=checker),
    )
    app = create_app(services, max_upload_bytes=1 << 20, auth=Authenticator(db))
    with TestClient(app) as client:
        yield Api(client, app, db, tokens, checker)
    db.dispose()


def test_an_admin_subscribes_and_sees_the_generated_secret_once_and_never_again(api: Api) -> None:
    created = api.create(url="https://hooks.example.test/in", events=["push", "rollout.*"], models=["mlp"])

    assert created.status_code == 201, created.text
    body = created.json()
    assert body["secret"].startswith("whsec_") and len(body["secret"]) > 40
    assert body["events"] == ["push", "rollout.*"] and body["models"] == ["mlp"]
    assert body["enabled"] is True and body["pending"] == 0 and body["created_by"] == "admin"
    listed = api.client.get("/v1/webhooks", headers=api.headers()).json()
    shown = api.client.get(f"/v1/webhooks/{body['id']}", headers=api.headers()).json()
    assert [w["id"] for w in listed] == [body["id"]]
    assert "secret" not in listed[0] and "secret" not in shown
    assert body["secret"] not in json.dumps(listed) + json.dumps(shown)
    assert api.audit_actions() == ["webhook.create"]


def test_a_chosen_secret_is_kept_and_the_audit_log_shows_only_where_deliveries_go(api: Api) -> None:
    created = api.create(url="https://hooks.example.test/services/T0/B0/XXXXSECRETPATH", secret="k" * 24)
    assert created.status_code == 201 and created.json()["secret"] == "k" * 24
    with api.db.transaction() as session:
        [event] = [e for e in store.list_events(session) if e.action == "webhook.create"]
    assert event.details["destination"] == "https://hooks.example.test"
    assert "XXXXSECRETPATH" not in json.dumps(dict(event.details)) and "k" * 24 not in json.dumps(
        dict(event.details)
    )


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:9000/hook", "127.0.0.1"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://10.0.0.1/", "10.0.0.1"),
        ("http://[::1]:8080/", "::1"),
        ("http://[::ffff:169.254.169.254]/", "::ffff:a9fe:a9fe"),
        ("http://100.64.0.1/", "100.64.0.1"),
        ("https://intranet.example.test/hook", "10.1.2.3"),
        ("https://mixed.example.test/hook", "192.168.0.9"),
        ("http://localhost:8000/v1/models", "127.0.0.1"),
    ],
)
def test_internal_targets_are_refused_at_subscription_and_nothing_is_recorded(
    api: Api, url: str, address: str
) -> None:
    refused = api.create(url=url)

    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "webhook_target_refused"
    assert error["details"]["address"] == address
    assert "CONTROLPLANE_WEBHOOK_ALLOWED_NETWORKS" in error["message"]
    assert api.client.get("/v1/webhooks", headers=api.headers()).json() == []
    assert api.audit_actions() == []


def test_a_name_that_does_not_resolve_is_refused(api: Api) -> None:
    refused = api.create(url="https://nowhere.example.test/")
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "webhook_target_refused"
    assert refused.json()["error"]["details"]["class"] == "unresolvable"


def test_an_allowlisted_network_or_host_may_be_subscribed(api: Api) -> None:
    api.checker.allowlist = TargetAllowlist.parse("127.0.0.1,intranet.example.test")
    assert api.create(url="http://127.0.0.1:9000/hook").status_code == 201
    assert api.create(url="https://intranet.example.test/hook").status_code == 201
    assert api.create(url="http://[::1]:9000/hook").status_code == 422


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "ftp://hooks.example.test/"}, "invalid_webhook_url"),
        ({"url": "https://u:p@hooks.example.test/"}, "invalid_webhook_url"),
        ({"url": "https://hooks.example.test/", "events": ["roll*"]}, "invalid_webhook_events"),
        ({"url": "https://hooks.example.test/", "events": []}, "invalid_webhook_events"),
        ({"url": "https://hooks.example.test/", "models": ["../x"]}, "invalid_model_name"),
        ({"url": "https://hooks.example.test/", "secret": "short"}, "invalid_webhook_secret"),
    ],
)
def test_malformed_subscriptions_are_refused_with_a_code_naming_the_field(
    api: Api, body: dict[str, Any], code: str
) -> None:
    refused = api.create(**body)
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == code


def test_only_admins_may_see_or_change_webhooks(api: Api) -> None:
    hook = api.create(url="https://hooks.example.test/").json()["id"]
    for role in (Role.VIEWER, Role.PUBLISHER, Role.DEPLOYER):
        assert api.client.get("/v1/webhooks", headers=api.headers(role)).status_code == 403
        assert api.client.get(f"/v1/webhooks/{hook}/deliveries", headers=api.headers(role)).status_code == 403
        assert (
            api.client.post(
                "/v1/webhooks", json={"url": "https://hooks.example.test/"}, headers=api.headers(role)
            ).status_code
            == 403
        )
    assert api.client.get("/v1/webhooks", headers=api.headers(None)).status_code == 401
    assert api.client.delete(f"/v1/webhooks/{hook}", headers=api.headers(Role.DEPLOYER)).status_code == 403


def test_patch_changes_the_filter_disables_and_enables_and_a_new_url_is_checked_again(api: Api) -> None:
    hook = api.create(url="https://hooks.example.test/", models=["mlp"]).json()["id"]
    path = f"/v1/webhooks/{hook}"

    every_model = api.client.patch(path, json={"models": None, "events": ["deploy"]}, headers=api.headers())
    disabled = api.client.patch(path, json={"enabled": False}, headers=api.headers())
    enabled = api.client.patch(path, json={"enabled": True}, headers=api.headers())
    internal = api.client.patch(path, json={"url": "http://10.0.0.1/"}, headers=api.headers())

    assert every_model.json()["models"] is None and every_model.json()["events"] == ["deploy"]
    assert disabled.json()["enabled"] is False and disabled.json()["disabled_reason"] == "disabled by admin"
    assert enabled.json()["enabled"] is True and enabled.json()["disabled_reason"] is None
    assert internal.status_code == 422 and internal.json()["error"]["code"] == "webhook_target_refused"
    assert api.client.get(path, headers=api.headers()).json()["url"] == "https://hooks.example.test/"
    assert api.audit_actions() == ["webhook.create", "webhook.update", "webhook.update", "webhook.update"]


def test_delete_removes_the_subscription_and_an_unknown_id_is_404(api: Api) -> None:
    hook = api.create(url="https://hooks.example.test/").json()["id"]

    assert api.client.delete(f"/v1/webhooks/{hook}", headers=api.headers()).status_code == 204
    missing = api.client.get(f"/v1/webhooks/{hook}", headers=api.headers())
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "webhook_not_found"
    assert api.client.delete(f"/v1/webhooks/{hook}", headers=api.headers()).status_code == 404
    assert api.audit_actions() == ["webhook.create", "webhook.delete"]


def _delivered(api: Api, webhook_id: int, count: int) -> None:
    """``count`` push events, each delivered at the first attempt (recorded as the worker does)."""
    for n in range(count):
        with api.db.transaction() as session:
            store.append_event(session, actor="alice", action="push", target=f"mlp/{n}", outcome="created")
        with api.db.transaction() as session:
            [batch] = webhook_store.claim(session, owner="t", lease_seconds=30, batch=1)
            webhook_store.record_attempt(
                session,
                webhook_id=webhook_id,
                outbox_id=batch.items[0].outbox_id,
                owner="t",
                result=AttemptResult(DeliveryOutcome.DELIVERED, 204, None, 7),
                policy=RetryPolicy(),
                random_fraction=0.0,
            )
            webhook_store.release(session, webhook_id, owner="t")


def test_the_delivery_log_pages_back_from_the_newest(api: Api) -> None:
    hook = api.create(url="https://hooks.example.test/", events=["push"]).json()["id"]
    _delivered(api, hook, 5)
    path = f"/v1/webhooks/{hook}/deliveries"

    first = api.client.get(path, params={"limit": 2}, headers=api.headers()).json()
    second = api.client.get(
        path, params={"limit": 2, "before": first[-1]["id"]}, headers=api.headers()
    ).json()
    rest = api.client.get(path, params={"before": second[-1]["id"]}, headers=api.headers()).json()

    ids = [d["id"] for d in first + second + rest]
    assert ids == sorted(ids, reverse=True) and len(ids) == 5
    assert {(d["outcome"], d["status_code"], d["attempt"]) for d in first} == {("delivered", 204, 1)}
    assert api.client.get(path, params={"limit": 501}, headers=api.headers()).status_code == 422


def test_the_cli_adds_lists_shows_disables_enables_reads_the_log_and_removes(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTROLPLANE_TOKEN", api.tokens[Role.ADMIN])
    monkeypatch.setattr(cli.httpx, "Client", lambda base_url, **_kw: TestClient(api.app, base_url=base_url))
    runner = CliRunner()

    added = runner.invoke(
        cli.app, ["webhook", "add", "https://hooks.example.test/in", "-e", "push", "-m", "mlp"]
    )
    assert added.exit_code == 0, added.output
    first, second = added.output.splitlines()
    assert first.split() == ["1", "enabled", "push", "(mlp)", "0", "pending", "https://hooks.example.test/in"]
    assert second.startswith("secret whsec_")
    _delivered(api, 1, 1)

    listed = runner.invoke(cli.app, ["webhook", "list"])
    disabled = runner.invoke(cli.app, ["webhook", "disable", "1"])
    shown = runner.invoke(cli.app, ["webhook", "show", "1"])
    enabled = runner.invoke(cli.app, ["webhook", "enable", "1"])
    log = runner.invoke(cli.app, ["webhook", "deliveries", "1"])
    refused = runner.invoke(cli.app, ["webhook", "add", "http://169.254.169.254/"])
    removed = runner.invoke(cli.app, ["webhook", "remove", "1"])
    gone = runner.invoke(cli.app, ["webhook", "show", "1"])

    assert listed.output.split()[:2] == ["1", "enabled"]
    assert disabled.output.split()[:2] == ["1", "DISABLED"]
    assert "disabled: disabled by admin" in shown.output
    assert enabled.output.split()[:2] == ["1", "enabled"]
    assert "event " in log.output and "attempt 1  delivered 204  7 ms" in log.output
    assert refused.exit_code == 1 and "(webhook_target_refused)" in refused.output
    assert removed.output.strip() == "webhook 1 removed"
    assert gone.exit_code == 1 and "(webhook_not_found)" in gone.output
