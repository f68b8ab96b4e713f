"""Golden sets in the registry: pushed in a version's folder or attached, stored as blobs, never staged."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fakes import World, build_world, model_folder

from controlplane.artifacts.archive import pack_directory
from controlplane.collector import collect_garbage
from controlplane.domain.golden_records import GoldenFormat, GoldenSource, Tolerance
from controlplane.domain.models import ModelVersion, VersionMetadata
from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.registry import golden_store, signature_store, store
from controlplane.services.golden import GoldenSets

INPUTS = [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
OUTPUTS = [[1.0, 2.0], [3.0, 4.0]]
GOLDEN = {
    "inputs": {"INPUT0": INPUTS},
    "outputs": {"OUTPUT0": OUTPUTS},
    "tolerances": {"OUTPUT0": {"atol": 0.1}},
}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = build_world(tmp_path)
    yield world
    world.close()


def golden_sets(world: World) -> GoldenSets:
    return GoldenSets(db=world.db, blobs=world.blobs, uploads_dir=world.root / "uploads")


def push_folder(world: World, weights: bytes, files: dict[str, bytes]) -> ModelVersion:
    """Push ``mlp`` with ``weights`` and extra top-level ``files`` beside config.pbtxt."""
    source = world.root / "sources" / uuid.uuid4().hex
    folder = model_folder(source, "mlp", weights)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    archive = pack_directory(folder, source / "model.tar.gz")
    version, _created = world.registry.push(model="mlp", archive=archive, metadata=VersionMetadata())
    return version


def attach_json(world: World, number: int, document: object) -> None:
    upload = world.root / f"upload-{number}.json"
    upload.write_bytes(json.dumps(document).encode())
    golden_sets(world).attach("mlp", number, upload=upload, fmt=GoldenFormat.JSON, actor="alice")


def test_a_golden_file_in_the_pushed_folder_is_part_of_the_version_and_recorded_from_the_folder(
    world: World,
) -> None:
    data = json.dumps(GOLDEN).encode()
    version = push_folder(world, b"weights", {"golden.json": data})

    assert "golden.json" in {e.path for e in version.manifest}
    record = golden_sets(world).describe("mlp", version.number)
    assert record.source is GoldenSource.FOLDER and record.format is GoldenFormat.JSON
    assert record.digest == hashlib.sha256(data).hexdigest() and record.size == len(data)
    assert record.rows == 2 and record.outputs == {"OUTPUT0": Tolerance(atol=0.1)}
    assert not record.signed
    push = world.registry.events()[-1]
    assert push.action == "push" and push.details["golden"] == {"file": "golden.json", "rows": 2}


def test_the_folders_golden_set_changes_the_version_digest(world: World) -> None:
    plain = push_folder(world, b"weights", {})
    with_golden = push_folder(world, b"weights", {"golden.json": json.dumps(GOLDEN).encode()})
    assert plain.digest != with_golden.digest and with_golden.number == plain.number + 1


def test_the_same_folder_pushed_again_keeps_its_golden_set(world: World) -> None:
    files = {"golden.json": json.dumps(GOLDEN).encode()}
    first = push_folder(world, b"weights", files)
    again = push_folder(world, b"weights", files)
    assert again.number == first.number
    assert golden_sets(world).describe("mlp", first.number).source is GoldenSource.FOLDER


def test_a_golden_file_that_does_not_fit_the_model_refuses_the_push_and_registers_nothing(
    world: World,
) -> None:
    bad = {**GOLDEN, "inputs": {"INPUT0": [[0.0, 1.0, 2.0]] * 2}}
    with pytest.raises(InvalidInput) as refused:
        push_folder(world, b"weights", {"golden.json": json.dumps(bad).encode()})
    assert refused.value.code == "invalid_golden_set"
    assert refused.value.message.startswith("golden.json: golden set: input 'INPUT0' has rows of shape [3]")
    assert refused.value.details == {"tensor": "INPUT0", "file": "golden.json"}
    with pytest.raises(NotFound):
        world.registry.list_versions("mlp")
    rejected = world.registry.events()[-1]
    assert (rejected.action, rejected.outcome) == ("push", "rejected")
    assert rejected.details["code"] == "invalid_golden_set"


def test_a_folder_with_both_golden_files_is_refused(world: World) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{"inputs/INPUT0": np.array(INPUTS, np.float32), "outputs/OUTPUT0": np.array(OUTPUTS)})
    files = {"golden.json": json.dumps(GOLDEN).encode(), "golden.npz": buffer.getvalue()}
    with pytest.raises(InvalidInput, match=r"golden\.json and golden\.npz"):
        push_folder(world, b"weights", files)


def test_the_golden_file_is_never_staged_into_the_pool_repository(world: World) -> None:
    version = push_folder(world, b"weights", {"golden.json": json.dumps(GOLDEN).encode()})
    world.deploy("mlp", version.number)

    live = world.pools["blue"].repository.live / "mlp"
    staged = sorted(p.relative_to(live).as_posix() for p in live.rglob("*") if p.is_file())
    assert staged == ["1/model.onnx", "config.pbtxt"]
    assert world.pools["blue"].repository.differences(version, world.blobs) == []
    assert world.pools["blue"].repository.matches(version, world.blobs)


def test_an_attached_golden_set_cannot_replace_the_one_from_the_folder(world: World) -> None:
    version = push_folder(world, b"weights", {"golden.json": json.dumps(GOLDEN).encode()})
    with pytest.raises(Conflict) as refused:
        attach_json(world, version.number, GOLDEN)
    assert refused.value.code == "golden_from_folder"
    assert golden_sets(world).describe("mlp", version.number).source is GoldenSource.FOLDER
    audited = world.registry.events()[-1]
    assert (audited.action, audited.outcome) == ("golden.attach", "rejected")


def test_an_attached_golden_set_is_stored_as_a_blob_replaced_on_the_next_attach_and_audited(
    world: World,
) -> None:
    version = push_folder(world, b"weights", {})
    attach_json(world, version.number, GOLDEN)
    first = golden_sets(world).describe("mlp", version.number)
    assert first.source is GoldenSource.ATTACHED and first.actor == "alice"
    assert world.blobs.has(first.digest)

    attach_json(world, version.number, {**GOLDEN, "tolerances": {}})
    second = golden_sets(world).describe("mlp", version.number)
    assert second.digest != first.digest and second.outputs == {"OUTPUT0": Tolerance()}
    events = [e for e in world.registry.events() if e.action == "golden.attach"]
    assert [e.outcome for e in events] == ["attached", "replaced"]
    assert events[-1].details["replaced"] == first.digest


def test_an_attached_golden_set_is_checked_against_the_version(world: World) -> None:
    version = push_folder(world, b"weights", {})
    with pytest.raises(InvalidInput) as refused:
        attach_json(world, version.number, {**GOLDEN, "outputs": {"PROBS": OUTPUTS}})
    assert refused.value.details == {"tensor": "PROBS"}
    with pytest.raises(NotFound):
        golden_sets(world).describe("mlp", version.number)


def test_garbage_collection_keeps_attached_golden_blobs(world: World) -> None:
    version = push_folder(world, b"weights", {})
    attach_json(world, version.number, GOLDEN)
    record = golden_sets(world).describe("mlp", version.number)
    orphan = world.root / "orphan"
    orphan.write_bytes(b"nobody needs me")
    orphan_digest = hashlib.sha256(b"nobody needs me").hexdigest()
    world.blobs.put(orphan, orphan_digest)

    result = collect_garbage(world.db, world.blobs, linked_roots=(), grace_seconds=0)

    assert [item.path.name for item in result.items] == [orphan_digest]
    assert world.blobs.has(record.digest)


def test_only_a_golden_set_from_the_folder_of_a_signed_version_counts_as_signed(world: World) -> None:
    folder = push_folder(world, b"signed weights", {"golden.json": json.dumps(GOLDEN).encode()})
    attached = push_folder(world, b"other weights", {})
    attach_json(world, attached.number, GOLDEN)
    with world.db.transaction() as session:
        for number in (folder.number, attached.number):
            signature_store.attach_signature(
                session,
                model="mlp",
                number=number,
                method="key",
                identity={"key_id": "k"},
                statement=b"{}",
                statement_sha256="0" * 64,
                bundle=b"{}",
                files={},
                actor="tests",
            )
    with world.db.transaction() as session:
        signed = golden_store.get_golden(session, model="mlp", number=folder.number)
        unsigned = golden_store.get_golden(session, model="mlp", number=attached.number)
        assert store.get_version(session, "mlp", folder.number).number == folder.number
    assert signed is not None and signed.signed
    assert unsigned is not None and not unsigned.signed
