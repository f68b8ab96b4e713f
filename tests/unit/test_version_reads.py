"""Reading one version: what never changes kept in memory, what can change read every time, in one query.

``GET /v1/models/{m}/versions/{v}`` answers from ``Registry.version_view``:
the version's row and the version the live pool serves in one query; the
content of each (manifest, interface: the digest is a hash of it, and a row
never changes it) from ``Registry.contents`` once read, and their interface
comparison from ``Registry.comparisons``. State, metadata and what serves
production change, so they are read on every call; these tests change each
and read again.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import World, build_world
from fastapi.testclient import TestClient
from interface_versions import push
from sqlalchemy import create_engine, event

from controlplane.api import schemas
from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.domain.auth import Role
from controlplane.domain.models import ManifestEntry, VersionMetadata
from controlplane.domain.version_metadata import MetadataChange
from controlplane.domain.versions import VersionEvent
from controlplane.errors import NotFound
from controlplane.registry import rollout_store, store, token_store
from controlplane.registry.token_store import TokenCache
from controlplane.services import registry as registry_service
from controlplane.services.admission import compare_with_production
from controlplane.services.health import Health
from controlplane.services.registry import LruCache
from controlplane.services.version_metadata import change_metadata

WIDER = [("INPUT0", "FP32", (-1,))]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    built = build_world(tmp_path)
    yield built
    built.close()


def _statements(world: World) -> list[str]:
    executed: list[str] = []
    event.listen(world.db.engine, "before_cursor_execute", lambda *a: executed.append(a[2]))
    return executed


def _answer(world: World, number: int) -> object:
    """What the API answers for version ``number`` of mlp, from the registry's one read."""
    version, comparison = world.registry.version_view("mlp", number)
    return schemas.version_out(version, comparison.as_dict() if comparison else None).model_dump()


def _answer_before(world: World, number: int) -> object:
    """The same answer composed the way the API did before: a full read, then admission's comparison."""
    with world.db.transaction() as session:
        version = store.get_version(session, "mlp", number)
    comparison = compare_with_production(world.db, "mlp", number)
    return schemas.version_out(version, comparison.as_dict() if comparison else None).model_dump()


def _serve(world: World, pool: str, number: int) -> None:
    with world.db.transaction() as session:
        rollout_store.set_pool_release(session, pool, {"mlp": number})


def _weights(world: World, **weights: int) -> None:
    with world.db.transaction() as session:
        rollout_store.set_pool_weights(session, weights)


def test_a_version_reads_its_content_once_and_its_row_every_time(world: World) -> None:
    number = push(world)
    executed = _statements(world)

    first = world.registry.get_version("mlp", number)
    first_reads = list(executed)
    executed.clear()
    second = world.registry.get_version("mlp", number)

    assert first == second
    assert sum("manifest_entries" in sql for sql in first_reads) == 1
    assert len(executed) == 1 and "manifest_entries" not in executed[0]


