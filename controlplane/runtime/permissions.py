"""File modes of the state directory, and who may reach what in it.

Model code runs inside Triton's backend stubs. When the control plane runs
as root, tritonserver runs as its own unprivileged user (see
``runtime.local``), so what it may open is decided by file modes alone:

=====================================  =====  ==========================================
path (under the state directory)       mode   why
=====================================  =====  ==========================================
``.`` (the state directory)            0711   Triton traverses it to ``pools/`` and
                                              ``backends/``; nobody else may list it
``registry.db`` (+ ``-wal``, ``-shm``,  0600   the registry (SQLite gives its side files
``-journal``)                                 the mode of the database file)
``runtime.json``, ``runtime.lock``     0600   ports and the pools' admin keys
``artifacts/``, ``uploads/``           0700   blobs reach Triton only through the hard
                                              links in a pool's repository (blobs are 0444)
``proxy/`` (haproxy.cfg, admin socket) 0700   the proxy's runtime API changes weights
``pools/``, ``pools/<pool>/``          0711   traversed to the repository; ``triton.log``
                                              there is 0600 (written by the control plane)
``pools/<pool>/repository``            0755   Triton lists and reads the models
``pools/<pool>/staging``               0700   folders are built there, then renamed live
``backends/``                          0755   Triton loads the backends
=====================================  =====  ==========================================

Outside the state directory Triton must reach the wheel's binary, the
virtual environment whose numpy and onnxruntime the stubs import, and the
interpreter's standard library. :func:`make_traversable` adds only the
search bit (``--x`` for group and others) to directories on the way that lack
it: nothing becomes listable or readable that was not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
TRAVERSE_ONLY = 0o711
READABLE_DIR = 0o755

DATABASE_FILE = "registry.db"
_DATABASE_SIDE_FILES = ("", "-wal", "-shm", "-journal")
_TRAVERSE_BITS = stat.S_IXGRP | stat.S_IXOTH


def chmod_if_exists(path: Path, mode: int) -> bool:
    """Set ``path``'s mode (not following a symlink's target); False when it does not exist."""
    try:
        if path.is_symlink():
            return False
        os.chmod(path, mode)
    except FileNotFoundError:
        return False
    return True


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing and make it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    os.chmod(path, PRIVATE_DIR)
    return path


def secure_state_dir(state_dir: Path, pool_roots: Iterable[Path]) -> None:
    """Apply the table of the module docstring to ``state_dir`` (creating the private folders)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, TRAVERSE_ONLY)
    for suffix in _DATABASE_SIDE_FILES:
        chmod_if_exists(state_dir / f"{DATABASE_FILE}{suffix}", PRIVATE_FILE)
    for name in ("runtime.json", "runtime.lock"):
        chmod_if_exists(state_dir / name, PRIVATE_FILE)
    for name in ("artifacts", "uploads", "proxy"):
        private_dir(state_dir / name)
    pools = state_dir / "pools"
    pools.mkdir(exist_ok=True)
    os.chmod(pools, TRAVERSE_ONLY)
    for root in pool_roots:
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, TRAVERSE_ONLY)
        for name in ("triton.log", "tritonserver.pid"):
            chmod_if_exists(root / name, PRIVATE_FILE)
        (root / "repository").mkdir(exist_ok=True)
        os.chmod(root / "repository", READABLE_DIR)
        private_dir(root / "staging")
    if (state_dir / "backends").is_dir():
        os.chmod(state_dir / "backends", READABLE_DIR)


def make_traversable(path: Path) -> list[Path]:
    """Add the group/other search bit to every directory from ``/`` down to ``path`` that lacks it.

    Returns the directories changed (each is logged). A directory we may not
    change (another owner, a read-only file system) is left as it is: the
    start then fails later with Triton's own error, naming the file.
    """
    changed: list[Path] = []
    target = Path(os.path.abspath(path))
    for directory in [*reversed(target.parents), target]:
        try:
            mode = directory.stat().st_mode
        except OSError:
            break
        if not stat.S_ISDIR(mode) or mode & _TRAVERSE_BITS == _TRAVERSE_BITS:
            continue
        with contextlib.suppress(OSError):
            os.chmod(directory, stat.S_IMODE(mode) | _TRAVERSE_BITS)
            changed.append(directory)
            log.warning(
                "made %s traversable (mode %o -> %o) so Triton's user reaches what it loads",
                directory,
                stat.S_IMODE(mode),
                stat.S_IMODE(mode) | _TRAVERSE_BITS,
            )
    return changed
