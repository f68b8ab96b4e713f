"""Ingest of a pushed model folder: extract safely, hash each file, check the config, store.

Nothing here touches the registry or any live repository: the caller
registers the result in one transaction after every check has passed. Blobs
stored for a push that then fails to register are harmless (content-addressed)
and are left for garbage collection.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from controlplane.artifacts.archive import ArchiveLimits, extract_archive, find_model_root
from controlplane.artifacts.blobs import BlobStore, sha256_file
from controlplane.artifacts.model_config import read_signature
from controlplane.domain.models import (
    ManifestEntry,
    ModelSignature,
    manifest_digest,
    version_directory,
)
from controlplane.errors import InvalidModelConfig, PayloadTooLarge


@dataclass(frozen=True)
class IngestedArtifact:
    """A checked model folder whose files are in the blob store."""

    manifest: tuple[ManifestEntry, ...]
    digest: str
    source_version_dir: str
    signature: ModelSignature


class UploadSink:
    """Writes an upload to a fresh file chunk by chunk, refusing more than ``max_bytes``."""

    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{uuid.uuid4().hex}.upload"
        self.max_bytes = max_bytes
        self.size = 0
        self._file = open(self.path, "xb")  # noqa: SIM115 - closed by close()/discard()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(f"upload is larger than the limit of {self.max_bytes} bytes")
        self._file.write(chunk)

    def close(self) -> Path:
        self._file.close()
        return self.path

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def _walk_files(root: Path) -> list[tuple[str, Path]]:
    files = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            full = Path(dirpath) / name
            files.append((full.relative_to(root).as_posix(), full))
    return sorted(files)


def ingest_archive(
    archive: Path,
    *,
    model_name: str,
    store: BlobStore,
    work_dir: Path,
    limits: ArchiveLimits,
) -> IngestedArtifact:
    """Extract ``archive`` into ``work_dir``, check it as a Triton model folder, store its files."""
    work_dir.mkdir(parents=True, exist_ok=True)
    # Files are hashed while they are extracted: one pass over the bytes, not two.
    digests: dict[str, tuple[str, int]] = {}
    extracted = extract_archive(archive, work_dir, limits, digests=digests)
    try:
        root = find_model_root(extracted)
        config_path = root / "config.pbtxt"
        if not config_path.is_file():
            raise InvalidModelConfig("the model folder has no config.pbtxt")
        signature = read_signature(config_path.read_bytes(), model_name=model_name)
        prefix = root.relative_to(extracted).as_posix()

        def digest_of(rel: str, full: Path) -> tuple[str, int]:
            key = rel if prefix == "." else f"{prefix}/{rel}"
            return digests[key] if key in digests else sha256_file(full)

        hashed = [(rel, full, *digest_of(rel, full)) for rel, full in _walk_files(root)]
        manifest = tuple(ManifestEntry(path=rel, size=size, sha256=sha) for rel, _full, sha, size in hashed)
        source_version_dir = version_directory(manifest)
        digest = manifest_digest(manifest)
        for _rel, full, sha, _size in hashed:
            store.put(full, sha)
        return IngestedArtifact(
            manifest=manifest, digest=digest, source_version_dir=source_version_dir, signature=signature
        )
    finally:
        shutil.rmtree(extracted, ignore_errors=True)
