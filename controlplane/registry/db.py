"""Database access: engine, unit of work, schema migrations.

A transaction has one owner: the service call (or reconciler pass) that opens
``Database.transaction()``. Repository functions only ``flush()``; leaving the
block without an exception commits, any exception rolls back.

SQLite runs every transaction as ``BEGIN IMMEDIATE`` so that two writers queue
on the database lock instead of failing with "database is locked" half-way;
PostgreSQL relies on row locks (``SELECT ... FOR UPDATE``) taken by the
repository functions.

Alembic is imported only to migrate: once loaded it stays resident (~8 MB)
in a long-running control plane, and the schema check (at start-up and in
``/readyz``) needs only the revision the database records and the newest one
in the migration files, both read here without it. A long-running process
migrates in a child interpreter (``upgrade_in_child``), so it never loads
Alembic at all.
"""

from __future__ import annotations

import ast
import functools
import importlib.resources
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from controlplane.errors import (
    DatabaseUnavailable,
    InsufficientStorage,
    InvalidData,
    MigrationFailed,
    StaleSchema,
)

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATE_URL_VARIABLE = "CONTROLPLANE_MIGRATE_DATABASE_URL"
"""Where ``upgrade_in_child`` hands the database URL to ``controlplane.registry.migrate``."""

# Execution option of the engine behind Database.reading(): its connections only read.
READ_ONLY_OPTION = "controlplane_read_only"

# The top-level migrations/ folder, installed as this package (see pyproject.toml's package-dir).
MIGRATIONS_DIR = Path(str(importlib.resources.files("controlplane.migrations")))
# Alembic's bookkeeping table (migrations/env.py keeps Alembic's default name).
VERSION_TABLE = "alembic_version"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys, a busy timeout and immediate transactions."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **kwargs)

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL cannot corrupt the database; a power cut may lose the last commits.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(READ_ONLY_OPTION, False):
            # Reads open no transaction: each statement sees the last commit (WAL) without taking or
            # waiting for a lock; BEGIN IMMEDIATE would queue every reader behind writers and each other.
            return
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _first_line(exc: BaseException) -> str:
    """The driver's own message without the SQL and parameters SQLAlchemy appends."""
    original = getattr(exc, "orig", None) or exc
    return (str(original).strip().splitlines() or [type(original).__name__])[0][:200]


def alembic_config(url: str) -> Config:
    """An Alembic configuration pointing at the packaged migrations."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def _driver_errors() -> Iterator[None]:
    """Driver errors as control-plane errors (see ``Database.transaction``)."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        if "disk is full" in _first_line(exc) or "No space left" in _first_line(exc):
            raise InsufficientStorage("the disk of the registry database is full") from exc
        # The driver's text names host, port and database: for the log, not for the client.
        log.warning("registry database unavailable: %s", _first_line(exc))
        raise DatabaseUnavailable("the registry database is not available") from exc
    except DataError as exc:
        raise InvalidData("a value is out of range or not storable") from exc
    except OverflowError as exc:
        # sqlite3 refuses integers beyond 64 bits before SQLAlchemy sees them.
        raise InvalidData("a number is out of range") from exc


def _assigned_revisions(source: str) -> tuple[str | None, tuple[str, ...]]:
    """A migration file's ``revision`` and its ``down_revision`` (none, one, or a merge's several)."""
    revision: str | None = None
    down: tuple[str, ...] = ()
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = {t.id for t in targets if isinstance(t, ast.Name)}
        if "revision" in names:
            revision = ast.literal_eval(node.value)
        elif "down_revision" in names:
            value = ast.literal_eval(node.value)
            down = tuple(value) if isinstance(value, list | tuple) else (value,) if value else ()
    return revision, down


@functools.cache
def _migration_head(versions_dir: Path) -> str:
    """The one revision no migration file revises: what Alembic calls the head."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in sorted(versions_dir.glob("*.py")):
        revision, down = _assigned_revisions(path.read_text(encoding="utf-8"))
        if revision is not None:
            revisions.add(revision)
            revised.update(down)
    heads = sorted(revisions - revised)
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {heads}")
    return heads[0]


class Database:
    """One database: engine, session factory and schema checks."""

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine or make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = self.engine.execution_options(**{READ_ONLY_OPTION: True})

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits when the block ends normally, else rolls back.

        Driver errors leave as control-plane errors: a database that cannot be
        reached is DatabaseUnavailable, a value it cannot hold is InvalidData.
        Their messages name neither the URL nor the SQL.
        """
        session = self._sessions()
        try:
            with _driver_errors(), session.begin():
                yield session
        finally:
            session.close()

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection (no ORM session: less work) for statements that only read; errors as ``transaction``.

        Each statement sees the last commit, as in PostgreSQL's READ COMMITTED:
        two statements may see different commits. On SQLite no transaction is
        opened, so a read never waits for a writer; it must not write.
        """
        with _driver_errors(), self._reader.connect() as connection:
            yield connection

    def upgrade(self, revision: str = "head") -> None:
        """Migrate the schema up to ``revision``."""
        from alembic import command

        cfg = alembic_config(self.url)
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def upgrade_in_child(self, revision: str = "head", *, timeout: float = 600.0) -> None:
        """Migrate as ``upgrade`` does, in a child interpreter; MigrationFailed with its last words.

        The URL travels in the child's environment, not its command line,
        which any local user can read.
        """
        env = {**os.environ, MIGRATE_URL_VARIABLE: self.url}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "controlplane.registry.migrate", revision],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise MigrationFailed(f"the schema migration did not finish in {timeout:.0f} s") from exc
        if done.returncode != 0:
            words = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise MigrationFailed(f"the schema migration failed: {words}")

    def downgrade(self, revision: str) -> None:
        """Migrate the schema down to ``revision``."""
        from alembic import command

        cfg = alembic_config(self.url)
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)

    def current_revision(self) -> str | None:
        """The revision the database is at (None for an empty database), as Alembic records it."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table(VERSION_TABLE):
                return None
            recorded = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        if len(recorded) > 1:
            raise RuntimeError(f"the database records several revisions {sorted(recorded)}, expected one")
        return recorded[0] if recorded else None

    @staticmethod
    def head_revision() -> str:
        """The newest revision this code knows."""
        return _migration_head(MIGRATIONS_DIR / "versions")

    def check_schema(self) -> None:
        """Raise StaleSchema unless the database is at the head revision."""
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            raise StaleSchema(
                f"database schema is at {current or 'nothing'}, this code needs {head}: "
                "run `controlplane db upgrade`",
                details={"current": current, "head": head},
            )

    def dispose(self) -> None:
        self.engine.dispose()