def test_the_comparison_with_production_is_computed_once_per_pair_of_versions(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two, three = push(world), push(world, inputs=WIDER), push(world, api_version="2")
    _serve(world, "blue", one)
    compared: list[tuple[int, int]] = []
    real_compare = registry_service.compare
    monkeypatch.setattr(
        registry_service,
        "compare",
        lambda serving, candidate: (
            compared.append((serving.inputs[0].dims, candidate.inputs[0].dims))
            or real_compare(serving, candidate)
        ),
    )

    for _ in range(3):
        world.registry.version_view("mlp", two)
    _serve(world, "blue", three)
    for _ in range(3):
        world.registry.version_view("mlp", two)

    assert len(compared) == 2


def test_state_metadata_and_production_are_read_fresh_after_every_change(world: World) -> None:
    serving, candidate = push(world), push(world, inputs=WIDER)
    before = world.registry.version_view("mlp", candidate)

    _serve(world, "blue", serving)
    with world.db.transaction() as session:
        store.change_version_state(
            session, model="mlp", number=candidate, event=VersionEvent.FAILED, error="boom"
        )
    change_metadata(
        world.db,
        model="mlp",
        number=candidate,
        change=MetadataChange(metrics={"accuracy": 0.5}, labels={}),
        actor="tests",
    )
    version, comparison = world.registry.version_view("mlp", candidate)

    assert before[0].state.value == "registered" and before[1] is None
    assert (version.state.value, version.last_error) == ("failed", "boom")
    assert version.metadata.metrics == {"accuracy": 0.5}
    assert comparison is not None and comparison.serving_version == serving
    assert [d.code for d in comparison.compatibility.differences] == ["dims_widened"]


@pytest.mark.parametrize(
    ("weights", "releases"),
    [
        ({"blue": 100, "green": 0}, {}),
        ({"blue": 100, "green": 0}, {"blue": 1}),
        ({"blue": 100, "green": 0}, {"green": 2}),
        ({"blue": 0, "green": 100}, {"blue": 1, "green": 2}),
        ({"blue": 50, "green": 50}, {"blue": 2, "green": 1}),
        ({"blue": 50, "green": 50}, {"green": 1}),
        ({"blue": 0, "green": 0}, {"blue": 3}),
    ],
    ids=[
        "none-serves",
        "live-serves",
        "idle-serves-only",
        "green-live",
        "tie-first-name",
        "tie-idle",
        "no-traffic",
    ],
)
def test_the_answer_is_the_one_the_full_read_and_admission_give(
    world: World, weights: dict[str, int], releases: dict[str, int]
) -> None:
    push(world)
    push(world, inputs=WIDER)
    push(world, inputs=[("INPUT0", "FP16", (4,))], api_version="2")
    _weights(world, **weights)
    for pool, number in releases.items():
        _serve(world, pool, number)

    for number in (1, 2, 3):
        assert _answer(world, number) == _answer_before(world, number), number


def test_a_version_without_pools_has_no_comparison(tmp_path: Path) -> None:
    world = build_world(tmp_path, pool_names=())
    try:
        number = push(world)

        version, comparison = world.registry.version_view("mlp", number)

        assert version.number == number and comparison is None
    finally:
        world.close()


def test_an_unknown_model_or_version_is_not_found_with_its_code(world: World) -> None:
    push(world)

    with pytest.raises(NotFound) as no_model:
        world.registry.version_view("nope", 1)
    with pytest.raises(NotFound) as no_version:
        world.registry.version_view("mlp", 9)

    assert no_model.value.code == "model_not_found"
    assert (no_version.value.code, no_version.value.message) == (
        "version_not_found",
        "model 'mlp' has no version 9",
    )


def test_kept_content_whose_digest_is_not_the_rows_is_read_again(world: World) -> None:
    number = push(world)
    real = world.registry.get_version("mlp", number)
    with world.db.transaction() as session:
        version_id = store.get_version_row(session, store.get_model_row(session, "mlp"), number).id
    kept = world.registry.contents[version_id]
    world.registry.contents[version_id] = replace(
        kept, digest="0" * 64, manifest=(ManifestEntry("forged", 1, "0" * 64),), size_bytes=1
    )

    read = world.registry.get_version("mlp", number)

    assert read == real
    assert world.registry.contents[version_id] == kept


def test_the_memory_keeps_the_most_recently_used_entries() -> None:
    cache: LruCache[int, str] = LruCache(max_entries=2)
    cache[1] = "a"
    cache[2] = "b"
    assert cache.get(1) == "a"

    cache[3] = "c"

    assert sorted(cache) == [1, 3] and len(cache) == 2


def test_a_version_read_does_not_wait_for_a_writer_holding_the_database(world: World) -> None:
    number = push(world)
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with world.db.transaction() as session:
            store.change_version_metadata(
                session, model="mlp", number=number, change=MetadataChange(metrics={}, labels={"team": "a"})
            )
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        version = world.registry.get_version("mlp", number)
        page = world.registry.list_versions("mlp")
        waited = time.monotonic() - started
    finally:
        release.set()
        thread.join(10)

    assert waited < 1.0
    assert version.metadata == VersionMetadata() and [v.number for v in page] == [number]


def test_the_api_answers_the_version_with_its_compatibility_from_one_query(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    serving, candidate = push(world), push(world, inputs=WIDER)
    _serve(world, "blue", serving)
    services = ApiServices(
        db=world.db, registry=world.registry, signing=world.signing, health=Health(db=world.db, pools={})
    )
    with world.db.transaction() as session:
        secret, _info = token_store.create_token(session, name="viewer", role=Role.VIEWER, created_by="tests")
    monkeypatch.setattr(token_store, "TOKEN_CACHE", TokenCache(clock=lambda: 0.0))  # time stands still
    headers = {"Authorization": f"Bearer {secret}"}
    path = f"/v1/models/mlp/versions/{candidate}"
    with TestClient(create_app(services, max_upload_bytes=1024, auth=Authenticator(world.db))) as client:
        client.get("/v1/whoami", headers=headers)  # the token is read now
        executed = _statements(world)
        first = client.get(path, headers=headers)
        first_reads = [sql.split()[0] for sql in executed]
        executed.clear()
        again = client.get(path, headers=headers)
        again_reads = list(executed)

    assert first.status_code == again.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.json() == again.json() == _jsonable(_answer_before(world, candidate))
    assert first_reads == ["SELECT", "SELECT", "SELECT"]  # no BEGIN; the rows, then both versions' content
    assert again_reads == []  # nothing was committed since: the answer read before is still the answer


def test_a_version_answer_is_kept_only_until_the_next_commit(world: World) -> None:
    number = push(world)
    view = world.registry.version_view("mlp", number)
    kept = world.registry.unchanged_view("mlp", number)

    with world.db.transaction() as session:
        store.append_event(session, actor="tests", action="note", target="elsewhere", outcome="ok")
    after_commit = world.registry.unchanged_view("mlp", number)

    assert kept is view
    assert after_commit is None
    assert world.registry.unchanged_view("mlp", number + 1) is None  # never read


def test_a_commit_by_another_process_ends_the_kept_answers_too(world: World) -> None:
    number = push(world)
    world.registry.version_view("mlp", number)
    world.registry.list_versions("mlp")
    database = world.db.engine.url.database
    assert database is not None

    subprocess.run(
        [sys.executable, "-c", SET_LABEL, database], check=True, capture_output=True, text=True, timeout=60
    )

    assert world.registry.unchanged_view("mlp", number) is None
    assert world.registry.unchanged_page("mlp") is None
    assert world.registry.get_version("mlp", number).metadata.labels == {"set": "elsewhere"}


SET_LABEL = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute(\"UPDATE model_versions SET metadata = '{\\"labels\\": {\\"set\\": \\"elsewhere\\"}}'\")
"""


def test_a_page_of_versions_is_kept_only_until_the_next_commit(world: World) -> None:
    push(world)
    page = world.registry.list_versions("mlp", limit=5, newest_first=True)
    kept = world.registry.unchanged_page("mlp", limit=5, newest_first=True)
    other_query = world.registry.unchanged_page("mlp", limit=5)

    push(world, inputs=WIDER)

    assert kept is page and other_query is None
    assert world.registry.unchanged_page("mlp", limit=5, newest_first=True) is None


def test_without_commit_marks_nothing_is_kept(tmp_path: Path) -> None:
    in_memory = store.CommitWatch(lambda: create_engine("sqlite://"))
    postgres = store.CommitWatch(lambda: create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"))
    missing = store.CommitWatch(lambda: create_engine(f"sqlite:///{tmp_path / 'missing.db'}"))
    file_engine = create_engine(f"sqlite:///{tmp_path / 'marks.db'}")
    file_engine.connect().close()  # the file exists
    on_file = store.CommitWatch(lambda: file_engine)

    assert in_memory.mark() is None and postgres.mark() is None and missing.mark() is None
    assert not (tmp_path / "missing.db").exists()
    assert on_file.mark() == on_file.mark() is not None


def _jsonable(answer: object) -> object:
    return schemas.VersionOut.model_validate(answer).model_dump(mode="json")
