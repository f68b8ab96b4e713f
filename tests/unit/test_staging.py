"""Building pool repositories from the blob store: hard links, atomic swaps, verification."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controlplane.artifacts.blobs import BlobStore, sha256_file
from controlplane.domain.models import (
    ManifestEntry,
    ModelName,
    ModelSignature,
    ModelVersion,
    TensorSpec,
    VersionMetadata,
    VersionState,
    manifest_digest,
)
from controlplane.errors import ArtifactCorrupted
from controlplane.staging import swap
from controlplane.staging.repository import PoolRepository


def _version(blobs: BlobStore, tmp: Path, number: int, weights: bytes) -> ModelVersion:
    files = {"config.pbtxt": b'backend: "onnxruntime"\n', "1/model.onnx": weights}
    entries = []
    for rel, data in files.items():
        src = tmp / f"src-{number}-{rel.replace('/', '_')}"
        src.write_bytes(data)
        sha, size = sha256_file(src)
        blobs.put(src, sha)
        entries.append(ManifestEntry(rel, size, sha))
    return ModelVersion(
        model=ModelName("mlp"),
        number=number,
        digest=manifest_digest(entries),
        state=VersionState.REGISTERED,
        source_version_dir="1",
        signature=ModelSignature(
            "onnxruntime", 0, (TensorSpec("I", "FP32", (1,)),), (TensorSpec("O", "FP32", (1,)),)
        ),
        metadata=VersionMetadata(),
        manifest=tuple(entries),
        size_bytes=sum(e.size for e in entries),
        created_at=datetime.now(UTC),
    )


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "artifacts")


@pytest.fixture
def pool(tmp_path: Path) -> PoolRepository:
    return PoolRepository(tmp_path / "pool")


def test_blobs_are_read_only_and_named_by_their_digest(blobs: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"weights")
    sha, _size = sha256_file(src)
    stored = blobs.put(src, sha)
    assert stored.name == sha and stored.read_bytes() == b"weights"
    assert stored.stat().st_mode & 0o222 == 0
    assert not src.exists()


def test_staged_files_are_hard_links_to_the_blobs_renumbered(
    blobs: BlobStore, pool: PoolRepository, tmp_path: Path
) -> None:
    v = _version(blobs, tmp_path, 3, b"w3")
    built = pool.build(v, blobs)
    staged = built / "3" / "model.onnx"
    weights = next(e for e in v.manifest if e.path == "1/model.onnx")
    blob = blobs.path_for(weights.sha256)
    assert staged.read_bytes() == b"w3"
    assert os.path.samefile(staged, blob)
    assert not (built / "1").exists()


def test_activation_swaps_the_whole_folder_and_keeps_the_old_one_for_restore(
    blobs: BlobStore, pool: PoolRepository, tmp_path: Path
) -> None:
    v1, v2 = _version(blobs, tmp_path, 1, b"w1"), _version(blobs, tmp_path, 2, b"w2")
    assert pool.activate("mlp", pool.build(v1, blobs)) is None
    previous = pool.activate("mlp", pool.build(v2, blobs))
    assert previous is not None and (previous / "1" / "model.onnx").read_bytes() == b"w1"
    assert sorted(p.name for p in (pool.live / "mlp").iterdir()) == ["2", "config.pbtxt"]
    assert pool.matches(v2, blobs) and not pool.matches(v1, blobs)
    pool.restore("mlp", previous)
    assert pool.matches(v1, blobs)
    assert pool.live_models() == ["mlp"]


def test_restore_without_a_previous_folder_removes_the_model(
    blobs: BlobStore, pool: PoolRepository, tmp_path: Path
) -> None:
    v1 = _version(blobs, tmp_path, 1, b"w1")
    pool.activate("mlp", pool.build(v1, blobs))
    pool.restore("mlp", None)
    assert pool.live_models() == []


def test_a_changed_blob_is_refused_before_anything_is_staged(
    blobs: BlobStore, pool: PoolRepository, tmp_path: Path
) -> None:
    v1 = _version(blobs, tmp_path, 1, b"w1")
    weights = next(e for e in v1.manifest if e.path == "1/model.onnx")
    path = blobs.path_for(weights.sha256)
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(ArtifactCorrupted, match=weights.sha256):
        pool.build(v1, blobs)
    assert list(pool.staging.iterdir()) == []
    assert pool.live_models() == []


def test_exchange_swaps_two_directories_in_one_step(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("from a")
    (b / "x").write_text("from b")
    if not swap.exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported on this filesystem")
    assert (a / "x").read_text() == "from b" and (b / "x").read_text() == "from a"


def test_replace_directory_falls_back_when_exchange_is_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(swap, "exchange", lambda a, b: False)
    live, new = tmp_path / "live", tmp_path / "new"
    live.mkdir()
    new.mkdir()
    (live / "v").write_text("old")
    (new / "v").write_text("new")
    previous = swap.replace_directory(new, live)
    assert (live / "v").read_text() == "new"
    assert previous is not None and (previous / "v").read_text() == "old"
