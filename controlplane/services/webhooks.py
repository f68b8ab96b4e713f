"""Webhooks: the admins' subscriptions, and the worker that delivers the outbox to them.

Every audit event that matches an enabled subscription has an outbox row,
written with the event (``store.append_event``). The worker leases a
subscription with due rows, sends them oldest first, each signed, and
records every attempt: a 2xx answer delivers the row, anything else (a
network error, a refused target, a redirect) schedules a retry with
exponential backoff, and the failure that reaches the limit disables the
subscription (audited ``webhook.disabled``) until an admin enables it again.
Delivery is at least once: a control plane killed after a send but before
its record sends the event again once the lease has run out, with the same
event id, which is what a receiver deduplicates on.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from controlplane.domain.webhooks import (
    Delivery,
    DeliveryBatch,
    DeliveryOutcome,
    EventFilter,
    RetryPolicy,
    Webhook,
    delivery_headers,
    event_payload,
    new_secret,
    validate_models,
    validate_patterns,
    validate_secret,
)
from controlplane.errors import ControlPlaneError
from controlplane.registry import webhook_store
from controlplane.registry.db import Database
from controlplane.services.webhook_sender import WebhookSender
from controlplane.services.webhook_targets import TargetChecker

log = logging.getLogger("controlplane.webhooks")
# After a failed claim (the database away), so that the log gets a line every few seconds, not every poll.
ERROR_PAUSE_SECONDS = 2.0


class Webhooks:
    """Subscriptions as the admins manage them. Targets are checked when a URL is set or enabled again."""

    def __init__(self, *, db: Database, targets: TargetChecker) -> None:
        self.db = db
        self.targets = targets

    def create(
        self,
        *,
        url: str,
        events: Iterable[str],
        models: Iterable[str] | None,
        secret: str | None,
        actor: str,
    ) -> tuple[Webhook, str]:
        """Subscribe ``url``; return the subscription and its secret (generated when none is given)."""
        event_filter = EventFilter(validate_patterns(events), validate_models(models))
        chosen = validate_secret(secret) if secret is not None else new_secret()
        url = url.strip()
        self.targets.check(url)
        with self.db.transaction() as session:
            webhook = webhook_store.create(
                session, url=url, event_filter=event_filter, secret=chosen, created_by=actor
            )
        return webhook, chosen

    def list_all(self) -> list[Webhook]:
        with self.db.transaction() as session:
            return webhook_store.list_all(session)

    def get(self, webhook_id: int) -> Webhook:
        with self.db.transaction() as session:
            return webhook_store.get(session, webhook_id)

    def update(
        self,
        webhook_id: int,
        *,
        actor: str,
        url: str | None = None,
        events: Iterable[str] | None = None,
        models: Iterable[str] | None = None,
        all_models: bool = False,
        secret: str | None = None,
        enabled: bool | None = None,
    ) -> Webhook:
        """Change what is given; ``all_models`` drops the model list. Enabling clears the failures."""
        url = url.strip() if url is not None else None
        if secret is not None:
            validate_secret(secret)
        with self.db.transaction() as session:
            current = webhook_store.get(session, webhook_id)
        event_filter = None
        if events is not None or models is not None or all_models:
            chosen_models = current.filter.models
            if all_models:
                chosen_models = None
            elif models is not None:
                chosen_models = validate_models(models)
            event_filter = EventFilter(
                validate_patterns(events) if events is not None else current.filter.events, chosen_models
            )
        if url is not None or (enabled and not current.enabled):
            self.targets.check(url if url is not None else current.url)
        with self.db.transaction() as session:
            return webhook_store.update(
                session,
                webhook_id,
                actor=actor,
                url=url,
                event_filter=event_filter,
                secret=secret,
                enabled=enabled,
            )

    def remove(self, webhook_id: int, *, actor: str) -> None:
        with self.db.transaction() as session:
            webhook_store.delete(session, webhook_id, actor=actor)

    def deliveries(self, webhook_id: int, *, before: int | None = None, limit: int = 50) -> list[Delivery]:
        """The delivery log of a subscription, newest first."""
        with self.db.transaction() as session:
            return webhook_store.deliveries(session, webhook_id, before=before, limit=limit)


@dataclass(frozen=True)
class DeliverySettings:
    """How the worker paces itself."""

    lease_seconds: float = 30.0
    """How long a claim of a subscription lasts: longer than an attempt, shorter than a tolerable stall
    after a crash (a killed worker's subscriptions wait this long)."""
    batch: int = 50
    """Events of one subscription sent under one claim."""
    poll_seconds: float = 0.5
    workers: int = 4
    """Subscriptions delivered at the same time (a slow receiver holds up only its own)."""


def _owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class WebhookDelivery:
    """The delivery worker: claims due outbox rows, sends them, records every attempt."""

    def __init__(
        self,
        *,
        db: Database,
        sender: WebhookSender,
        policy: RetryPolicy,
        settings: DeliverySettings | None = None,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self.db = db
        self.sender = sender
        self.policy = policy
        self.settings = settings or DeliverySettings()
        self.owner = owner or _owner_name()
        self.clock = clock
        self.random_fraction = random_fraction
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="webhook")
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Claim what is due and deliver it; return how many attempts were made (blocks until done)."""
        return sum(f.result() for f in self._dispatch(self.settings.workers))

    def start(self, stop: threading.Event | None = None) -> threading.Thread:
        """Run the worker in a daemon thread until ``stop`` is set or ``stop()`` is called."""
        self._thread = threading.Thread(target=self.run_forever, args=(stop,), name="webhooks", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; wait for the attempts under way (each within its deadline) to be recorded."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.sender.close()

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Claim whenever a worker is free; wait for a batch to end or the poll interval in between."""
        in_flight: set[Future[int]] = set()
        while not self._stop.is_set() and not (stop is not None and stop.is_set()):
            in_flight = {f for f in in_flight if not f.done()}
            started: Sequence[Future[int]] = ()
            capacity = self.settings.workers - len(in_flight)
            if capacity > 0:
                try:
                    started = self._dispatch(capacity)
                except ControlPlaneError as exc:
                    log.warning("webhook delivery: cannot claim due events: %s", exc.message)
                    self._stop.wait(ERROR_PAUSE_SECONDS)
                except Exception:
                    log.exception("webhook delivery: claiming failed unexpectedly")
                    self._stop.wait(ERROR_PAUSE_SECONDS)
                in_flight.update(started)
            if started:
                continue
            if in_flight:
                wait(in_flight, timeout=self.settings.poll_seconds, return_when=FIRST_COMPLETED)
            else:
                self._stop.wait(self.settings.poll_seconds)

    def _dispatch(self, capacity: int) -> list[Future[int]]:
        with self.db.transaction() as session:
            batches = webhook_store.claim(
                session,
                owner=self.owner,
                lease_seconds=self.settings.lease_seconds,
                batch=self.settings.batch,
                max_batches=capacity,
            )
        return [self._pool.submit(self._deliver, b) for b in batches]

    def _deliver(self, batch: DeliveryBatch) -> int:
        """Send a batch in order until one attempt fails; return the attempts made."""
        attempts = 0
        released = False
        # An attempt must end (and be recorded) before the lease does, or another worker could send the next.
        lease_ends = time.monotonic() + self.settings.lease_seconds - self.sender.total_timeout - 1.0
        try:
            for item in batch.items:
                if self._stop.is_set() or time.monotonic() > lease_ends:
                    break
                body = event_payload(item.event)
                headers = delivery_headers(
                    batch.secret, event_id=item.event.id, timestamp=int(self.clock()), body=body
                )
                result = self.sender.send(batch.url, body, headers)
                attempts += 1
                with self.db.transaction() as session:
                    recorded = webhook_store.record_attempt(
                        session,
                        webhook_id=batch.webhook_id,
                        outbox_id=item.outbox_id,
                        owner=self.owner,
                        result=result,
                        policy=self.policy,
                        random_fraction=self.random_fraction(),
                    )
                if result.outcome is not DeliveryOutcome.DELIVERED:
                    log.warning(
                        "webhook %d: event %d attempt %d %s: %s",
                        batch.webhook_id,
                        item.event.id,
                        item.attempts + 1,
                        result.outcome.value,
                        result.error,
                    )
                if recorded.disabled:
                    log.warning("webhook %d disabled after repeated failures", batch.webhook_id)
                if not recorded.go_on:
                    released = True
                    break
        except ControlPlaneError as exc:
            log.warning("webhook %d: delivery interrupted: %s", batch.webhook_id, exc.message)
        except Exception:
            log.exception("webhook %d: delivery failed unexpectedly", batch.webhook_id)
        if not released:
            try:
                with self.db.transaction() as session:
                    webhook_store.release(session, batch.webhook_id, owner=self.owner)
            except ControlPlaneError as exc:
                # The lease runs out on its own.
                log.warning("webhook %d: cannot release its claim: %s", batch.webhook_id, exc.message)
        return attempts
