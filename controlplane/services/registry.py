"""The registry's service: push versions, read models, versions and the audit log."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from sqlalchemy.orm import Session

from controlplane.artifacts.archive import ArchiveLimits
from controlplane.artifacts.blobs import BlobStore
from controlplane.artifacts.config_fields import DEFAULT_ALLOWED_BACKENDS
from controlplane.artifacts.ingest import IngestedArtifact, ingest_archive
from controlplane.artifacts.model_config import ConfigReview
from controlplane.domain.golden import GoldenSource
from controlplane.domain.models import (
    AuditEvent,
    Model,
    ModelName,
    ModelVersion,
    VersionMetadata,
    validate_model_name,
)
from controlplane.domain.policy import check_pushable
from controlplane.errors import ControlPlaneError
from controlplane.metrics import PUSHES
from controlplane.registry import golden_store, store
from controlplane.registry.db import Database
from controlplane.services import audit
from controlplane.services.golden import FolderGolden, folder_golden
from controlplane.services.signing import Signing


class Registry:
    """Models and their versions: ingest archives into the blob store, read what is registered."""

    def __init__(
        self,
        *,
        db: Database,
        blobs: BlobStore,
        uploads_dir: Path,
        signing: Signing,
        limits: ArchiveLimits,
        allowed_backends: Collection[str] = DEFAULT_ALLOWED_BACKENDS,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.uploads_dir = uploads_dir
        self.signing = signing
        self.limits = limits
        self.allowed_backends = tuple(allowed_backends)

    def push(
        self, *, model: str, archive: Path, metadata: VersionMetadata, actor: str = "anonymous"
    ) -> tuple[ModelVersion, bool]:
        """Ingest an archive as a new version of ``model`` (or return the identical one)."""
        name = validate_model_name(model)

        def admit(review: ConfigReview) -> None:
            check_pushable(
                model=name, code_runners=review.code_runners, policy=self.signing.policy_of(name)[1]
            )

        # Held from the first stored blob until the version is committed: gc never takes these blobs.
        with self.blobs.writing():
            try:
                artifact = ingest_archive(
                    archive,
                    model_name=name,
                    store=self.blobs,
                    work_dir=self.uploads_dir,
                    limits=self.limits,
                    allowed_backends=self.allowed_backends,
                    admit=admit,
                )
                # Checked against the signature before anything is registered, so a bad one refuses the push.
                golden = folder_golden(artifact.manifest, artifact.signature, self.blobs)
            except ControlPlaneError as exc:
                PUSHES.labels("rejected").inc()
                audit.record(
                    self.db,
                    actor=actor,
                    action="push",
                    target=name,
                    outcome="rejected",
                    details={"code": exc.code, "error": exc.message},
                )
                raise
            version, created = self._register(name, artifact, metadata, actor, golden)
        PUSHES.labels("created" if created else "unchanged").inc()
        return version, created

    def _register(
        self,
        name: ModelName,
        artifact: IngestedArtifact,
        metadata: VersionMetadata,
        actor: str,
        golden: FolderGolden | None = None,
    ) -> tuple[ModelVersion, bool]:
        with self.db.transaction() as session:
            version, created = store.register_version(
                session,
                model=name,
                digest=artifact.digest,
                manifest=artifact.manifest,
                source_version_dir=artifact.source_version_dir,
                signature=artifact.signature,
                metadata=metadata,
            )
            details: dict[str, object] = {"digest": version.digest, "files": len(version.manifest)}
            if golden is not None:
                self._register_golden(session, name, version.number, golden, actor)
                details["golden"] = {"file": golden.entry.path, "rows": golden.golden.rows}
            store.append_event(
                session,
                actor=actor,
                action="push",
                target=f"{name}/{version.number}",
                outcome="created" if created else "unchanged",
                details=details,
            )
        return version, created

    @staticmethod
    def _register_golden(
        session: Session, name: ModelName, number: int, golden: FolderGolden, actor: str
    ) -> None:
        """Record the folder's golden set in the version's transaction (it replaces an attached one)."""
        existing = golden_store.get_golden(session, model=name, number=number)
        if existing is not None and existing.source is GoldenSource.FOLDER:
            return  # the same folder pushed again: its golden set is recorded already
        golden_store.record_golden(
            session,
            model=name,
            number=number,
            digest=golden.entry.sha256,
            size=golden.entry.size,
            fmt=golden.format,
            rows=golden.golden.rows,
            outputs=golden.golden.effective_tolerances(),
            source=GoldenSource.FOLDER,
            actor=actor,
        )

    def list_models(self) -> list[Model]:
        with self.db.transaction() as session:
            return store.list_models(session)

    def get_model(self, model: str) -> Model:
        with self.db.transaction() as session:
            return store.get_model(session, model)

    def list_versions(self, model: str) -> list[ModelVersion]:
        with self.db.transaction() as session:
            return store.list_versions(session, model)

    def get_version(self, model: str, number: int) -> ModelVersion:
        with self.db.transaction() as session:
            return store.get_version(session, model, number)

    def events(
        self,
        *,
        after_id: int = 0,
        limit: int = 100,
        before_id: int | None = None,
        model: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        newest_first: bool = False,
    ) -> list[AuditEvent]:
        """A page of the audit log; ``store.list_events`` says what each filter matches."""
        with self.db.transaction() as session:
            return store.list_events(
                session,
                after_id=after_id,
                limit=limit,
                before_id=before_id,
                model=model,
                actor=actor,
                action=action,
                newest_first=newest_first,
            )
