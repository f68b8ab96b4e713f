"""A long-running control plane migrates its schema in a child interpreter, never loading Alembic itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.errors import MigrationFailed
from controlplane.registry.db import Database


def test_a_new_database_is_migrated_to_the_head_by_the_child(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    assert database.current_revision() is None

    database.upgrade_in_child()

    assert database.current_revision() == database.head_revision()
    database.check_schema()
    database.dispose()


def test_a_migration_that_fails_is_one_line_naming_the_problem_and_no_url(tmp_path: Path) -> None:
    garbage = tmp_path / "registry.db"
    garbage.write_bytes(b"this is not a database file" * 100)
    database = Database(f"sqlite:///{garbage}")

    with pytest.raises(MigrationFailed, match="the schema migration failed: ") as failure:
        database.upgrade_in_child()

    assert "\n" not in failure.value.message
    assert str(garbage) not in failure.value.message
    assert "not a database" in failure.value.message
    database.dispose()


def test_the_child_refuses_to_run_without_a_url() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "controlplane.registry.migrate"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "CONTROLPLANE_MIGRATE_DATABASE_URL is not set" in done.stderr
