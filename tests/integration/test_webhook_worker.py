"""The webhook worker against a real HTTP receiver, on SQLite and PostgreSQL.

Events are written with ``store.append_event`` (as every change writes
them); the worker sends them to a receiver started here on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import ssl
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from webhook_receiver import Receiver, running_receiver

from controlplane.domain.webhook_targets import TargetAllowlist
from controlplane.domain.webhooks import DeliveryOutcome, RetryPolicy
from controlplane.errors import InvalidInput
from controlplane.registry import store
from controlplane.registry.db import Database
from controlplane.services.webhook_sender import WebhookSender
from controlplane.services.webhook_targets import Resolver, TargetChecker
from controlplane.services.webhooks import DeliverySettings, WebhookDelivery, Webhooks

pytestmark = pytest.mark.integration

LOCAL = TargetAllowlist.parse("127.0.0.1")
FAST = RetryPolicy(base_seconds=0.1, cap_seconds=10.0, jitter=0.2, max_failures=5)


def _events(db: Database, actions: list[str], model: str = "mlp") -> list[int]:
    """Append one audit event per action, each in its own transaction; return their ids."""
    for number, action in enumerate(actions, start=1):
        with db.transaction() as session:
            store.append_event(
                session,
                actor="alice",
                action=action,
                target=f"{model}/{number}",
                outcome="ok",
                details={"n": number},
            )
    with db.transaction() as session:
        return [e.id for e in store.list_events(session, limit=1000)][-len(actions) :]


def _worker(
    db: Database,
    *,
    allowlist: TargetAllowlist = LOCAL,
    resolver: Resolver | None = None,
    policy: RetryPolicy = FAST,
    total_timeout: float = 5.0,
    owner: str | None = None,
    jitter: Callable[[], float] = lambda: 0.0,
    ssl_context: ssl.SSLContext | None = None,
) -> WebhookDelivery:
    targets = TargetChecker(allowlist) if resolver is None else TargetChecker(allowlist, resolver=resolver)
    return WebhookDelivery(
        db=db,
        sender=WebhookSender(targets, total_timeout=total_timeout, ssl_context=ssl_context),
        policy=policy,
        settings=DeliverySettings(lease_seconds=10.0, poll_seconds=0.02, batch=7),
        owner=owner,
        random_fraction=jitter,
    )


def _drain(worker: WebhookDelivery, *, rounds: int = 200) -> int:
    total = 0
    for _ in range(rounds):
        sent = worker.run_once()
        if not sent:
            return total
        total += sent
    raise AssertionError("the worker still had work after {rounds} rounds")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def test_every_matching_event_is_delivered_once_in_order_signed_with_the_subscription_secret(
    database: Database, receiver: Receiver
) -> None:
    webhooks = Webhooks(db=database, targets=TargetChecker(LOCAL))
    hook, secret = webhooks.create(
        url=receiver.url(), events=["push", "rollout.*"], models=None, secret=None, actor="ops"
    )
    ids = _events(database, ["push", "token.create", "rollout.create", "deploy", "rollout.transition"] * 6)
    with database.transaction() as session:
        events = {e.id: e for e in store.list_events(session, limit=1000)}
    wanted = [i for i in ids if events[i].action in {"push", "rollout.create", "rollout.transition"}]

    attempts = _drain(_worker(database))

    assert attempts == len(wanted) == 18
    assert receiver.event_ids() == wanted
    for request in receiver.requests():
        assert request.signed_by(secret)
        assert request.path == "/hooks"
        payload = json.loads(request.body)
        assert payload["id"] == int(request.event_id)
        assert payload["action"] == events[payload["id"]].action
        assert set(payload) == {"id", "action", "target", "outcome", "actor", "at", "details"}
    assert webhooks.get(hook.id).pending == 0
    log = webhooks.deliveries(hook.id, limit=500)
    assert [d.event_id for d in reversed(log)] == wanted
    assert {(d.outcome, d.status_code, d.attempt) for d in log} == {(DeliveryOutcome.DELIVERED, 200, 1)}


def test_a_subscription_limited_to_a_model_gets_only_that_models_events(
    database: Database, receiver: Receiver
) -> None:
    webhooks = Webhooks(db=database, targets=TargetChecker(LOCAL))
    webhooks.create(url=receiver.url(), events=["*"], models=["mlp"], secret=None, actor="ops")
    mine = _events(database, ["push", "deploy"], model="mlp")
    _events(database, ["push", "deploy"], model="resnet")

    _drain(_worker(database))

    assert receiver.event_ids() == mine


@pytest.mark.exclusive
def test_a_failing_receiver_gets_retries_with_growing_gaps_then_the_subscription_is_disabled_and_audited(
    database: Database,
) -> None:
    with running_receiver(lambda _r: 500) as receiver:
        webhooks = Webhooks(db=database, targets=TargetChecker(LOCAL))
        hook, _secret = webhooks.create(
            url=receiver.url(), events=["push"], models=None, secret=None, actor="ops"
        )
        [event_id] = _events(database, ["push"])
        worker = _worker(database, jitter=lambda: 0.5)
        worker.start()
        try:
            deadline = time.monotonic() + 20
            while webhooks.get(hook.id).enabled:
                assert time.monotonic() < deadline, "the subscription was not disabled"
                time.sleep(0.02)
            time.sleep(0.5)  # no attempt after the one that disabled it
        finally:
            worker.stop()

    arrivals = [r.at for r in receiver.requests()]
    assert receiver.event_ids() == [event_id] * 5
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # Scheduled 0.1, 0.2, 0.4, 0.8 s, less a jitter of 10 %.
    for gap, scheduled in zip(gaps, [0.09, 0.18, 0.36, 0.72], strict=True):
        assert gap >= scheduled, gaps
    assert gaps == sorted(gaps)
    disabled = webhooks.get(hook.id)
    assert disabled.consecutive_failures == 5
    assert disabled.disabled_reason == "5 consecutive failed deliveries; the last: HTTP 500"
    log = webhooks.deliveries(hook.id)
    assert [(d.attempt, d.status_code, d.outcome) for d in reversed(log)] == [
        (n, 500, DeliveryOutcome.FAILED) for n in range(1, 6)
    ]
    with database.transaction() as session:
        audited = [e for e in store.list_events(session, limit=1000) if e.action == "webhook.disabled"]
    assert len(audited) == 1
    assert audited[0].target == f"webhook/{hook.id}" and audited[0].actor == "controlplane"
    assert audited[0].details["failures"] == 5


def test_an_admin_re_enables_a_disabled_subscription_and_the_waiting_event_goes_out_at_once(
    database: Database,
) -> None:
    answers = iter([500] * 5 + [200] * 10)
    with running_receiver(lambda _r: next(answers)) as receiver:
        webhooks = Webhooks(db=database, targets=TargetChecker(LOCAL))
        hook, _secret = webhooks.create(
            url=receiver.url(), events=["push"], models=None, secret=None, actor="ops"
        )
        [event_id] = _events(database, ["push"])
        policy = RetryPolicy(base_seconds=0.01, cap_seconds=0.05, max_failures=5)
        worker = _worker(database, policy=policy)
        while webhooks.get(hook.id).enabled:
            worker.run_once()
            time.sleep(0.05)
        assert worker.run_once() == 0  # disabled: nothing is sent

        enabled = webhooks.update(hook.id, actor="ops", enabled=True)
        assert enabled.enabled and enabled.consecutive_failures == 0 and enabled.disabled_reason is None
        assert worker.run_once() == 1

    assert receiver.event_ids() == [event_id] * 6
    assert webhooks.get(hook.id).pending == 0
    with database.transaction() as session:
        changes = [e for e in store.list_events(session, limit=1000) if e.action == "webhook.update"]
    assert [(e.actor, e.outcome, e.details["changed"]) for e in changes] == [("ops", "enabled", ["enabled"])]


def test_a_target_that_has_become_loopback_is_refused_at_delivery_and_nothing_is_sent(
    database: Database, receiver: Receiver
) -> None:
    webhooks = Webhooks(db=database, targets=TargetChecker(LOCAL))
    hook, _secret = webhooks.create(
        url=receiver.url(), events=["push"], models=None, secret=None, actor="ops"
    )
    _events(database, ["push"])

    # The admin has since removed 127.0.0.1 from the allowlist.
    assert _worker(database, allowlist=TargetAllowlist()).run_once() == 1

    assert receiver.requests() == []
    [attempt] = webhooks.deliveries(hook.id)
    assert attempt.outcome is DeliveryOutcome.REFUSED and attempt.status_code is None
    assert "127.0.0.1, a loopback address" in (attempt.error or "")
    assert webhooks.get(hook.id).consecutive_failures == 1


def test_a_name_that_resolves_to_a_private_address_at_delivery_is_refused_though_it_was_public_before(
    database: Database, receiver: Receiver
) -> None:
    answers = {"hooks.example.test": ["93.184.216.34"]}

    def resolver(host: str, _port: int, _timeout: float) -> list[str]:
        return answers[host]

    webhooks = Webhooks(db=database, targets=TargetChecker(TargetAllowlist(), resolver=resolver))
    hook, _secret = webhooks.create(
        url="http://hooks.example.test/in", events=["push"], models=None, secret=None, actor="ops"
    )
    _events(database, ["push"])
    answers["hooks.example.test"] = ["10.0.0.7"]

    _worker(database, allowlist=TargetAllowlist(), resolver=resolver).run_once()

    [attempt] = webhooks.deliveries(hook.id)
    assert attempt.outcome is DeliveryOutcome.REFUSED
    assert "10.0.0.7, a private address" in (attempt.error or "")


def test_the_delivery_connects_to_the_checked_address_and_keeps_the_host_name_in_the_host_header(
    database: Database, receiver: Receiver
) -> None:
    lookups: list[str] = []

    def resolver(host: str, _port: int, _timeout: float) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    checker = TargetChecker(LOCAL, resolver=resolver)
    webhooks = Webhooks(db=database, targets=checker)
    url = f"http://hooks.example.test:{receiver.port}/in?team=ml"
    webhooks.create(url=url, events=["push"], models=None, secret=None, actor="ops")
    lookups.clear()
    _events(database, ["push"])

    _worker(database, resolver=resolver).run_once()

    [request] = receiver.requests()
    assert request.host == f"hooks.example.test:{receiver.port}"
    assert request.path == "/in?team=ml"
    assert lookups == ["hooks.example.test"]  # once per attempt: the connection does not resolve again


def test_a_redirect_is_not_followed_and_counts_as_a_failure(database: Database) -> None:
    def redirect(request: object) -> tuple[int, str]:
        return 302, "http://169.254.169.254/latest/meta-data/"

    with running_receiver(redirect) as receiver:
        webhooks = Webhooks(db=database, targets=TargetChecker(LOCAL))
        hook, _secret = webhooks.create(
            url=receiver.url(), events=["push"], models=None, secret=None, actor="ops"
        )
        _events(database, ["push"])

        _worker(database).run_once()

    assert [r.method for r in receiver.requests()] == ["POST"]
    [attempt] = webhooks.deliveries(hook.id)
    assert (attempt.outcome, attempt.status_code) == (DeliveryOutcome.FAILED, 302)
    assert attempt.error == "HTTP 302 redirect to http://169.254.169.254/latest/meta-data/ not followed"
    assert webhooks.get(hook.id).pending == 1


def test_a_receiver_slower_than_the_deadline_fails_the_attempt_at_the_deadline(database: Database) -> None:
    with running_receiver(delay=3.0) as receiver:
        webhooks = Webhooks(db=database, targets=TargetChecker(LOCAL))
        hook, _secret = webhooks.create(
            url=receiver.url(), events=["push"], models=None, secret=None, actor="ops"
        )
        _events(database, ["push"])
        started = time.monotonic()

        _worker(database, total_timeout=0.5).run_once()

        took = time.monotonic() - started
    [attempt] = webhooks.deliveries(hook.id)
    assert attempt.outcome is DeliveryOutcome.FAILED
    assert attempt.error == "no answer within 0.5 s"
    assert took < 2.0 and attempt.duration_ms < 1500


def test_two_workers_on_one_database_send_a_subscriptions_events_one_at_a_time_in_order(
    database: Database,
) -> None:
    with running_receiver(delay=0.01) as receiver:
        webhooks = Webhooks(db=database, targets=TargetChecker(LOCAL))
        webhooks.create(url=receiver.url(), events=["push"], models=None, secret=None, actor="ops")
        ids = _events(database, ["push"] * 40)
        workers = [_worker(database, owner="plane-a"), _worker(database, owner="plane-b")]
        for worker in workers:
            worker.start()
        try:
            receiver.wait_for(lambda r: set(r.event_ids()) >= set(ids), 30, "every event")
        finally:
            for worker in workers:
                worker.stop()

    assert receiver.max_in_flight == 1
    assert receiver.event_ids() == ids


def test_an_invalid_receiver_url_never_reaches_the_subscription_table(database: Database) -> None:
    webhooks = Webhooks(db=database, targets=TargetChecker(LOCAL))
    for url in ("http://127.0.0.1:1/x#f", "ftp://127.0.0.1/"):
        with pytest.raises(InvalidInput):
            webhooks.create(url=url, events=["push"], models=None, secret=None, actor="ops")
    assert webhooks.list_all() == []


def _certificate(host: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``host`` and its key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def test_https_to_the_checked_address_sends_the_host_name_for_sni_and_verifies_the_certificate_against_it(
    database: Database, tmp_path: Path
) -> None:
    certificate, key = _certificate("hooks.example.test")
    (tmp_path / "cert.pem").write_bytes(certificate)
    (tmp_path / "key.pem").write_bytes(key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server_names: list[str | None] = []
    server.sni_callback = lambda _sock, name, _ctx: server_names.append(name)
    trusted = ssl.create_default_context(cadata=certificate.decode())

    def resolver(_host: str, _port: int, _timeout: float) -> list[str]:
        return ["127.0.0.1"]

    with running_receiver(tls=server) as receiver:
        webhooks = Webhooks(db=database, targets=TargetChecker(LOCAL, resolver=resolver))
        good, _ = webhooks.create(
            url=f"https://hooks.example.test:{receiver.port}/in",
            events=["push"],
            models=None,
            secret=None,
            actor="ops",
        )
        wrong, _ = webhooks.create(
            url=f"https://other.example.test:{receiver.port}/in",
            events=["push"],
            models=None,
            secret=None,
            actor="ops",
        )
        _events(database, ["push"])

        _worker(database, resolver=resolver, ssl_context=trusted).run_once()

    [request] = receiver.requests()
    assert request.host == f"hooks.example.test:{receiver.port}"
    assert server_names[0] == "hooks.example.test"
    [delivered] = webhooks.deliveries(good.id)
    assert delivered.outcome is DeliveryOutcome.DELIVERED
    [refused] = webhooks.deliveries(wrong.id)
    assert refused.outcome is DeliveryOutcome.FAILED
    assert "CERTIFICATE_VERIFY_FAILED" in (refused.error or ""), refused.error
