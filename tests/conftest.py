"""Fixtures shared by every tier: registry databases on SQLite and PostgreSQL.

PostgreSQL comes from CONTROLPLANE_TEST_POSTGRES_URL (default: the server on
this machine, database ``test``); when that variable is unset and a Docker
engine answers, a throwaway container of CONTROLPLANE_TEST_POSTGRES_IMAGE
(default ``postgres:16-alpine``) is used instead. Each test gets its own
schema, dropped afterwards, so runs never see each other's rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_template import migrated_sqlite
from sqlalchemy import create_engine, text

from controlplane.registry.db import Database, make_engine

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _docker_engine_available() -> bool:
    try:
        import docker  # type: ignore[import-not-found]

        docker.from_env(timeout=2).ping()
    except Exception:  # noqa: BLE001 - any failure means "no engine here"
        return False
    return True


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server URL for the whole session."""
    configured = os.environ.get("CONTROLPLANE_TEST_POSTGRES_URL")
    if configured or not _docker_engine_available():
        yield configured or DEFAULT_POSTGRES_URL
        return
    from testcontainers.community.postgres import PostgresContainer  # type: ignore[import-not-found]

    # Ryuk's image cannot be pulled everywhere, and a machine that is itself a container would
    # otherwise be dialled through the engine's gateway: the engine here is on this host.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
    os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
    with PostgresContainer(postgres_image(), driver="psycopg") as container:
        yield container.get_connection_url()


def postgres_image() -> str:
    """The PostgreSQL image a throwaway container runs (built locally where none can be pulled)."""
    return os.environ.get("CONTROLPLANE_TEST_POSTGRES_IMAGE", "postgres:16-alpine")


def _postgres_database(url: str, *, migrate: bool = False) -> Iterator[Database]:
    schema = f"cp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    db = Database(url, engine=engine)
    try:
        if migrate:
            db.upgrade()
        yield db
    finally:
        db.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database with no schema yet, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
        yield db
        db.dispose()
    else:
        yield from _postgres_database(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database, once on SQLite and once on PostgreSQL.

    On SQLite a copy of a registry migrated once per test process (the
    migrations are the same; tests about them use ``empty_database``).
    """
    if request.param == "sqlite":
        db = migrated_sqlite(tmp_path / "registry.db")
        yield db
        db.dispose()
    else:
        yield from _postgres_database(request.getfixturevalue("postgres_url"), migrate=True)


_SERVER_TIERS = ("integration", "security", "compose")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give the ``integration`` marker to every test that needs a server, wherever it was written.

    Modules under tests/integration and tests/security declare it themselves
    (they start Triton, HAProxy or ``controlplane up``); this also covers a
    module that forgot, and the PostgreSQL case of tests parametrised over
    both databases, so that ``pytest -m "not integration"`` never needs a
    server. Runs before ``-m`` selects. Also puts the unit tests last.
    """
    for item in items:
        tier = item.path.parent.name
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and "postgresql" in callspec.params.values()
        if (tier in _SERVER_TIERS or on_postgres) and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)
    # The unit tests last, whatever order the folders were named in: the worker processes take whole
    # modules in this order, and hundreds of short ones at the end keep both busy until the last.
    items.sort(key=lambda item: item.path.parent.name == "unit")


class _Turns:
    """Who runs a test now, among the worker processes of one run: many at once, or one alone.

    A readers-writer lock on two files in the run's shared base temp directory
    (``flock``, so a crashed worker releases what it held). A test marked
    ``exclusive`` waits for the tests running elsewhere to end while no other
    test may start (the gate), then runs alone; every other test holds a
    shared turn. A turn spans a test's setup, call and teardown, and so the
    start and stop of the module's stack that happen in them.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._gate = os.open(directory / "turns.gate", os.O_RDWR | os.O_CREAT, 0o600)
        self._turn = os.open(directory / "turns.lock", os.O_RDWR | os.O_CREAT, 0o600)

    @contextlib.contextmanager
    def turn(self, *, alone: bool) -> Iterator[None]:
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._turn, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self._turn, fcntl.LOCK_UN)


_turns: _Turns | None = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Run a test marked ``exclusive`` while no other worker process of this run runs one.

    Such a test measures latencies (a p99 against a baseline, gaps between
    retries) or which requests a kill -9 under load fails, which the other
    process's servers starting or loading models on the same cores would
    blur. Without pytest-xdist there is nothing to wait for.
    """
    global _turns
    basetemp = item.config.option.basetemp
    if "PYTEST_XDIST_WORKER" not in os.environ or not basetemp:
        yield
        return
    if _turns is None:
        # Each worker's base temp is <the run's base temp>/popen-gwN: the parent is the run's own.
        _turns = _Turns(Path(basetemp).parent / "turns")
    with _turns.turn(alone=item.get_closest_marker("exclusive") is not None):
        yield
