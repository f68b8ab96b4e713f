"""Golden sets in the registry on real databases (SQLite file and PostgreSQL server)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from controlplane.domain.golden_records import GoldenFormat, GoldenSource, Tolerance
from controlplane.domain.models import (
    ManifestEntry,
    ModelName,
    ModelSignature,
    TensorSpec,
    VersionMetadata,
    manifest_digest,
)
from controlplane.errors import Conflict
from controlplane.registry import blob_refs, golden_store, store
from controlplane.registry.db import Database

pytestmark = pytest.mark.integration

SIGNATURE = ModelSignature(
    backend="onnxruntime",
    max_batch_size=8,
    inputs=(TensorSpec("INPUT0", "FP32", (16,)),),
    outputs=(TensorSpec("OUTPUT0", "FP32", (4,)),),
)
MANIFEST = (ManifestEntry("1/model.onnx", 100, "a" * 64), ManifestEntry("config.pbtxt", 10, "c" * 64))


def _version(db: Database) -> int:
    with db.transaction() as session:
        version, _created = store.register_version(
            session,
            model=ModelName("mlp"),
            digest=manifest_digest(MANIFEST),
            manifest=MANIFEST,
            source_version_dir="1",
            signature=SIGNATURE,
            metadata=VersionMetadata(),
        )
    return version.number


def _record(db: Database, number: int, digest: str, source: GoldenSource) -> None:
    with db.transaction() as session:
        golden_store.record_golden(
            session,
            model="mlp",
            number=number,
            digest=digest,
            size=123,
            fmt=GoldenFormat.NPZ,
            rows=10,
            outputs={"OUTPUT0": Tolerance(atol=0.5)},
            source=source,
            actor="tests",
        )


def test_a_version_has_one_golden_set_replaced_in_place_and_kept_from_gc(database: Database) -> None:
    number = _version(database)
    _record(database, number, "1" * 64, GoldenSource.ATTACHED)
    _record(database, number, "2" * 64, GoldenSource.ATTACHED)

    with database.transaction() as session:
        record = golden_store.get_golden(session, model="mlp", number=number)
        rows = session.execute(text("SELECT count(*) FROM golden_sets")).scalar_one()
        referenced = blob_refs.referenced_digests(session)
    assert rows == 1
    assert record is not None and record.digest == "2" * 64 and record.source is GoldenSource.ATTACHED
    assert record.outputs == {"OUTPUT0": Tolerance(atol=0.5)} and record.rows == 10
    assert {"2" * 64, "a" * 64, "c" * 64} <= referenced and "1" * 64 not in referenced


def test_a_golden_set_from_the_folder_is_never_replaced_by_an_attached_one(database: Database) -> None:
    number = _version(database)
    _record(database, number, "f" * 64, GoldenSource.FOLDER)
    with pytest.raises(Conflict) as refused:
        _record(database, number, "9" * 64, GoldenSource.ATTACHED)
    assert refused.value.code == "golden_from_folder"
    with database.transaction() as session:
        record = golden_store.get_golden(session, model="mlp", number=number)
    assert record is not None and record.digest == "f" * 64


def test_the_table_refuses_an_unknown_source_and_a_second_row_per_version(database: Database) -> None:
    number = _version(database)
    _record(database, number, "1" * 64, GoldenSource.ATTACHED)
    insert = text(
        "INSERT INTO golden_sets (version_id, digest, size, format, rows, outputs, source, actor, created_at)"
        " SELECT version_id, digest, size, format, rows, outputs, :source, actor, created_at FROM golden_sets"
    )
    for source in ("elsewhere", "attached"):
        with pytest.raises(IntegrityError), database.transaction() as session:
            session.execute(insert, {"source": source})


def test_the_migration_goes_down_and_up_again(database: Database) -> None:
    _record(database, _version(database), "1" * 64, GoldenSource.ATTACHED)
    database.downgrade("0006")
    with database.transaction() as session:
        tables = session.get_bind().dialect.get_table_names(session.connection())
    assert "golden_sets" not in tables
    database.upgrade()
    with database.transaction() as session:
        assert golden_store.get_golden(session, model="mlp", number=1) is None
