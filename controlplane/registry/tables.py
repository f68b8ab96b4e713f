"""SQLAlchemy table mappings of the registry. Rows never leave ``controlplane.registry``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` as a timezone-aware UTC datetime, as every entity carries it.

    SQLite hands back naive datetimes even for ``timezone=True`` columns; they were written as UTC.
    """
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # The per-model version counter: incremented with UPDATE ... RETURNING
    # under the row lock, so concurrent pushes get distinct numbers.
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    versions: Mapped[list[VersionRow]] = relationship(back_populates="model")


class VersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "number", name="uq_model_versions_model_number"),
        UniqueConstraint("model_id", "digest", name="uq_model_versions_model_digest"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    source_version_dir: Mapped[str] = mapped_column(String(32))
    signature: Mapped[dict[str, Any]] = mapped_column(JSON)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    model: Mapped[ModelRow] = relationship(back_populates="versions")
    files: Mapped[list[ManifestRow]] = relationship(
        back_populates="version", order_by="ManifestRow.path", cascade="all, delete-orphan"
    )


class ManifestRow(Base):
    __tablename__ = "manifest_entries"
    __table_args__ = (UniqueConstraint("version_id", "path", name="uq_manifest_entries_version_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(4096))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))

    version: Mapped[VersionRow] = relationship(back_populates="files")


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("model_id", "pool", name="uq_deployments_model_pool"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    pool: Mapped[str] = mapped_column(String(32))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    state: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class AuditEventRow(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    outcome: Mapped[str] = mapped_column(String(16))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class PoolRow(Base):
    """Desired proxy weight of each pool; the reconciler makes HAProxy match it."""

    __tablename__ = "pools"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    weight: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class PoolClaimRow(Base):
    """The operation that holds a pool: at most one row per pool, so taking it is an INSERT that can lose."""

    __tablename__ = "pool_claims"

    pool: Mapped[str] = mapped_column(ForeignKey("pools.name", ondelete="CASCADE"), primary_key=True)
    holder_kind: Mapped[str] = mapped_column(String(16))
    holder_id: Mapped[str] = mapped_column(String(64), index=True)
    owner: Mapped[str] = mapped_column(String(200))
    taken_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RolloutRow(Base):
    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    strategy: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    # True until the rollout ends. Which pools it may change is held in pool_claims.
    active: Mapped[bool] = mapped_column(default=True)
    pool_pair: Mapped[str] = mapped_column(String(80))
    source_pool: Mapped[str] = mapped_column(String(32))
    target_pool: Mapped[str] = mapped_column(String(32))
    steps: Mapped[list[int]] = mapped_column(JSON)
    step_seconds: Mapped[float] = mapped_column()
    bake_seconds: Mapped[float] = mapped_column()
    gates: Mapped[dict[str, Any]] = mapped_column(JSON)
    step_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    requested_action: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Set only for a model that requires approval: who approved, when it was decided, its deadline.
    approved_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    approval_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    events: Mapped[list[RolloutEventRow]] = relationship(
        back_populates="rollout", order_by="RolloutEventRow.id", cascade="all, delete-orphan"
    )


class RolloutEventRow(Base):
    __tablename__ = "rollout_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    step_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    weights: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    reason: Mapped[str] = mapped_column(Text, default="")
    measurements: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    rollout: Mapped[RolloutRow] = relationship(back_populates="events")


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SignatureRow(Base):
    """A verified signature of a version: the signed statement and bundle as received."""

    __tablename__ = "version_signatures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), unique=True)
    method: Mapped[str] = mapped_column(String(16))
    identity: Mapped[dict[str, Any]] = mapped_column(JSON)
    statement_sha256: Mapped[str] = mapped_column(String(64))
    statement: Mapped[bytes] = mapped_column(LargeBinary)
    bundle: Mapped[bytes] = mapped_column(LargeBinary)
    files: Mapped[dict[str, str]] = mapped_column(JSON)
    verified_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelPolicyRow(Base):
    __tablename__ = "model_policies"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    require_signature: Mapped[bool | None] = mapped_column(nullable=True)
    allowed_signers: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    allow_code_backends: Mapped[bool | None] = mapped_column(nullable=True)
    code_backends_require_signature: Mapped[bool | None] = mapped_column(nullable=True)
    require_approval: Mapped[bool] = mapped_column(default=False, server_default=false())
    approval_timeout_seconds: Mapped[int] = mapped_column(Integer, default=86_400, server_default="86400")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class GoldenSetRow(Base):
    """A version's golden set: its file (a blob, by digest) and what it holds. One per version."""

    __tablename__ = "golden_sets"
    __table_args__ = (
        CheckConstraint("source IN ('folder', 'attached')", name="source"),
        CheckConstraint("format IN ('npz', 'json')", name="format"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), unique=True)
    digest: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(8))
    rows: Mapped[int] = mapped_column(Integer)
    # Every expected output with its tolerance: {name: {"atol": x, "rtol": y}}.
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelAliasRow(Base):
    """Where an alias of a model points now: one row per model and alias name."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("model_id", "name", name="uq_model_aliases_model_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AliasHistoryRow(Base):
    """Every move of an alias: the version it then pointed to (None: deleted) and the one before."""

    __tablename__ = "alias_history"
    __table_args__ = (Index("ix_alias_history_model_name_at", "model_id", "name", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    previous: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    # The rollout whose success moved it (production), kept when that rollout's row is gone.
    rollout_id: Mapped[int | None] = mapped_column(
        ForeignKey("rollouts.id", ondelete="SET NULL"), nullable=True
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookRow(Base):
    """A webhook subscription: where matching audit events go, signed with its secret."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    # Action patterns ("push", "rollout.*", "*") and, if not null, the models the events must concern.
    events: Mapped[list[str]] = mapped_column(JSON)
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    secret: Mapped[str] = mapped_column(String(256))
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    # The worker sending this subscription's events now: one at a time, so they arrive in order.
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class WebhookOutboxRow(Base):
    """An audit event one subscription has to receive, written in the transaction of the event itself."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (Index("ix_webhook_outbox_pending", "webhook_id", "delivered_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("audit_events.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebhookDeliveryRow(Base):
    """The delivery log: one row per attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("outcome IN ('delivered', 'failed', 'refused')", name="outcome"),
        Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("webhook_outbox.id", ondelete="CASCADE"), index=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("audit_events.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer)
