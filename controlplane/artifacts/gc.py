"""What the artifact store and the uploads folder may lose: orphan blobs, stale upload leftovers.

Filesystem only; which digests the registry still references is the caller's
input. A blob is kept when a version references it, when a file under one of
the ``linked_roots`` (pool repositories, verification folders) is a hard
link to it, or when it was stored less than the grace age ago.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from controlplane.artifacts.blobs import BlobStore

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Garbage:
    """A file or folder that can go, and how many bytes that frees."""

    path: Path
    size: int


def total_bytes(items: Iterable[Garbage]) -> int:
    return sum(item.size for item in items)


def _inodes(roots: Iterable[Path]) -> set[tuple[int, int]]:
    found: set[tuple[int, int]] = set()
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                found.add((st.st_dev, st.st_ino))
    return found


def find_orphan_blobs(
    blobs: BlobStore,
    *,
    referenced: Collection[str],
    linked_roots: Iterable[Path],
    grace_seconds: float,
    now: float | None = None,
) -> list[Garbage]:
    """Blobs (and leftover temporary copies) that nothing references and that are older than the grace age."""
    now = time.time() if now is None else now
    keep = set(referenced)
    linked = _inodes(linked_roots)
    garbage = []
    for shard in sorted((blobs.root / "sha256").glob("??")):
        for path in sorted(shard.iterdir()):
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if path.name in keep or (st.st_dev, st.st_ino) in linked:
                continue
            if not _SHA256.fullmatch(path.name) and not path.name.startswith("."):
                continue  # not something the store writes: leave it to an operator
            if now - st.st_mtime < grace_seconds:
                continue
            garbage.append(Garbage(path, st.st_size))
    return garbage


def _size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total


def stale_uploads(uploads_dir: Path, *, older_than: float) -> list[Garbage]:
    """Uploads, extraction and verification folders under ``uploads_dir`` last changed before ``older_than``.

    At start-up ``older_than`` is the process's start time: whatever an earlier
    process left there (killed mid-push) is no push of this one.
    """
    if not uploads_dir.is_dir():
        return []
    found = []
    for entry in sorted(uploads_dir.iterdir()):
        try:
            if entry.lstat().st_mtime < older_than:
                found.append(Garbage(entry, _size(entry)))
        except FileNotFoundError:
            continue
    return found


def remove(items: Iterable[Garbage]) -> list[Garbage]:
    """Delete each item (file or folder); return those actually removed."""
    removed = []
    for item in items:
        try:
            if item.path.is_dir() and not item.path.is_symlink():
                shutil.rmtree(item.path)
            else:
                item.path.unlink()
        except FileNotFoundError:
            continue
        removed.append(item)
    return removed
