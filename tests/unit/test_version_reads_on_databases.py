"""The version reads of the registry on SQLite and on PostgreSQL: the same answers on both.

``Database.reading()`` runs plain statements (no ORM session); the store's
version reads and the token lookup go through it. On PostgreSQL there are no
commit marks, so nothing is answered from memory: every read goes to the
database.
"""

from __future__ import annotations

import hashlib

import pytest

from controlplane.domain.auth import Role, token_hash
from controlplane.domain.models import ManifestEntry, ModelName, ModelSignature, TensorSpec, VersionMetadata
from controlplane.domain.versions import VersionEvent
from controlplane.errors import NotFound
from controlplane.registry import rollout_store, store, token_store
from controlplane.registry.db import Database

SIGNATURE = ModelSignature(
    backend="onnxruntime",
    max_batch_size=8,
    inputs=(TensorSpec("INPUT0", "FP32", (4,)),),
    outputs=(TensorSpec("OUTPUT0", "FP32", (2,)),),
)


def _register(database: Database, count: int) -> None:
    with database.transaction() as session:
        for n in range(1, count + 1):
            store.register_version(
                session,
                model=ModelName("mlp"),
                digest=hashlib.sha256(f"version {n}".encode()).hexdigest(),
                manifest=(
                    ManifestEntry("config.pbtxt", 10, "a" * 64),
                    ManifestEntry(f"1/model-{n}.onnx", n, "b" * 64),
                ),
                source_version_dir="1",
                signature=SIGNATURE,
                metadata=VersionMetadata(
                    labels={"n": str(n)}, metrics={"accuracy": n / 100}, api_version="1"
                ),
            )
        rollout_store.ensure_pools(session, ("blue", "green"))


def test_a_version_and_the_version_serving_production_come_from_one_query(database: Database) -> None:
    _register(database, 3)
    with database.transaction() as session:
        rollout_store.set_pool_release(session, "blue", {"mlp": 1})
        store.change_version_state(session, model="mlp", number=1, event=VersionEvent.SERVED)
        expected = store.get_version(session, "mlp", 2)

    with database.reading() as connection:
        head, serving = store.version_head_and_serving(connection, "mlp", 2)
        contents = store.version_contents(connection, [head.id])

    assert store.version_entity("mlp", head, contents[head.id]) == expected
    assert serving is not None and (serving.number, serving.state.value) == (1, "serving")
    assert serving.metadata.api_version == "1"


def test_nothing_serving_or_nothing_there_is_said_so(database: Database) -> None:
    _register(database, 1)

    with database.reading() as connection:
        _head, serving = store.version_head_and_serving(connection, "mlp", 1)
        with pytest.raises(NotFound) as no_version:
            store.version_head_and_serving(connection, "mlp", 2)
        with pytest.raises(NotFound) as no_model:
            store.list_version_page(connection, "nope")

    assert serving is None
    assert no_version.value.code == "version_not_found" and no_model.value.code == "model_not_found"


def test_pages_of_versions_are_the_same_on_both_databases(database: Database) -> None:
    _register(database, 7)

    with database.reading() as connection:
        newest = store.list_version_page(connection, "mlp", limit=3, newest_first=True)
        older = store.list_version_page(
            connection, "mlp", limit=3, newest_first=True, before=newest[-1].number
        )
        forward = store.list_version_page(connection, "mlp", limit=4, after=2)

    assert [v.number for v in newest] == [7, 6, 5]
    assert [v.number for v in older] == [4, 3, 2]
    assert [v.number for v in forward] == [3, 4, 5, 6]
    assert newest[0].metadata == VersionMetadata(
        labels={"n": "7"}, metrics={"accuracy": 0.07}, api_version="1"
    )
    assert newest[0].created_at.tzinfo is not None


def test_a_token_is_found_by_its_hash_until_revoked(database: Database) -> None:
    with database.transaction() as session:
        secret, _info = token_store.create_token(session, name="ci", role=Role.DEPLOYER, created_by="tests")

    with database.reading() as connection:
        found = token_store.authenticate_digest(connection, token_hash(secret))
    with database.transaction() as session:
        token_store.revoke_token(session, name="ci", revoked_by="tests")
    with database.reading() as connection:
        revoked = token_store.authenticate_digest(connection, token_hash(secret))

    assert found is not None and (found.name, found.role, found.active) == ("ci", Role.DEPLOYER, True)
    assert revoked is None


def test_commit_marks_exist_on_sqlite_only(database: Database) -> None:
    watch = store.CommitWatch(lambda: database.engine)
    before = watch.mark()

    _register(database, 1)
    after = watch.mark()

    if database.engine.dialect.name == "sqlite":
        assert before is not None and after is not None and after != before
    else:
        assert before is None and after is None
