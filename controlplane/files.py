"""Whole-file writes and hard links, shared by every layer.

* A file written through :func:`atomic_writer` (or its shortcuts) is either
  the old content or the new, never a mix: the bytes go to a temporary file in
  the same directory, which is then renamed over the target with
  ``os.replace``. A running process that has the old file open or mapped
  keeps its old inode. A failure removes the temporary file and leaves the
  target as it was.
* ``durable=True`` also syncs the file before the rename and the directory
  after it, so the new content survives a power loss, not only a crash.
* :func:`link_or_copy` shares the blob's inode where the filesystem allows it
  and falls back to a read-only copy where it cannot link.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# Where a hard link is impossible but a copy is not: another filesystem, a
# filesystem or policy that forbids links (protected_hardlinks), too many links.
_CANNOT_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK)


@contextlib.contextmanager
def atomic_writer(
    path: Path, *, mode: int = 0o600, durable: bool = False, suffix: str = ""
) -> Iterator[BinaryIO]:
    """Yield a binary handle whose content replaces ``path`` atomically when the block ends cleanly.

    ``mode`` is set on the file before it appears under ``path`` (mkstemp's
    0600 unless told otherwise). An exception in the block removes the
    temporary file and leaves ``path`` untouched.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if durable:
        sync_directory(path.parent)


def write_atomically(path: Path, data: bytes | str, *, mode: int = 0o600, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) atomically; see :func:`atomic_writer`."""
    with atomic_writer(path, mode=mode, durable=durable) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def copy_atomically(
    source: Path, destination: Path, *, mode: int | None = None, durable: bool = False
) -> None:
    """Replace ``destination`` with a copy of ``source`` atomically.

    The copy gets ``mode``, or ``source``'s permission bits when ``mode`` is None.
    """
    bits = mode if mode is not None else source.stat().st_mode & 0o7777
    with atomic_writer(destination, mode=bits, durable=durable) as handle, source.open("rb") as src:
        shutil.copyfileobj(src, handle)


def sync_directory(directory: Path) -> None:
    """fsync ``directory``: a rename or a new entry in it is durable only after this."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def link_or_copy(source: Path, destination: Path, *, copy_mode: int = 0o444) -> None:
    """Hard-link ``source`` at ``destination``, or copy it there (mode ``copy_mode``) where no link can be.

    Only the errors that mean "no link here" (another filesystem, links
    forbidden, too many links) fall back to a copy; anything else is raised.
    A copy is read-only by default, as the linked blob is.
    """
    try:
        os.link(source, destination)
    except OSError as exc:
        if exc.errno not in _CANNOT_LINK:
            raise
        shutil.copyfile(source, destination)
        os.chmod(destination, copy_mode)
