"""Webhooks lose nothing: ``controlplane up`` killed with -9 while deliveries are in flight, then restarted.

A receiver started here records every request. Pushes, a deploy and
metadata changes produce events while the receiver answers slowly; the
control plane is killed in the middle of a delivery, events are added to
the registry while it is down, and it is started again on the same state.
In the end the receiver has every audit event written since the
subscription, each with a valid signature, and an event sent twice (the one
in flight at the kill) carries the same id and body both times. The test
prints the delivery latency (audit time to receipt) and the outbox
throughput with a fast receiver.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from stack import Stack, start_stack
from triton_helpers import load_examples_module
from webhook_receiver import Receiver, running_receiver

from controlplane.registry import store
from controlplane.registry.db import Database

pytestmark = pytest.mark.integration

examples = load_examples_module()
ENV = {
    "CONTROLPLANE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1",
    # A killed control plane's claims run out after this; the default (30 s) would only slow the test.
    "CONTROLPLANE_WEBHOOK_LEASE_SECONDS": "8",
    "CONTROLPLANE_WEBHOOK_POLL_SECONDS": "0.1",
}
BACKLOG = 500
LATENCY_SAMPLES = 50


def _audit_ids(stack: Stack, since: int) -> list[int]:
    ids: list[int] = []
    with stack.client() as client:
        while True:
            page = client.get(
                "/v1/events", params={"after": max(since - 1, ids[-1] if ids else 0), "limit": 1000}
            )
            assert page.status_code == 200, page.text
            batch = [e["id"] for e in page.json()]
            if not batch:
                return ids
            ids.extend(batch)


def _wait_until_all_delivered(stack: Stack, receiver: Receiver, since: int, timeout: float) -> list[int]:
    """Wait until the receiver has every audit event from ``since`` on; return those ids."""
    deadline = time.monotonic() + timeout
    while True:
        expected = _audit_ids(stack, since)
        if set(receiver.event_ids()) >= set(expected):
            return expected
        if time.monotonic() > deadline:
            missing = sorted(set(expected) - set(receiver.event_ids()))
            raise AssertionError(f"events never delivered: {missing[:20]}...\n{stack.log()[-3000:]}")
        time.sleep(0.2)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver(delay=1.0) as r:
        yield r


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for the SQLite file in the state directory, or a fresh schema of the PostgreSQL server."""
    if request.param == "sqlite":
        yield None
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"cp_webhooks_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_killed_mid_delivery_the_control_plane_loses_no_event_and_a_resent_one_keeps_its_id(
    tmp_path: Path, receiver: Receiver, database_url: str | None
) -> None:
    folders = [examples.build_mlp(tmp_path / f"mlp-{seed}", seed=seed) for seed in (1, 2)]
    stack = start_stack(tmp_path / "state", env=ENV, database_url=database_url)
    try:
        added = stack.cli("webhook", "add", receiver.url(), "--event", "*", "--json")
        assert added.returncode == 0, added.stderr
        subscription = json.loads(added.stdout)
        secret = subscription["secret"]
        created_at = _creation_event(stack, subscription["id"])

        for folder in folders:
            assert stack.push(folder, "mlp").status_code == 201
        with stack.client() as client:
            assert client.post("/v1/models/mlp/versions/1/deploy").status_code == 200
            for n in range(5):
                changed = client.patch("/v1/models/mlp/versions/2/metadata", json={"labels": {"n": str(n)}})
                assert changed.status_code == 200, changed.text

        # Slow answers (1 s each) keep deliveries in flight: kill the control plane during one.
        receiver.wait_for(lambda r: len(r.event_ids()) >= 3 and r.in_flight_ids, 60, "a delivery in flight")
        in_flight_at_kill = {int(i) for i in receiver.in_flight_ids}
        stack.kill()
        before_kill = receiver.event_ids()
        assert len(set(before_kill)) < len(_audit_ids_offline(stack, created_at)), "everything was delivered"

        # While it is down, changes made by other means (another control plane) add a backlog.
        receiver.delay = 0.0
        backlog = _append_offline(stack, BACKLOG)

        restarted = start_stack(stack.state_dir, env=ENV, ports=stack.ports, database_url=database_url)
        stack.process, stack.log_path = restarted.process, restarted.log_path
        expected = _wait_until_all_delivered(stack, receiver, created_at, timeout=120)

        # Latency with a fast receiver: audit time of the event to its first receipt.
        with stack.client() as client:
            for n in range(LATENCY_SAMPLES):
                client.patch("/v1/models/mlp/versions/2/metadata", json={"labels": {"latency": str(n)}})
        expected = _wait_until_all_delivered(stack, receiver, created_at, timeout=60)
        listed = stack.cli("webhook", "list")
    finally:
        code = stack.stop()
    assert code == 0, stack.log()[-3000:]
    assert "failed unexpectedly" not in stack.log()

    requests = [r for r in receiver.requests() if r.method == "POST"]
    assert all(r.signed_by(secret) for r in requests)
    received = [int(r.event_id) for r in requests]
    assert set(received) == set(expected)
    actions = {int(r.event_id): json.loads(r.body)["action"] for r in requests}
    first_seen = list(dict.fromkeys(received))
    if database_url is None:
        assert first_seen == sorted(first_seen), "a subscription's events arrive in order"
    else:
        # On PostgreSQL an id is taken before its transaction commits: events of overlapping transactions
        # (the reconciler's beside a request's) may swap places. The test's own changes, one after the
        # other, may not.
        sequential = [i for i in first_seen if actions[i] in {"push", "version.metadata"}]
        assert sequential == sorted(sequential), "a subscription's events arrive in order"
    bodies: dict[int, set[bytes]] = {}
    for r in requests:
        assert json.loads(r.body)["id"] == int(r.event_id)
        bodies.setdefault(int(r.event_id), set()).add(r.body)
    assert all(len(b) == 1 for b in bodies.values()), "a resent event is the same bytes"
    duplicates = {i for i in set(received) if received.count(i) > 1}
    assert in_flight_at_kill and in_flight_at_kill <= duplicates
    assert f"{subscription['id']:>4}  enabled" in listed.stdout and "  0 pending  " in listed.stdout

    first_receipt: dict[int, float] = {}
    for r in requests:
        first_receipt.setdefault(int(r.event_id), r.at)
    at = {int(r.event_id): datetime.fromisoformat(json.loads(r.body)["at"]).timestamp() for r in requests}
    latest = sorted(first_receipt)[-LATENCY_SAMPLES:]
    latencies = [first_receipt[i] - at[i] for i in latest]
    arrivals = sorted(first_receipt[i] for i in backlog)
    throughput = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    resent = len(received) - len(set(received))
    print(
        f"\nwebhooks: {len(set(received))} events, {resent} resent after the kill (in flight: "
        f"{sorted(in_flight_at_kill)}); latency p50 {statistics.median(latencies) * 1000:.0f} ms, p99 "
        f"{_percentile(latencies, 0.99) * 1000:.0f} ms; outbox throughput {throughput:.0f} events/s "
        f"({len(backlog)} queued while down; {'PostgreSQL' if database_url else 'SQLite'})"
    )


