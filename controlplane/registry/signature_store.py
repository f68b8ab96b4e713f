"""Signatures and per-model policies in the registry. Functions flush; the caller owns the transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.domain.policy import ModelPolicy, SignatureRecord
from controlplane.registry import store
from controlplane.registry.store import get_model_row, get_version_row
from controlplane.registry.tables import ModelPolicyRow, ModelRow, SignatureRow, utcnow


def attach_signature(
    session: Session,
    *,
    model: str,
    number: int,
    method: str,
    identity: dict[str, Any],
    statement: bytes,
    statement_sha256: str,
    bundle: bytes,
    files: dict[str, str],
    actor: str,
) -> SignatureRecord:
    """Record a verified signature for a version (replacing an earlier one)."""
    version = get_version_row(session, get_model_row(session, model), number)
    row = session.execute(
        select(SignatureRow).where(SignatureRow.version_id == version.id)
    ).scalar_one_or_none()
    if row is None:
        row = SignatureRow(version_id=version.id)
        session.add(row)
    row.method = method
    row.identity = identity
    row.statement = statement
    row.statement_sha256 = statement_sha256
    row.bundle = bundle
    row.files = files
    row.verified_at = utcnow()
    session.flush()
    store.append_event(
        session,
        actor=actor,
        action="signature.attach",
        target=f"{model}/{number}",
        outcome="verified",
        details={"method": method, "identity": identity, "statement_sha256": statement_sha256},
    )
    return SignatureRecord(method=method, identity=identity, statement_sha256=statement_sha256, files=files)


def get_signature(session: Session, *, model: str, number: int) -> SignatureRecord | None:
    version = get_version_row(session, get_model_row(session, model), number)
    row = session.execute(
        select(SignatureRow).where(SignatureRow.version_id == version.id)
    ).scalar_one_or_none()
    if row is None:
        return None
    return SignatureRecord(
        method=row.method, identity=row.identity, statement_sha256=row.statement_sha256, files=row.files
    )


def get_policy(session: Session, model: str) -> ModelPolicy | None:
    """The model's own policy; None if it has none or the model does not exist yet."""
    found = session.execute(select(ModelRow.id).where(ModelRow.name == model)).scalar_one_or_none()
    if found is None:
        return None
    row = session.get(ModelPolicyRow, found)
    if row is None:
        return None
    return ModelPolicy(
        require_signature=row.require_signature,
        allowed_signers=tuple(row.allowed_signers) if row.allowed_signers is not None else None,
        allow_code_backends=row.allow_code_backends,
        code_backends_require_signature=row.code_backends_require_signature,
        require_approval=row.require_approval,
        approval_timeout_seconds=row.approval_timeout_seconds,
    )


def set_policy(session: Session, model: str, policy: ModelPolicy, *, actor: str) -> ModelPolicy:
    """Set a model's policy; the model is created if it has no version yet (a policy may precede a push)."""
    store.ensure_model_row(session, model)
    model_row = get_model_row(session, model, lock=True)
    row = session.get(ModelPolicyRow, model_row.id)
    if row is None:
        row = ModelPolicyRow(model_id=model_row.id)
        session.add(row)
    row.require_signature = policy.require_signature
    row.allowed_signers = list(policy.allowed_signers) if policy.allowed_signers is not None else None
    row.allow_code_backends = policy.allow_code_backends
    row.code_backends_require_signature = policy.code_backends_require_signature
    row.require_approval = policy.require_approval
    row.approval_timeout_seconds = policy.approval_timeout_seconds
    row.updated_at = utcnow()
    session.flush()
    store.append_event(
        session,
        actor=actor,
        action="policy.set",
        target=model,
        outcome="set",
        details={
            "require_signature": policy.require_signature,
            "allowed_signers": row.allowed_signers,
            "allow_code_backends": policy.allow_code_backends,
            "code_backends_require_signature": policy.code_backends_require_signature,
            "require_approval": policy.require_approval,
            "approval_timeout_seconds": policy.approval_timeout_seconds,
        },
    )
    return policy
