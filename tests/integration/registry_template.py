"""Migrated SQLite registries for tests: one migration per test process, then copies.

Import as ``from registry_template import migrated_sqlite`` (this folder is on
``sys.path`` for every test folder). Running every Alembic migration costs
about 0.15 s; hundreds of tests that each want a fresh migrated registry
would spend a minute on it. The first call in a process migrates a template
with ``Database.upgrade()`` (the real migrations, so a broken one still
fails every such test); later calls copy that file, which has the same
schema and revision a migration would give. Tests about migrations
themselves start from an empty database instead.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

from controlplane.registry.db import Database

_lock = threading.Lock()
_template: Path | None = None


def _migrated_template() -> Path:
    global _template
    with _lock:
        if _template is None:
            directory = Path(tempfile.mkdtemp(prefix="cp-registry-template-"))
            atexit.register(shutil.rmtree, directory, True)
            path = directory / "registry.db"
            db = Database(f"sqlite:///{path}")
            try:
                db.upgrade()
            finally:
                db.dispose()
            # The last connection closed folds the write-ahead log into the file: it is complete alone.
            leftovers = [p.name for p in directory.iterdir() if p != path]
            assert not leftovers, f"the migrated template is not one file: {leftovers}"
            _template = path
        return _template


def migrated_sqlite(path: Path) -> Database:
    """A SQLite registry at ``path`` migrated to head (a copy of the template; upgraded if it exists)."""
    if path.exists():
        db = Database(f"sqlite:///{path}")
        db.upgrade()
        return db
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_migrated_template(), path)
    return Database(f"sqlite:///{path}")
