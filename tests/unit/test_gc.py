"""What the artifact collector may remove: orphan blobs past their grace age, stale upload leftovers."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from controlplane.artifacts.blobs import BlobStore
from controlplane.artifacts.gc import find_orphan_blobs, remove, stale_uploads, total_bytes

HOUR = 3600.0


def put(store: BlobStore, tmp: Path, data: bytes, *, age: float = 2 * HOUR) -> str:
    sha = hashlib.sha256(data).hexdigest()
    src = tmp / f"src-{sha[:8]}"
    src.write_bytes(data)
    path = store.put(src, sha)
    old = time.time() - age
    os.utime(path, (old, old))
    return sha


def test_only_unreferenced_unlinked_blobs_past_the_grace_age_are_garbage(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "artifacts")
    orphan = put(store, tmp_path, b"orphan")
    referenced = put(store, tmp_path, b"referenced")
    young = put(store, tmp_path, b"young", age=10)
    linked = put(store, tmp_path, b"linked into a pool")
    pool = tmp_path / "pools" / "blue" / "repository" / "m" / "1"
    pool.mkdir(parents=True)
    os.link(store.path_for(linked), pool / "model.onnx")

    found = find_orphan_blobs(
        store, referenced={referenced}, linked_roots=[tmp_path / "pools"], grace_seconds=HOUR
    )

    assert [g.path for g in found] == [store.path_for(orphan)]
    assert total_bytes(found) == len(b"orphan")
    assert remove(found) == found
    assert not store.has(orphan) and store.has(referenced) and store.has(young) and store.has(linked)


def test_a_blob_reused_by_a_new_push_is_young_again(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "artifacts")
    sha = put(store, tmp_path, b"old content pushed again")
    (tmp_path / "again").write_bytes(b"old content pushed again")
    store.put(tmp_path / "again", sha)
    assert find_orphan_blobs(store, referenced=set(), linked_roots=[], grace_seconds=HOUR) == []


def test_a_push_storing_blobs_holds_off_the_collector(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "artifacts")
    with store.writing():
        with pytest.raises(TimeoutError), store.collecting(timeout=0.2):
            pass
        with store.writing():  # pushes share the lock
            pass
    with store.collecting(timeout=0.2):
        pass


def test_upload_leftovers_older_than_the_start_are_stale_and_newer_ones_are_not(tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    extraction = uploads / "extract-abc123"
    (extraction / "model" / "1").mkdir(parents=True)
    (extraction / "model" / "1" / "model.onnx").write_bytes(b"x" * 1000)
    (uploads / "0123.upload").write_bytes(b"y" * 500)
    old = time.time() - 60
    for path in (extraction, uploads / "0123.upload"):
        os.utime(path, (old, old))
    started = time.time() - 1
    (uploads / "4567.upload").write_bytes(b"in progress")

    found = stale_uploads(uploads, older_than=started)

    assert sorted(g.path.name for g in found) == ["0123.upload", "extract-abc123"]
    assert total_bytes(found) == 1500
    remove(found)
    assert sorted(p.name for p in uploads.iterdir()) == ["4567.upload"]
