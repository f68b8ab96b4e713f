"""Golden sets of versions: the one that came in a pushed folder, or one attached afterwards."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from controlplane.artifacts.blobs import BlobStore
from controlplane.artifacts.golden_upload import MAX_GOLDEN_BYTES, read_golden_upload
from controlplane.domain.golden_records import (
    GOLDEN_FILE_NAMES,
    GoldenFormat,
    GoldenRecord,
    GoldenSource,
    format_of_file,
    is_golden_file,
)
from controlplane.domain.models import ManifestEntry, ModelSignature
from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.registry import golden_store, store
from controlplane.registry.db import Database
from controlplane.services import audit

if TYPE_CHECKING:
    from controlplane.domain.golden import GoldenSet


@dataclass(frozen=True)
class FolderGolden:
    """The golden file found in a pushed folder, parsed and checked against its signature."""

    entry: ManifestEntry
    format: GoldenFormat
    golden: GoldenSet


def _parse(data: bytes, fmt: GoldenFormat, signature: ModelSignature) -> GoldenSet:
    # numpy is loaded by the first golden set parsed, not by every control plane that starts.
    from controlplane.artifacts.golden_file import parse_golden

    return parse_golden(data, fmt, signature)


def folder_golden(
    manifest: Iterable[ManifestEntry], signature: ModelSignature, blobs: BlobStore
) -> FolderGolden | None:
    """The folder's ``golden.npz`` / ``golden.json`` (read from the blob store), or None.

    InvalidInput (``invalid_golden_set``) when the folder holds both, or the
    file does not fit the model's signature.
    """
    found = [e for e in manifest if is_golden_file(e.path)]
    if not found:
        return None
    if len(found) > 1:
        raise InvalidInput(
            f"golden set: the folder holds {' and '.join(e.path for e in found)}; keep one of "
            f"{', '.join(GOLDEN_FILE_NAMES)}",
            code="invalid_golden_set",
        )
    entry = found[0]
    if entry.size > MAX_GOLDEN_BYTES:
        raise InvalidInput(
            f"golden set: {entry.path} is {entry.size} bytes; the limit is {MAX_GOLDEN_BYTES}",
            code="invalid_golden_set",
        )
    fmt = format_of_file(entry.path)
    data = blobs.verify(entry.sha256, entry.size).read_bytes()
    try:
        golden = _parse(data, fmt, signature)
    except InvalidInput as exc:
        raise InvalidInput(
            f"{entry.path}: {exc.message}", code=exc.code, details={**(exc.details or {}), "file": entry.path}
        ) from None
    return FolderGolden(entry=entry, format=fmt, golden=golden)


class GoldenSets:
    """Attach and describe golden sets; the file goes to the blob store, its description to the registry."""

    def __init__(self, *, db: Database, blobs: BlobStore, uploads_dir: Path) -> None:
        self.db = db
        self.blobs = blobs
        self.uploads_dir = uploads_dir

    def describe(self, model: str, number: int) -> GoldenRecord:
        """The version's golden set; NotFound (``golden_set_not_found``) when it has none."""
        with self.db.transaction() as session:
            record = golden_store.get_golden(session, model=model, number=number)
        if record is None:
            raise NotFound(f"{model} version {number} has no golden set", code="golden_set_not_found")
        return record

    def attach(self, model: str, number: int, *, upload: Path, fmt: GoldenFormat, actor: str) -> GoldenRecord:
        """Check an uploaded golden file against the version, store and record it (replacing one attached).

        InvalidInput (``invalid_golden_set``) when the file is refused;
        Conflict (``golden_from_folder``) when the version's folder has one.
        """
        target = f"{model}/{number}"
        try:
            with self.db.transaction() as session:
                version = store.get_version(session, model, number)
                existing = golden_store.get_golden(session, model=model, number=number)
            if existing is not None and existing.source is GoldenSource.FOLDER:
                raise Conflict(
                    f"{model} version {number} has a golden set from its pushed folder (covered by its "
                    "digest and signature); it cannot be replaced",
                    code="golden_from_folder",
                    details={"digest": existing.digest},
                )
            data = read_golden_upload(upload)
            golden = _parse(data, fmt, version.signature)
        except (InvalidInput, Conflict) as exc:
            audit.record(
                self.db,
                actor=actor,
                action="golden.attach",
                target=target,
                outcome="rejected",
                details={"code": exc.code, "error": exc.message},
            )
            raise
        digest = hashlib.sha256(data).hexdigest()
        # Held from storing the blob until the row is committed: gc never takes it in between.
        with self.blobs.writing():
            self._store(data, digest)
            with self.db.transaction() as session:
                return golden_store.record_attached(
                    session,
                    model=model,
                    number=number,
                    digest=digest,
                    size=len(data),
                    fmt=fmt,
                    rows=golden.rows,
                    outputs=golden.effective_tolerances(),
                    actor=actor,
                )

    def _store(self, data: bytes, digest: str) -> None:
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        staged = self.uploads_dir / f"{uuid.uuid4().hex}.golden"
        try:
            with open(staged, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            self.blobs.put(staged, digest)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
