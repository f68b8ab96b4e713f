"""``python -m controlplane.registry.migrate [REVISION]``: the child that ``Database.upgrade_in_child`` runs.

It migrates the database named by ``CONTROLPLANE_MIGRATE_DATABASE_URL`` and
exits; a failure is one line on stderr (no URL, no SQL) and exit status 1.
"""

from __future__ import annotations

import os
import sys

from controlplane.errors import ControlPlaneError
from controlplane.registry.db import MIGRATE_URL_VARIABLE, Database


def main(argv: list[str]) -> int:
    """Migrate to ``argv[0]`` (default head); the process's exit status."""
    url = os.environ.get(MIGRATE_URL_VARIABLE)
    if not url:
        print(f"{MIGRATE_URL_VARIABLE} is not set", file=sys.stderr)
        return 2
    database = Database(url)
    try:
        database.upgrade(argv[0] if argv else "head")
    except ControlPlaneError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - any failure becomes the one line the parent reports
        print(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 1
    finally:
        database.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
