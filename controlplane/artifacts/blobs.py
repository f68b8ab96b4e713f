"""Content-addressed, read-only storage of model files, keyed by SHA-256.

Invariant: a blob's bytes hash to its name. Files are moved in with a rename
(never rewritten in place) and made read-only, so a file that is hard-linked
into a Triton repository cannot be changed through the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from controlplane.errors import ArtifactCorrupted
from controlplane.files import copy_atomically

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 hex digest and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


class BlobStore:
    """Blobs under ``root/sha256/<2 hex>/<64 hex>``.

    Garbage collection removes blobs no version references. A push stores its
    blobs before its version is committed, so pushes hold :meth:`writing`
    (a shared lock on ``root/gc.lock``) from the first blob until the commit
    and the collector holds :meth:`collecting` (the same lock, exclusive).
    """

    LOCK_NAME = "gc.lock"

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold off garbage collection while blobs are stored for a version not yet committed."""
        with self._lock(fcntl.LOCK_SH, timeout=None):
            yield

    @contextlib.contextmanager
    def collecting(self, *, timeout: float | None) -> Iterator[None]:
        """Exclusive against every push in progress; TimeoutError after ``timeout`` seconds of waiting."""
        with self._lock(fcntl.LOCK_EX, timeout=timeout):
            yield

    @contextlib.contextmanager
    def _lock(self, kind: int, *, timeout: float | None) -> Iterator[None]:
        fd = os.open(self.root / self.LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if timeout is None:
                fcntl.flock(fd, kind)
            else:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fd, kind | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise TimeoutError("a push is storing blobs") from None
                        time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def path_for(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def put(self, src: Path, sha256: str) -> Path:
        """Move ``src`` (already hashed to ``sha256``) into the store; duplicates are dropped."""
        dest = self.path_for(sha256)
        if dest.is_file():
            src.unlink()
            # A blob reused by a new push is young again: the collector's grace age counts from here.
            with contextlib.suppress(OSError):
                os.utime(dest)
            return dest
        dest.parent.mkdir(exist_ok=True)
        # Extraction may have kept the archive's old timestamps; the grace age counts from storing.
        os.utime(src)
        os.chmod(src, 0o444)
        try:
            os.rename(src, dest)
        except OSError:
            # Another filesystem: copy aside, then rename, so readers never see a partial blob.
            copy_atomically(src, dest, mode=0o444)
            src.unlink()
        return dest

    def verify(self, sha256: str, size: int) -> Path:
        """Re-hash a blob; ArtifactCorrupted if it is missing or changed."""
        path = self.path_for(sha256)
        try:
            actual, actual_size = sha256_file(path)
        except FileNotFoundError as exc:
            raise ArtifactCorrupted(f"artifact blob {sha256} is missing from the store") from exc
        if actual != sha256 or actual_size != size:
            raise ArtifactCorrupted(f"artifact blob {sha256} no longer matches its digest (now {actual})")
        return path

    def remove(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(sha256).unlink()
