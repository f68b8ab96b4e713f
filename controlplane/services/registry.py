"""The registry's service: push versions, read models, versions and the audit log."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Hashable, Iterator, MutableMapping
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from controlplane.artifacts.archive import ArchiveLimits
from controlplane.artifacts.blobs import BlobStore
from controlplane.artifacts.config_fields import DEFAULT_ALLOWED_BACKENDS
from controlplane.artifacts.ingest import IngestedArtifact, ingest_archive
from controlplane.artifacts.model_config import ConfigReview
from controlplane.domain.compatibility import Compatibility, compare
from controlplane.domain.golden_records import GoldenSource
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
from controlplane.registry.store import VersionContent, VersionHead, VersionSummary
from controlplane.services import audit
from controlplane.services.admission import ServingComparison
from controlplane.services.golden import FolderGolden, folder_golden
from controlplane.services.signing import Signing

# Versions whose content (manifest, interface) is kept in memory, and interface comparisons kept.
CONTENT_CACHE_ENTRIES = 4096
# Answers kept until the next commit: versions, and pages of version lists (up to 1,000 versions each).
VIEW_CACHE_ENTRIES = 1024
PAGE_CACHE_ENTRIES = 64

# A version and its interface against the version serving production (None: none serves).
VersionView = tuple[ModelVersion, ServingComparison | None]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(MutableMapping[K, V]):
    """A thread-safe mapping that keeps the ``max_entries`` most recently used items."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __getitem__(self, key: K) -> V:
        with self._lock:
            value = self._items[key]
            self._items.move_to_end(key)
            return value

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def __delitem__(self, key: K) -> None:
        with self._lock:
            del self._items[key]

    def __iter__(self) -> Iterator[K]:
        with self._lock:
            return iter(list(self._items))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


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
        # What never changes about a version, by row id (checked against the digest read with its state),
        # and the interface comparison of two such contents: reading a version then costs one query.
        self.contents: LruCache[int, VersionContent] = LruCache(CONTENT_CACHE_ENTRIES)
        self.comparisons: LruCache[tuple[int, str, int, str], Compatibility] = LruCache(CONTENT_CACHE_ENTRIES)
        # Whole answers, each with the commit mark taken before it was read: still the answer while no
        # commit happened since (SQLite only; elsewhere every read goes to the database).
        self.commits = store.CommitWatch(lambda: db.engine)
        self.views: LruCache[tuple[str, int], tuple[int, VersionView]] = LruCache(VIEW_CACHE_ENTRIES)
        self.pages: LruCache[tuple[str, int, int, int | None, bool], tuple[int, list[VersionSummary]]] = (
            LruCache(PAGE_CACHE_ENTRIES)
        )

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

    def list_versions(
        self,
        model: str,
        *,
        limit: int = 100,
        after: int = 0,
        before: int | None = None,
        newest_first: bool = False,
    ) -> list[VersionSummary]:
        """A page of ``model``'s versions; ``store.list_version_page`` says which."""
        key = (model, limit, after, before, newest_first)
        mark = self.commits.mark()
        with self.db.reading() as connection:
            page = store.list_version_page(
                connection, model, limit=limit, after=after, before=before, newest_first=newest_first
            )
        if mark is not None:
            self.pages[key] = (mark, page)
        return page

    def unchanged_page(
        self,
        model: str,
        *,
        limit: int = 100,
        after: int = 0,
        before: int | None = None,
        newest_first: bool = False,
    ) -> list[VersionSummary] | None:
        """``list_versions``' answer when it was read before and nothing was committed since, else None.

        Reads no table and never waits (the event loop may call it).
        """
        kept = self.pages.get((model, limit, after, before, newest_first))
        return kept[1] if kept is not None and kept[0] == self.commits.mark() else None

    def get_version(self, model: str, number: int) -> ModelVersion:
        """One version with its manifest."""
        return self.version_view(model, number)[0]

    def unchanged_view(self, model: str, number: int, mark: int | None = None) -> VersionView | None:
        """``version_view``'s answer when it was read before and nothing was committed since, else None.

        ``mark``: one the caller has just taken of ``commits`` (default: one
        taken here), so a request that needs it for something else takes it
        once. Reads no table and never waits (the event loop may call it).
        """
        kept = self.views.get((model, number))
        if kept is None:
            return None
        now = self.commits.mark() if mark is None else mark
        return kept[1] if now is not None and kept[0] == now else None

    def version_view(self, model: str, number: int) -> VersionView:
        """One version, and its interface against the version serving production (None: none serves).

        The same answer as ``admission.compare_with_production``, from one
        query: what can change (state, metadata, what serves) read now, the
        rest from memory once read (``contents``, ``comparisons``).
        """
        mark = self.commits.mark()
        view = self._read_view(model, number)
        if mark is not None:
            self.views[(model, number)] = (mark, view)
        return view

    def _read_view(self, model: str, number: int) -> VersionView:
        with self.db.reading() as connection:
            head, serving = store.version_head_and_serving(connection, model, number)
            contents = self._contents(connection, [h for h in (head, serving) if h is not None])
        version = store.version_entity(model, head, contents[head.id])
        if serving is None:
            return version, None
        key = (serving.id, serving.digest, head.id, head.digest)
        compatibility = self.comparisons.get(key)
        if compatibility is None:
            compatibility = compare(contents[serving.id].signature, version.signature)
            self.comparisons[key] = compatibility
        return version, ServingComparison(
            serving_version=serving.number,
            serving_api_version=serving.metadata.api_version,
            compatibility=compatibility,
        )

    def _contents(self, connection: Connection, heads: list[VersionHead]) -> dict[int, VersionContent]:
        """The content of each version, from memory when its digest matches, else read (and kept)."""
        found: dict[int, VersionContent] = {}
        for head in heads:
            kept = self.contents.get(head.id)
            if kept is not None and kept.digest == head.digest:
                found[head.id] = kept
        missing = [h.id for h in heads if h.id not in found]
        if missing:
            for content in store.version_contents(connection, missing).values():
                self.contents[content.id] = content
                found[content.id] = content
        return found

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
