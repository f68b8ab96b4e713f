"""Response bodies of the REST API (what OpenAPI documents)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter, field_validator

from controlplane.domain import models as d
from controlplane.domain.limits import MAX_LIST_ITEMS, has_control_characters
from controlplane.domain.policy import (
    DEFAULT_APPROVAL_TIMEOUT_SECONDS,
    MAX_APPROVAL_TIMEOUT_SECONDS,
    MIN_APPROVAL_TIMEOUT_SECONDS,
    ModelPolicy,
    SignaturePolicy,
    SignatureRecord,
)
from controlplane.registry.store import VersionSummary
from controlplane.services.recycle import PoolStatus, RecycleOutcome


class TensorOut(BaseModel):
    name: str
    data_type: str
    dims: list[int]


class SignatureOut(BaseModel):
    backend: str
    max_batch_size: int
    inputs: list[TensorOut]
    outputs: list[TensorOut]


class ManifestEntryOut(BaseModel):
    path: str
    size: int
    sha256: str


class MetadataOut(BaseModel):
    labels: dict[str, str]
    metrics: dict[str, float]
    api_version: str | None


class VersionSummaryOut(BaseModel):
    model: str
    version: int
    digest: str
    state: str
    size_bytes: int
    created_at: datetime
    last_error: str | None
    metadata: MetadataOut


class DifferenceOut(BaseModel):
    code: str
    tensor: str | None
    detail: str
    breaking: bool


class CompatibilityOut(BaseModel):
    """The version's interface against the version serving production."""

    serving_version: int
    compatible: bool
    differences: list[DifferenceOut]


class VersionOut(VersionSummaryOut):
    signature: SignatureOut
    manifest: list[ManifestEntryOut]
    compatibility: CompatibilityOut | None = Field(
        default=None, description="Against the version serving production; null when none serves."
    )


class MetadataPatchIn(BaseModel):
    """Metrics and labels to set (a value) or remove (null); names not given keep their value."""

    model_config = ConfigDict(extra="forbid")

    metrics: dict[Annotated[str, Field(max_length=128)], Annotated[float, Strict()] | None] = Field(
        default_factory=dict, max_length=MAX_LIST_ITEMS
    )
    labels: dict[Annotated[str, Field(max_length=1024)], Annotated[str, Field(max_length=1024)] | None] = (
        Field(default_factory=dict, max_length=MAX_LIST_ITEMS)
    )
    api_version: str | None = Field(
        default=None, max_length=64, description="Fixed at push: a change is refused (api_version_fixed)."
    )


class DeploymentOut(BaseModel):
    model: str
    pool: str
    version: int
    state: str
    updated_at: datetime


class PoolOut(BaseModel):
    name: str
    weight: int
    release: dict[str, int]
    ready: bool
    loads_since_recycle: int
    memory_bytes: int | None
    held_by: str | None


class RecycleOut(BaseModel):
    pool: str
    seconds: float
    memory_before: int | None
    memory_after: int | None
    models: list[str]


class DeployPendingOut(BaseModel):
    status: str
    message: str
    rollout: int
    state: str


class ModelOut(BaseModel):
    name: str
    created_at: datetime
    latest_version: int
    deployments: list[DeploymentOut]


class PushOut(VersionOut):
    created: bool


class EventOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    details: dict[str, Any]


class HealthOut(BaseModel):
    status: str
    model: str | None = None
    reason: str | None = None
    pools: dict[str, str] | None = None
    checks: dict[str, str] | None = None


class SigningOut(BaseModel):
    method: str
    identity: dict[str, Any]
    statement_sha256: str
    files: dict[str, str]


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    require_signature: bool | None = None
    allowed_signers: list[Annotated[str, Field(max_length=512)]] | None = Field(default=None, max_length=100)
    allow_code_backends: bool | None = Field(
        default=None, description="Versions may use backends that run code from the model folder (python)."
    )
    code_backends_require_signature: bool | None = Field(
        default=None, description="Such versions need a verified signature to be deployed (default true)."
    )
    require_approval: bool = Field(
        default=False,
        description="Rollouts and deploys wait in pending_approval until another principal approves them.",
    )
    approval_timeout_seconds: int = Field(
        default=DEFAULT_APPROVAL_TIMEOUT_SECONDS,
        ge=MIN_APPROVAL_TIMEOUT_SECONDS,
        le=MAX_APPROVAL_TIMEOUT_SECONDS,
        description="How long a request may wait for approval before it expires.",
    )

    @field_validator("allowed_signers")
    @classmethod
    def _printable(cls, value: list[str] | None) -> list[str] | None:
        for signer in value or ():
            if has_control_characters(signer):
                raise ValueError("a signer name may not hold control characters")
        return value


