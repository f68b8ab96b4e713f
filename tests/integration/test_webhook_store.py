"""The webhook outbox and its claims on real databases (SQLite file and PostgreSQL server)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select

from controlplane.domain.webhooks import AttemptResult, DeliveryOutcome, EventFilter, RetryPolicy
from controlplane.registry import store, webhook_store
from controlplane.registry.db import Database
from controlplane.registry.tables import Base, WebhookDeliveryRow, WebhookOutboxRow, utcnow

pytestmark = pytest.mark.integration

SECRET = "s" * 32
POLICY = RetryPolicy(base_seconds=60.0, max_failures=5)
WEBHOOK_TABLES = {"webhooks", "webhook_outbox", "webhook_deliveries"}


def _subscribe(db: Database, events: tuple[str, ...] = ("*",), models: tuple[str, ...] | None = None) -> int:
    with db.transaction() as session:
        return webhook_store.create(
            session,
            url="http://hooks.example.test/in",
            event_filter=EventFilter(events, models),
            secret=SECRET,
            created_by="ops",
        ).id


def _push(db: Database, target: str = "mlp/1") -> int:
    with db.transaction() as session:
        store.append_event(session, actor="alice", action="push", target=target, outcome="created")
        return store.list_events(session, limit=10_000)[-1].id


def _outbox(db: Database, webhook_id: int) -> list[int]:
    with db.transaction() as session:
        return list(
            session.execute(
                select(WebhookOutboxRow.event_id)
                .where(WebhookOutboxRow.webhook_id == webhook_id)
                .order_by(WebhookOutboxRow.id)
            ).scalars()
        )


def _claim(db: Database, owner: str, **kwargs: object) -> list[tuple[int, list[int]]]:
    with db.transaction() as session:
        batches = webhook_store.claim(session, owner=owner, lease_seconds=30, batch=10, **kwargs)  # type: ignore[arg-type]
    return [(b.webhook_id, [i.event.id for i in b.items]) for b in batches]


def test_the_migration_creates_the_webhook_tables_exactly_as_the_code_maps_them(database: Database) -> None:
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    # Other tables are other migrations' business; a difference in ours names one of them.
    mine = [d for d in differences if any(table in str(d) for table in WEBHOOK_TABLES)]
    assert mine == []


def test_an_event_gets_an_outbox_row_for_each_enabled_subscription_whose_filter_takes_it(
    database: Database,
) -> None:
    everything = _subscribe(database)
    pushes_of_mlp = _subscribe(database, ("push",), ("mlp",))
    deploys = _subscribe(database, ("deploy",))
    disabled = _subscribe(database)
    with database.transaction() as session:
        webhook_store.update(session, disabled, actor="ops", enabled=False)
    first_event = _push(database, "mlp/1")
    other_model = _push(database, "resnet/1")

    assert _outbox(database, pushes_of_mlp) == [first_event]
    assert _outbox(database, deploys) == []
    assert _outbox(database, disabled)[-1] < first_event
    assert _outbox(database, everything)[-2:] == [first_event, other_model]


def test_a_change_that_rolls_back_leaves_neither_its_event_nor_its_outbox_row(database: Database) -> None:
    webhook_id = _subscribe(database)
    before = _outbox(database, webhook_id)
    with pytest.raises(RuntimeError), database.transaction() as session:
        store.append_event(session, actor="alice", action="push", target="mlp/1", outcome="created")
        raise RuntimeError("crash before commit")
    assert _outbox(database, webhook_id) == before


def test_a_claimed_subscription_waits_for_its_lease_to_run_out_then_the_same_event_is_sent_again(
    database: Database,
) -> None:
    webhook_id = _subscribe(database, ("push",))
    event = _push(database)

    assert _claim(database, "plane-a") == [(webhook_id, [event])]
    assert _claim(database, "plane-b") == []
    # plane-a died before recording anything: once its lease has run out, plane-b sends the same event.
    later = utcnow() + timedelta(seconds=31)
    assert _claim(database, "plane-b", now=later) == [(webhook_id, [event])]


def test_the_oldest_undelivered_event_is_never_passed_over_while_it_waits_for_its_retry(
    database: Database,
) -> None:
    webhook_id = _subscribe(database, ("push",))
    first, second = _push(database), _push(database)
    [batch] = _claim(database, "plane-a")
    assert batch == (webhook_id, [first, second])
    with database.transaction() as session:
        outbox_id = session.execute(
            select(WebhookOutboxRow.id).where(WebhookOutboxRow.event_id == first)
        ).scalar_one()
        recorded = webhook_store.record_attempt(
            session,
            webhook_id=webhook_id,
            outbox_id=outbox_id,
            owner="plane-a",
            result=AttemptResult(DeliveryOutcome.FAILED, 503, "HTTP 503", 12),
            policy=POLICY,
            random_fraction=0.0,
        )
    assert not recorded.go_on and not recorded.disabled

    assert _claim(database, "plane-a") == []  # the second is due, but the first comes first
    assert _claim(database, "plane-a", now=utcnow() + timedelta(seconds=61)) == [
        (webhook_id, [first, second])
    ]


def test_a_claim_passes_a_subscription_another_transaction_is_claiming_without_waiting_for_it(
    database: Database,
) -> None:
    webhook_id = _subscribe(database, ("push",))
    _push(database)
    holding = threading.Event()
    release = threading.Event()
    first: list[object] = []

    def slow_claim() -> None:
        with database.transaction() as session:
            first.extend(webhook_store.claim(session, owner="plane-a", lease_seconds=30, batch=10))
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=slow_claim)
    thread.start()
    assert holding.wait(5)
    if database.engine.dialect.name == "postgresql":
        started = time.monotonic()
        assert _claim(database, "plane-b") == []
        assert time.monotonic() - started < 1.0  # SKIP LOCKED: no waiting for plane-a's transaction
        release.set()
    else:
        # SQLite runs one writer at a time: plane-b waits, then finds the lease.
        release.set()
        assert _claim(database, "plane-b") == []
    thread.join()
    assert [b.webhook_id for b in first] == [webhook_id]  # type: ignore[attr-defined]


def test_removing_a_subscription_removes_its_outbox_and_delivery_log_but_not_the_audit_events(
    database: Database,
) -> None:
    webhook_id = _subscribe(database, ("push",))
    event = _push(database)
    [(_, [claimed])] = _claim(database, "plane-a")
    with database.transaction() as session:
        outbox_id = session.execute(select(WebhookOutboxRow.id)).scalar_one()
        webhook_store.record_attempt(
            session,
            webhook_id=webhook_id,
            outbox_id=outbox_id,
            owner="plane-a",
            result=AttemptResult(DeliveryOutcome.DELIVERED, 200, None, 3),
            policy=POLICY,
            random_fraction=0.0,
        )
    assert claimed == event

    with database.transaction() as session:
        webhook_store.delete(session, webhook_id, actor="ops")
    with database.transaction() as session:
        assert session.execute(select(func.count()).select_from(WebhookOutboxRow)).scalar_one() == 0
        assert session.execute(select(func.count()).select_from(WebhookDeliveryRow)).scalar_one() == 0
        actions = [e.action for e in store.list_events(session, limit=100)]
    assert actions == ["webhook.create", "push", "webhook.delete"]