def _creation_event(stack: Stack, webhook_id: int) -> int:
    """The id of the subscription's own ``webhook.create`` audit event."""
    with stack.client() as client:
        events = client.get("/v1/events", params={"limit": 1000}).json()
    return next(
        e["id"] for e in events if e["action"] == "webhook.create" and e["target"] == f"webhook/{webhook_id}"
    )


def _database(stack: Stack) -> Database:
    return Database(
        stack.env.get("CONTROLPLANE_DATABASE_URL") or f"sqlite:///{stack.state_dir / 'registry.db'}"
    )


def _audit_ids_offline(stack: Stack, since: int) -> list[int]:
    db = _database(stack)
    try:
        with db.transaction() as session:
            return [e.id for e in store.list_events(session, after_id=since - 1, limit=100_000)]
    finally:
        db.dispose()


def _append_offline(stack: Stack, count: int) -> list[int]:
    """``count`` audit events written straight into the registry, as any writer's changes would be."""
    db = _database(stack)
    try:
        with db.transaction() as session:
            for n in range(count):
                store.append_event(
                    session,
                    actor="batch",
                    action="version.metadata",
                    target="mlp/2",
                    outcome="changed",
                    details={"n": n},
                )
        with db.transaction() as session:
            return [e.id for e in store.list_events(session, limit=100_000)][-count:]
    finally:
        db.dispose()