class PolicyOut(BaseModel):
    require_signature: bool | None
    allowed_signers: list[str] | None
    allow_code_backends: bool | None = None
    code_backends_require_signature: bool | None = None
    require_approval: bool = False
    approval_timeout_seconds: int = DEFAULT_APPROVAL_TIMEOUT_SECONDS
    effective: dict[str, Any]


def signing_out(record: SignatureRecord) -> SigningOut:
    return SigningOut(
        method=record.method,
        identity=dict(record.identity),
        statement_sha256=record.statement_sha256,
        files=dict(record.files),
    )


def policy_out(own: ModelPolicy | None, effective: SignaturePolicy) -> PolicyOut:
    # Approval has no global setting: a model without a policy requires none.
    approval = own or ModelPolicy()
    return PolicyOut(
        require_signature=own.require_signature if own else None,
        allowed_signers=list(own.allowed_signers) if own and own.allowed_signers is not None else None,
        allow_code_backends=own.allow_code_backends if own else None,
        code_backends_require_signature=own.code_backends_require_signature if own else None,
        require_approval=approval.require_approval,
        approval_timeout_seconds=approval.approval_timeout_seconds,
        effective={
            "require_signature": effective.require_signature,
            "allowed_signers": list(effective.allowed_signers),
            "allow_code_backends": effective.allow_code_backends,
            "code_backends_require_signature": effective.code_backends_require_signature,
            "require_approval": approval.require_approval,
            "approval_timeout_seconds": approval.approval_timeout_seconds,
        },
    )


def version_summary(v: d.ModelVersion | VersionSummary) -> VersionSummaryOut:
    return VersionSummaryOut(
        model=v.model,
        version=v.number,
        digest=v.digest,
        state=v.state.value,
        size_bytes=v.size_bytes,
        created_at=v.created_at,
        last_error=v.last_error,
        metadata=MetadataOut(**v.metadata.as_dict()),
    )


def version_out(v: d.ModelVersion, compatibility: dict[str, Any] | None = None) -> VersionOut:
    """A version; ``compatibility`` as ``ServingComparison.as_dict()`` (None: nothing serves)."""
    return VersionOut(
        **dict(version_summary(v)),
        signature=SignatureOut(**v.signature.as_dict()),
        manifest=[ManifestEntryOut(path=e.path, size=e.size, sha256=e.sha256) for e in v.manifest],
        compatibility=CompatibilityOut(**compatibility) if compatibility is not None else None,
    )


_VERSION_SUMMARIES = TypeAdapter(list[VersionSummaryOut])


def version_json(v: d.ModelVersion, compatibility: dict[str, Any] | None = None) -> bytes:
    """``version_out`` as the JSON body of a response (what FastAPI would send for it, done once)."""
    return version_out(v, compatibility).model_dump_json().encode()


def version_summaries_json(versions: list[VersionSummary]) -> bytes:
    """A JSON list of ``version_summary`` bodies."""
    return _VERSION_SUMMARIES.dump_json([version_summary(v) for v in versions])


def deployment_out(dep: d.Deployment) -> DeploymentOut:
    return DeploymentOut(
        model=dep.model, pool=dep.pool, version=dep.version, state=dep.state.value, updated_at=dep.updated_at
    )


def model_out(m: d.Model) -> ModelOut:
    return ModelOut(
        name=m.name,
        created_at=m.created_at,
        latest_version=m.latest_version,
        deployments=[deployment_out(x) for x in m.deployments],
    )


def event_out(e: d.AuditEvent) -> EventOut:
    return EventOut(
        id=e.id,
        at=e.at,
        actor=e.actor,
        action=e.action,
        target=e.target,
        outcome=e.outcome,
        details=dict(e.details),
    )


def pool_out(p: PoolStatus) -> PoolOut:
    return PoolOut(
        name=p.name,
        weight=p.weight,
        release=dict(p.release),
        ready=p.ready,
        loads_since_recycle=p.loads_since_recycle,
        memory_bytes=p.memory_bytes,
        held_by=p.held_by,
    )


def recycle_out(r: RecycleOutcome) -> RecycleOut:
    return RecycleOut(
        pool=r.pool,
        seconds=round(r.seconds, 3),
        memory_before=r.memory_before,
        memory_after=r.memory_after,
        models=list(r.models),
    )
