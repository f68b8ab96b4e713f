"""The registry on real databases (SQLite file and PostgreSQL server)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from controlplane.domain.models import (
    ManifestEntry,
    ModelName,
    ModelSignature,
    TensorSpec,
    VersionMetadata,
    VersionState,
    manifest_digest,
)
from controlplane.errors import NotFound, StaleSchema
from controlplane.registry import store
from controlplane.registry.db import Database

pytestmark = pytest.mark.integration

SIGNATURE = ModelSignature(
    backend="onnxruntime",
    max_batch_size=8,
    inputs=(TensorSpec("INPUT0", "FP32", (16,)),),
    outputs=(TensorSpec("OUTPUT0", "FP32", (4,)),),
)


def _manifest(seed: str) -> tuple[ManifestEntry, ...]:
    return (
        ManifestEntry("1/model.onnx", 100, (seed * 64)[:64]),
        ManifestEntry("config.pbtxt", 10, "c" * 64),
    )


def _register(db: Database, model: str, seed: str, **metadata: object):
    manifest = _manifest(seed)
    with db.transaction() as session:
        return store.register_version(
            session,
            model=ModelName(model),
            digest=manifest_digest(manifest),
            manifest=manifest,
            source_version_dir="1",
            signature=SIGNATURE,
            metadata=VersionMetadata.from_dict(metadata),
        )


def test_versions_are_numbered_from_one_per_model(database: Database) -> None:
    a1, _ = _register(database, "a", "1")
    a2, _ = _register(database, "a", "2")
    b1, _ = _register(database, "b", "1")
    assert (a1.number, a2.number, b1.number) == (1, 2, 1)


def test_pushing_identical_content_returns_the_existing_version(database: Database) -> None:
    first, created_first = _register(database, "m", "1")
    again, created_again = _register(database, "m", "1")
    assert created_first and not created_again
    assert again.number == first.number
    with database.transaction() as session:
        assert [v.number for v in store.list_versions(session, "m")] == [1]


def test_concurrent_pushes_of_one_model_get_distinct_numbers(database: Database) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: _register(database, "racy", f"{i:x}"), range(12)))
    numbers = sorted(v.number for v, created in results if created)
    assert numbers == list(range(1, 13))


def test_concurrent_identical_pushes_register_one_version(database: Database) -> None:
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _i: _register(database, "same", "e"), range(6)))
    assert sum(created for _v, created in results) == 1
    assert {v.number for v, _created in results} == {1}


def test_a_version_keeps_its_manifest_signature_and_metadata(database: Database) -> None:
    _register(database, "m", "1", labels={"team": "search"}, metrics={"accuracy": 0.93}, api_version="v2")
    with database.transaction() as session:
        version = store.get_version(session, "m", 1)
    assert version.manifest == _manifest("1")
    assert version.digest == manifest_digest(_manifest("1"))
    assert version.signature == SIGNATURE
    assert version.metadata.labels == {"team": "search"}
    assert version.metadata.metrics == {"accuracy": 0.93}
    assert version.metadata.api_version == "v2"
    assert version.state is VersionState.REGISTERED
    assert version.created_at.tzinfo is not None


def test_unknown_model_and_version_are_not_found(database: Database) -> None:
    _register(database, "m", "1")
    with database.transaction() as session:
        with pytest.raises(NotFound) as no_model:
            store.get_version(session, "nope", 1)
        with pytest.raises(NotFound) as no_version:
            store.get_version(session, "m", 7)
    assert no_model.value.code == "model_not_found"
    assert no_version.value.code == "version_not_found"


def test_a_deployment_records_which_version_a_pool_serves(database: Database) -> None:
    _register(database, "m", "1")
    _register(database, "m", "2")
    with database.transaction() as session:
        store.set_deployment(session, model="m", pool="blue", number=1)
    with database.transaction() as session:
        store.set_deployment(session, model="m", pool="blue", number=2)
    with database.transaction() as session:
        model = store.get_model(session, "m")
    assert [(d.pool, d.version) for d in model.deployments] == [("blue", 2)]


def test_a_failed_transaction_leaves_nothing_behind(database: Database) -> None:
    with pytest.raises(RuntimeError), database.transaction() as session:
        _manifest_ = _manifest("1")
        store.register_version(
            session,
            model=ModelName("ghost"),
            digest=manifest_digest(_manifest_),
            manifest=_manifest_,
            source_version_dir="1",
            signature=SIGNATURE,
            metadata=VersionMetadata(),
        )
        raise RuntimeError("crash before commit")
    with database.transaction() as session, pytest.raises(NotFound):
        store.get_model(session, "ghost")


def test_audit_events_are_append_only(database: Database) -> None:
    with database.transaction() as session:
        store.append_event(session, actor="alice", action="push", target="m/1", outcome="created")
    with database.transaction() as session:
        events = store.list_events(session)
    assert [(e.actor, e.action, e.target, e.outcome) for e in events] == [("alice", "push", "m/1", "created")]
    for statement in ("UPDATE audit_events SET outcome = 'forged'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"), database.transaction() as session:
            session.execute(text(statement))


def test_migrations_have_one_head_and_run_down_and_up_again_with_data(empty_database: Database) -> None:
    db = empty_database
    assert db.head_revision() == "0010"
    with pytest.raises(StaleSchema):
        db.check_schema()
    db.upgrade()
    _register(db, "m", "1")
    db.check_schema()
    db.downgrade("base")
    assert db.current_revision() is None
    db.upgrade()
    db.check_schema()
    v, created = _register(db, "m", "1")
    assert created and v.number == 1
