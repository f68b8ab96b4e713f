"""Webhook subscriptions: which audit events they receive, how a delivery is signed, when it is retried.

Pure rules, no I/O. A subscription names action patterns (``push``,
``rollout.*``, ``*``) and optionally models; every audit event that matches
gets one outbox row per subscription, written in the transaction of the
change it records, and a worker sends the rows of a subscription in order,
at least once. The receiver checks ``X-Controlplane-Signature``: HMAC-SHA256
with the subscription's secret over ``f"{timestamp}.{body}"``, where the
timestamp (``X-Controlplane-Timestamp``, unix seconds) is the sending time,
so that a replayed delivery can be refused outside a window.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controlplane.domain.limits import has_control_characters
from controlplane.domain.models import AuditEvent, validate_model_name
from controlplane.errors import InvalidInput

EVENT_ID_HEADER = "X-Controlplane-Event-Id"
TIMESTAMP_HEADER = "X-Controlplane-Timestamp"
SIGNATURE_HEADER = "X-Controlplane-Signature"
SIGNATURE_SCHEME = "sha256="
REPLAY_WINDOW_SECONDS = 300

MAX_PATTERNS = 50
MAX_MODELS = 100
MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 256
MAX_ERROR_CHARS = 500
SECRET_PREFIX = "whsec_"

# "*", an action ("push", "rollout.create"), or a family of them ("rollout.*").
_PATTERN = re.compile(r"^(\*|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?)$")


class DeliveryOutcome(enum.StrEnum):
    """What became of one delivery attempt."""

    DELIVERED = "delivered"
    FAILED = "failed"
    REFUSED = "refused"
    """The target resolved to an address deliveries may not reach; nothing was sent."""


def validate_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """The action patterns, each checked and without repeats; InvalidInput (``invalid_webhook_events``)."""
    checked: list[str] = []
    for pattern in patterns:
        if not _PATTERN.fullmatch(pattern) or len(pattern) > 64:
            raise InvalidInput(
                f"event pattern {pattern!r} is not allowed: use '*', an action such as 'push', or a family "
                "such as 'rollout.*'",
                code="invalid_webhook_events",
            )
        if pattern not in checked:
            checked.append(pattern)
    if not checked:
        raise InvalidInput(
            "a webhook needs at least one event pattern ('*' for all)", code="invalid_webhook_events"
        )
    if len(checked) > MAX_PATTERNS:
        raise InvalidInput(
            f"a webhook takes at most {MAX_PATTERNS} event patterns", code="invalid_webhook_events"
        )
    return tuple(checked)


def validate_models(models: Iterable[str] | None) -> tuple[str, ...] | None:
    """The model names (None: every model), each checked; InvalidInput otherwise."""
    if models is None:
        return None
    checked = tuple(dict.fromkeys(validate_model_name(m) for m in models))
    if not checked:
        raise InvalidInput(
            "a webhook's model list may not be empty; leave it out for every model",
            code="invalid_webhook_models",
        )
    if len(checked) > MAX_MODELS:
        raise InvalidInput(f"a webhook names at most {MAX_MODELS} models", code="invalid_webhook_models")
    return checked


def validate_secret(secret: str) -> str:
    """A signing secret chosen by the admin: 16-256 printable characters."""
    if not MIN_SECRET_LENGTH <= len(secret) <= MAX_SECRET_LENGTH or has_control_characters(secret):
        raise InvalidInput(
            f"a webhook secret has {MIN_SECRET_LENGTH} to {MAX_SECRET_LENGTH} printable characters",
            code="invalid_webhook_secret",
        )
    return secret


def new_secret() -> str:
    """A fresh signing secret (256 random bits), shown once."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def action_matches(pattern: str, action: str) -> bool:
    """Whether ``action`` is what ``pattern`` names: ``*`` all, ``rollout.*`` the rollout family."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return action.startswith(pattern[:-1])
    return action == pattern


def event_concerns_model(model: str, *, target: str, details: Mapping[str, Any]) -> bool:
    """Whether an event concerns ``model``: its target is ``model`` or ``model/...``, or details name it."""
    return details.get("model") == model or target == model or target.startswith(f"{model}/")


@dataclass(frozen=True)
class EventFilter:
    """Which audit events a subscription receives: any matching pattern, and one of the models if named."""

    events: tuple[str, ...] = ("*",)
    models: tuple[str, ...] | None = None

    def matches(self, *, action: str, target: str, details: Mapping[str, Any]) -> bool:
        """Whether the event goes to the subscription."""
        if not any(action_matches(p, action) for p in self.events):
            return False
        if self.models is None:
            return True
        return any(event_concerns_model(m, target=target, details=details) for m in self.models)


def event_payload(event: AuditEvent) -> bytes:
    """The JSON body of a delivery: the same bytes for every attempt of one event."""
    body = {
        "id": event.id,
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome,
        "actor": event.actor,
        "at": event.at.isoformat(),
        "details": dict(event.details),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``X-Controlplane-Signature``: ``sha256=`` and the hex HMAC-SHA256 of ``f"{timestamp}.{body}"``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return SIGNATURE_SCHEME + mac.hexdigest()


def delivery_headers(secret: str, *, event_id: int, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers that identify and sign one delivery attempt."""
    return {
        EVENT_ID_HEADER: str(event_id),
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }


