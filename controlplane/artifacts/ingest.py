"""Ingest of a pushed model folder: extract safely, hash each file, check the config, store.

An ONNX model served by the onnxruntime backend is also checked against its
config (names, types and shapes of its inputs and outputs) before anything is stored.

Nothing here touches the registry or any live repository: the caller
registers the result in one transaction after every check has passed. Blobs
stored for a push that then fails to register are harmless (content-addressed)
and are left for garbage collection.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from controlplane.artifacts.archive import ArchiveLimits, extract_archive, find_model_root
from controlplane.artifacts.blobs import BlobStore, sha256_file
from controlplane.artifacts.config_fields import DEFAULT_ALLOWED_BACKENDS, FolderFiles
from controlplane.artifacts.model_config import ConfigReview, read_signature, review_model_folder
from controlplane.domain.models import (
    ManifestEntry,
    ModelSignature,
    manifest_digest,
    version_directory,
)
from controlplane.errors import (
    ControlPlaneError,
    InsufficientStorage,
    InvalidModelConfig,
    PayloadTooLarge,
)

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _is_disk_full(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return True
        exc = exc.__cause__
    return False


@contextmanager
def disk_full_is_ours() -> Iterator[None]:
    """Turn a full disk or quota (also behind an archive refusal) into InsufficientStorage.

    The client's archive is not at fault when the server's disk is full, so
    it must never be answered as a refused archive.
    """
    try:
        yield
    except (OSError, ControlPlaneError) as exc:
        if _is_disk_full(exc):
            raise InsufficientStorage(
                "the server has no space left to store this upload; try again later"
            ) from exc
        raise


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
        with disk_full_is_ours():
            self._file = open(self.path, "xb")  # noqa: SIM115 - closed by close()/discard()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(f"upload is larger than the limit of {self.max_bytes} bytes")
        with disk_full_is_ours():
            self._file.write(chunk)

    def close(self) -> Path:
        with disk_full_is_ours():
            self._file.close()
        return self.path

    def discard(self) -> None:
        # A full disk fails the flush; the file is removed all the same.
        with contextlib.suppress(OSError):
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
    allowed_backends: Collection[str] = DEFAULT_ALLOWED_BACKENDS,
    admit: Callable[[ConfigReview], None] | None = None,
) -> IngestedArtifact:
    """Extract ``archive`` into ``work_dir``, check it as a Triton model folder, store its files.

    ``admit`` sees the reviewed config before any blob is stored and may refuse it (policy).
    """
    with disk_full_is_ours():
        return _ingest(
            archive,
            model_name=model_name,
            store=store,
            work_dir=work_dir,
            limits=limits,
            allowed_backends=allowed_backends,
            admit=admit,
        )


def _ingest(
    archive: Path,
    *,
    model_name: str,
    store: BlobStore,
    work_dir: Path,
    limits: ArchiveLimits,
    allowed_backends: Collection[str],
    admit: Callable[[ConfigReview], None] | None,
) -> IngestedArtifact:
    work_dir.mkdir(parents=True, exist_ok=True)
    # Files are hashed while they are extracted: one pass over the bytes, not two.
    digests: dict[str, tuple[str, int]] = {}
    extracted = extract_archive(archive, work_dir, limits, digests=digests)
    try:
        root = find_model_root(extracted)
        config_path = root / "config.pbtxt"
        if not config_path.is_file():
            raise InvalidModelConfig("the model folder has no config.pbtxt")
        config_text = config_path.read_bytes()
        read_signature(config_text, model_name=model_name)
        prefix = root.relative_to(extracted).as_posix()

        def digest_of(rel: str, full: Path) -> tuple[str, int]:
            key = rel if prefix == "." else f"{prefix}/{rel}"
            return digests[key] if key in digests else sha256_file(full)

        hashed = [(rel, full, *digest_of(rel, full)) for rel, full in _walk_files(root)]
        manifest = tuple(ManifestEntry(path=rel, size=size, sha256=sha) for rel, _full, sha, size in hashed)
        source_version_dir = version_directory(manifest)
        digest = manifest_digest(manifest)
        review = review_model_folder(
            config_text,
            model_name=model_name,
            files=FolderFiles(paths={e.path for e in manifest}, version_dir=source_version_dir),
            allowed_backends=allowed_backends,
        )
        if review.onnx_model_filename is not None:
            # Imported on the first push it checks, not at start: a control plane that never ingests
            # (a restart, a replica) need not hold ONNX's schema.
            from controlplane.artifacts.onnx_interface import check_onnx_model

            check_onnx_model(root, source_version_dir, review.onnx_model_filename, review.signature)
        if admit is not None:
            admit(review)
        signature = review.signature
        for _rel, full, sha, _size in hashed:
            store.put(full, sha)
        return IngestedArtifact(
            manifest=manifest, digest=digest, source_version_dir=source_version_dir, signature=signature
        )
    finally:
        shutil.rmtree(extracted, ignore_errors=True)
