"""Webhook endpoints (admin only): subscriptions and their delivery log. A secret is shown once."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from controlplane.api.auth import Authenticator
from controlplane.domain.auth import Permission
from controlplane.domain.limits import MAX_ID
from controlplane.domain.webhook_targets import MAX_URL_LENGTH
from controlplane.domain.webhooks import MAX_MODELS, MAX_PATTERNS, MAX_SECRET_LENGTH, Delivery, Webhook
from controlplane.services.webhooks import Webhooks

WebhookId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
Pattern = Annotated[str, Field(max_length=64)]
ModelName = Annotated[str, Field(max_length=128)]
REFUSED: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "The URL is malformed (`invalid_webhook_url`) or resolves to an address deliveries "
        "may not reach (`webhook_target_refused`: loopback, private, link-local, CGNAT, multicast...)."
    }
}


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL_LENGTH, description="http(s) URL the events are POSTed to.")
    events: list[Pattern] = Field(
        default_factory=lambda: ["*"],
        max_length=MAX_PATTERNS,
        description="Action patterns: an action (`push`), a family (`rollout.*`) or `*`.",
    )
    models: list[ModelName] | None = Field(
        default=None, max_length=MAX_MODELS, description="Only events about these models; null: every model."
    )
    secret: str | None = Field(
        default=None,
        max_length=MAX_SECRET_LENGTH,
        description="Signing secret (16-256 characters); generated and returned once when left out.",
    )


class WebhookPatchIn(BaseModel):
    """What to change; fields left out keep their value (``models: null`` means every model)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    events: list[Pattern] | None = Field(default=None, max_length=MAX_PATTERNS)
    models: list[ModelName] | None = Field(default=None, max_length=MAX_MODELS)
    secret: str | None = Field(default=None, max_length=MAX_SECRET_LENGTH)
    enabled: bool | None = Field(
        default=None,
        description="true re-enables a disabled subscription (failures cleared, retried at once).",
    )


class WebhookOut(BaseModel):
    id: int
    url: str
    events: list[str]
    models: list[str] | None
    enabled: bool
    disabled_reason: str | None
    consecutive_failures: int
    pending: int = Field(description="Events not delivered yet.")
    created_by: str
    created_at: datetime


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(description="The signing secret: shown this once, never again.")


class DeliveryOut(BaseModel):
    id: int
    webhook_id: int
    outbox_id: int
    event_id: int
    attempt: int
    at: datetime
    status_code: int | None
    outcome: str
    error: str | None
    duration_ms: int


def webhook_out(w: Webhook) -> WebhookOut:
    return WebhookOut(
        id=w.id,
        url=w.url,
        events=list(w.filter.events),
        models=list(w.filter.models) if w.filter.models is not None else None,
        enabled=w.enabled,
        disabled_reason=w.disabled_reason,
        consecutive_failures=w.consecutive_failures,
        pending=w.pending,
        created_by=w.created_by,
        created_at=w.created_at,
    )


def delivery_out(d: Delivery) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        webhook_id=d.webhook_id,
        outbox_id=d.outbox_id,
        event_id=d.event_id,
        attempt=d.attempt,
        at=d.at,
        status_code=d.status_code,
        outcome=d.outcome.value,
        error=d.error,
        duration_ms=d.duration_ms,
    )


def webhooks_router(webhooks: Webhooks, auth: Authenticator) -> APIRouter:
    """Routes under /v1/webhooks; every one needs an admin token (URLs and the log are the admins')."""
    router = APIRouter(tags=["webhooks"])
    Admin = Annotated[str, Depends(auth.require(Permission.ADMIN))]

    @router.post("/v1/webhooks", response_model=WebhookCreatedOut, status_code=201, responses=REFUSED)
    def create_webhook(body: WebhookIn, actor: Admin) -> WebhookCreatedOut:
        """Subscribe a URL to audit events; the answer holds the signing secret, shown only here."""
        webhook, secret = webhooks.create(
            url=body.url, events=body.events, models=body.models, secret=body.secret, actor=actor
        )
        return WebhookCreatedOut(**webhook_out(webhook).model_dump(), secret=secret)

    @router.get("/v1/webhooks", response_model=list[WebhookOut])
    def list_webhooks(_actor: Admin) -> list[WebhookOut]:
        """Every subscription (without secrets), oldest first."""
        return [webhook_out(w) for w in webhooks.list_all()]

    @router.get("/v1/webhooks/{webhook_id}", response_model=WebhookOut)
    def get_webhook(webhook_id: WebhookId, _actor: Admin) -> WebhookOut:
        return webhook_out(webhooks.get(webhook_id))

    @router.patch("/v1/webhooks/{webhook_id}", response_model=WebhookOut, responses=REFUSED)
    def patch_webhook(webhook_id: WebhookId, body: WebhookPatchIn, actor: Admin) -> WebhookOut:
        """Change a subscription: URL, filter, secret, or enabled (true re-enables a disabled one)."""
        return webhook_out(
            webhooks.update(
                webhook_id,
                actor=actor,
                url=body.url,
                events=body.events,
                models=body.models,
                all_models="models" in body.model_fields_set and body.models is None,
                secret=body.secret,
                enabled=body.enabled,
            )
        )

    @router.delete("/v1/webhooks/{webhook_id}", status_code=204, response_class=Response)
    def delete_webhook(webhook_id: WebhookId, actor: Admin) -> Response:
        """Remove a subscription, its undelivered events and its delivery log."""
        webhooks.remove(webhook_id, actor=actor)
        return Response(status_code=204)

    @router.get("/v1/webhooks/{webhook_id}/deliveries", response_model=list[DeliveryOut])
    def list_deliveries(
        webhook_id: WebhookId,
        _actor: Admin,
        before: Annotated[
            int | None, Query(ge=1, le=MAX_ID, description="Only deliveries older than this id.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[DeliveryOut]:
        """The delivery log, newest first; page back with ``before`` = the last id seen."""
        return [delivery_out(d) for d in webhooks.deliveries(webhook_id, before=before, limit=limit)]

    return router