def verify(
    secret: str,
    *,
    body: bytes,
    timestamp: str,
    signature: str,
    now: float,
    window: float = REPLAY_WINDOW_SECONDS,
) -> bool:
    """What a receiver does: the signature is the body's and the timestamp is within ``window`` of ``now``."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > window:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between failed attempts, and when a subscription is disabled.

    The n-th consecutive failure waits ``base * 2**(n-1)`` seconds, at most
    ``cap``; jitter takes up to ``jitter`` of it off, so receivers that fail
    together do not get their retries at the same instant.
    """

    base_seconds: float = 1.0
    cap_seconds: float = 300.0
    jitter: float = 0.2
    max_failures: int = 5

    def delay(self, failures: int, random_fraction: float) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (``random_fraction`` in [0, 1))."""
        exponent = min(max(failures, 1) - 1, 64)
        scheduled = min(self.cap_seconds, self.base_seconds * 2.0**exponent)
        return scheduled * (1.0 - self.jitter * random_fraction)

    def disables(self, failures: int) -> bool:
        """Whether ``failures`` consecutive failures disable the subscription."""
        return failures >= self.max_failures


def bounded_error(text: str) -> str:
    """An error for the delivery log: one line, at most ``MAX_ERROR_CHARS`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


def outcome_of_status(status: int) -> DeliveryOutcome:
    """A 2xx answer delivers; anything else (a redirect too: it is not followed) fails."""
    return DeliveryOutcome.DELIVERED if 200 <= status < 300 else DeliveryOutcome.FAILED


@dataclass(frozen=True)
class Webhook:
    """A subscription as the API shows it: never its secret."""

    id: int
    url: str
    filter: EventFilter
    enabled: bool
    disabled_reason: str | None
    consecutive_failures: int
    created_by: str
    created_at: datetime
    pending: int = 0
    """Events not delivered yet."""


@dataclass(frozen=True)
class Delivery:
    """One attempt in the delivery log."""

    id: int
    webhook_id: int
    outbox_id: int
    event_id: int
    attempt: int
    at: datetime
    status_code: int | None
    outcome: DeliveryOutcome
    error: str | None
    duration_ms: int


@dataclass(frozen=True)
class OutboxItem:
    """An event waiting for one subscription, with the attempts made so far."""

    outbox_id: int
    attempts: int
    event: AuditEvent


@dataclass(frozen=True)
class DeliveryBatch:
    """What a worker claimed: a subscription's oldest due events, to be sent in order."""

    webhook_id: int
    url: str
    secret: str = field(repr=False)
    items: Sequence[OutboxItem] = ()


@dataclass(frozen=True)
class AttemptResult:
    """How one attempt went: the receiver's status (None when none answered) and the error, if any."""

    outcome: DeliveryOutcome
    status_code: int | None
    error: str | None
    duration_ms: int
