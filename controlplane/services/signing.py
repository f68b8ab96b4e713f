"""Signatures and policy: what a version must prove before it may serve."""

from __future__ import annotations

import tempfile
from pathlib import Path

from controlplane.artifacts.blobs import BlobStore
from controlplane.artifacts.model_config import code_runners_of
from controlplane.artifacts.signatures import SignatureRejected, TrustedSigners, verify_folder
from controlplane.domain.models import ModelVersion, validate_model_name
from controlplane.domain.policy import (
    ModelPolicy,
    SignaturePolicy,
    SignatureRecord,
    check_deployable,
    effective_policy,
)
from controlplane.errors import ArtifactCorrupted
from controlplane.files import link_or_copy
from controlplane.registry import signature_store, store
from controlplane.registry.db import Database
from controlplane.services import audit


class Signing:
    """Verifies and records signatures; holds each model's policy and the global one."""

    def __init__(
        self,
        *,
        db: Database,
        blobs: BlobStore,
        uploads_dir: Path,
        trusted: TrustedSigners | None = None,
        global_policy: SignaturePolicy | None = None,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.uploads_dir = uploads_dir
        self.trusted = trusted or TrustedSigners()
        self.global_policy = global_policy or SignaturePolicy()

    def attach_signature(self, model: str, number: int, *, bundle: Path, actor: str) -> SignatureRecord:
        """Verify a signature bundle against the version's stored files and record it.

        The folder that is verified is rebuilt from the read-only blob store
        under the paths that were pushed, so what is checked is what will be
        staged. SignatureRejected names the file or rule that failed.
        """
        with self.db.transaction() as session:
            version = store.get_version(session, model, number)
        with tempfile.TemporaryDirectory(dir=self.uploads_dir, prefix="verify-") as tmp:
            folder = Path(tmp) / model
            for entry in version.manifest:
                dest = folder / entry.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(self.blobs.verify(entry.sha256, entry.size), dest)
            try:
                verified = verify_folder(folder, bundle, self.trusted)
            except SignatureRejected as exc:
                audit.record(
                    self.db,
                    actor=actor,
                    action="signature.attach",
                    target=f"{model}/{number}",
                    outcome="rejected",
                    details={"error": exc.message},
                )
                raise
        with self.db.transaction() as session:
            return signature_store.attach_signature(
                session,
                model=model,
                number=number,
                method=str(verified.method),
                identity=verified.identity.as_dict(),
                statement=verified.statement_bytes,
                statement_sha256=verified.statement_sha256,
                bundle=verified.bundle_bytes,
                files=dict(verified.files),
                actor=actor,
            )

    def signature_of(self, model: str, number: int) -> SignatureRecord | None:
        with self.db.transaction() as session:
            return signature_store.get_signature(session, model=model, number=number)

    def policy_of(self, model: str) -> tuple[ModelPolicy | None, SignaturePolicy]:
        """The model's own settings and the policy in force for it."""
        with self.db.transaction() as session:
            own = signature_store.get_policy(session, model)
        return own, effective_policy(self.global_policy, own)

    def set_policy(self, model: str, policy: ModelPolicy, *, actor: str) -> ModelPolicy:
        """Set a model's own policy (the model need not have a version yet)."""
        validate_model_name(model)
        policy.validate()
        with self.db.transaction() as session:
            return signature_store.set_policy(session, model, policy, actor=actor)

    def check_deployable(self, model: str, number: int) -> None:
        """PolicyViolation unless ``number`` meets its model's policy (signatures, code backends)."""
        with self.db.transaction() as session:
            version = store.get_version(session, model, number)
        _own, policy = self.policy_of(model)
        check_deployable(
            model=model,
            number=number,
            manifest=version.manifest,
            signature=self.signature_of(model, number),
            policy=policy,
            code_runners=self._code_runners(version),
        )

    def _code_runners(self, version: ModelVersion) -> tuple[str, ...]:
        """What in the version's stored config.pbtxt runs folder code, read from the verified blob.

        Read at every check rather than stored at push, so versions pushed
        before these rules existed are judged by them too.
        """
        entry = next((e for e in version.manifest if e.path == "config.pbtxt"), None)
        if entry is None:
            raise ArtifactCorrupted(f"{version.model} version {version.number} has no config.pbtxt")
        return code_runners_of(self.blobs.verify(entry.sha256, entry.size).read_bytes())
