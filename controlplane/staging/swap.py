"""Atomic directory replacement.

Linux's ``renameat2(RENAME_EXCHANGE)`` swaps two directory entries in one
step, so a reader of ``live`` sees either the whole old folder or the whole new
one. Where it is missing (another OS, an old kernel, a filesystem without it)
the fallback renames the old folder aside first, which leaves ``live`` absent
for an instant but never half-written.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 1 << 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _renameat2.restype = ctypes.c_int


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False if the system cannot (caller falls back)."""
    if _renameat2 is None:
        return False
    rc = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def replace_directory(new: Path, live: Path) -> Path | None:
    """Put ``new`` at ``live``; return where the previous ``live`` folder now is (or None).

    The previous folder is kept (at ``new``'s old path) so that a failed load
    can swap it back; the caller removes it when done.
    """
    if not live.exists():
        os.rename(new, live)
        return None
    if exchange(new, live):
        return new
    aside = new.with_name(new.name + ".old")
    os.rename(live, aside)
    os.rename(new, live)
    return aside
