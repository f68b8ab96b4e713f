"""Removal of what a dead tritonserver leaves behind.

Python-backend stub processes survive their server (they ignore SIGTERM once
the parent is gone) and keep their /dev/shm regions. Each server of ours
runs with its own ``shm-region-prefix-name``, which appears as the stub's
second argument (``<prefix><uuid>``) and as the region file names, so only
that server's leftovers are touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from controlplane.procfs import PROC, read_cmdline

STUB_NAME = "triton_python_backend_stub"


def orphaned_stubs(shm_prefix: str, proc: Path = PROC) -> list[int]:
    """PIDs of backend stub processes started by the server that used ``shm_prefix``."""
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        argv = read_cmdline(int(entry.name), proc) or []
        if len(argv) > 2 and argv[0].endswith(STUB_NAME) and argv[2].lstrip("/").startswith(shm_prefix):
            pids.append(int(entry.name))
    return pids


def clean_triton_leftovers(shm_prefix: str, *, shm_dir: Path = Path("/dev/shm")) -> tuple[int, int]:
    """SIGKILL this server's stub processes and delete its shm regions; return (killed, removed)."""
    killed = 0
    for pid in orphaned_stubs(shm_prefix):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    removed = 0
    if shm_dir.is_dir():
        for region in shm_dir.glob(f"{shm_prefix}*"):
            with contextlib.suppress(FileNotFoundError):
                region.unlink()
                removed += 1
    return killed, removed
