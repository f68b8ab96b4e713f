"""Reading ``/proc``: what a pid runs, whether it still lives, when it started.

Pure readers: every function takes the ``/proc`` root as an argument so unit
tests can point it at a fake directory. Nothing here signals a process.

A pid alone does not name a process (the kernel reuses pids). Callers that
must act on "the same process later" pair the pid with its start time
(``ProcStat.start_time``, clock ticks since boot), which never repeats for a
reused pid, or better hold a pidfd (see ``controlplane.runtime.process``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` this package needs."""

    pid: int
    state: str
    """R, S, D, Z (zombie: exited, not yet reaped), T, ..."""
    ppid: int
    pgrp: int
    start_time: int
    """Clock ticks after boot at which the process started; unique per pid incarnation."""

    @property
    def exited(self) -> bool:
        """A zombie has exited; only its parent's wait() is missing."""
        return self.state in ("Z", "X")


def parse_stat(text: str) -> ProcStat:
    """Parse the one line of ``/proc/<pid>/stat``; ValueError if it is not one.

    The command name (field 2) is in parentheses and may itself contain spaces
    and parentheses, so fields are counted from the last ``)``.
    """
    head, sep, tail = text.rpartition(")")
    if not sep or "(" not in head:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:100]!r}")
    pid = int(head.split("(", 1)[0])
    fields = tail.split()
    # fields[0] is field 3 (state); start time is field 22.
    if len(fields) < 20:
        raise ValueError(f"/proc/<pid>/stat line too short: {text[:100]!r}")
    return ProcStat(
        pid=pid,
        state=fields[0],
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        start_time=int(fields[19]),
    )


def read_stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    """``/proc/<pid>/stat`` parsed, or None when there is no such process (or it is unreadable)."""
    try:
        return parse_stat((proc / str(pid) / "stat").read_text(errors="replace"))
    except (OSError, ValueError):
        return None


def read_cmdline(pid: int, proc: Path = PROC) -> list[str] | None:
    """The argv of ``pid``, or None when it is gone, unreadable, or a zombie (empty cmdline)."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    argv = [os.fsdecode(part) for part in raw.split(b"\0")]
    # The kernel ends every argument with NUL, so the last split part is empty.
    if argv and argv[-1] == "":
        argv.pop()
    return argv or None


def owner_uid(pid: int, proc: Path = PROC) -> int | None:
    """The uid owning ``/proc/<pid>`` (the process's effective uid), or None when gone."""
    try:
        return (proc / str(pid)).stat().st_uid
    except OSError:
        return None


def read_pid_file(path: Path) -> int | None:
    """The pid written in ``path``, or None when the file is missing or holds no positive integer."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def group_rss_bytes(pgrp: int, proc: Path = PROC) -> int:
    """Resident memory of every process in process group ``pgrp`` (a server and its backend stubs)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = read_stat(int(entry.name), proc)
        if stat is None or stat.pgrp != pgrp or stat.exited:
            continue
        try:
            resident = int((entry / "statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        total += resident * page
    return total
