"""Free TCP ports on the loopback interface.

A port is free when it can be bound, but whoever asks for one binds it only
later (a tritonserver or HAProxy it starts a moment after). Two processes
asking meanwhile (two control planes starting at once, test processes
running side by side) could be told the same port, and one of their
servers would then fail to listen. So every port handed out is also
recorded, for ``HOLD_SECONDS``, in a small file in the temporary directory
that every process on the machine reads and writes under an exclusive lock;
a recorded port is not handed out again until its hold has run out.
Recording is best effort: where the file cannot be used, ports are still
found as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path

HOLD_SECONDS = 300.0
"""How long a port handed out is kept from every other caller on this machine (time to bind it,
and to bind it again when what listened there is restarted on the same port)."""


def reservations_file() -> Path:
    """The file that records the ports handed out on this machine and until when."""
    return Path(tempfile.gettempdir()) / "controlplane-ports"


def _parse(text: str, now: float) -> dict[int, float]:
    held: dict[int, float] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 2:
            continue
        with contextlib.suppress(ValueError):
            port, until = int(fields[0]), float(fields[1])
            if until > now:
                held[port] = max(until, held.get(port, until))
    return held


@contextlib.contextmanager
def _held_ports() -> Iterator[dict[int, float] | None]:
    """The ports still held (port -> until), locked; entries added by the caller are written back.

    Yields None where the file cannot be opened or locked (read-only or
    foreign temporary directory): the caller goes on without it.
    """
    path = reservations_file()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield None
        return
    with os.fdopen(fd, "r+", encoding="ascii", errors="replace") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            yield None
            return
        held = _parse(handle.read(), time.time())
        before = dict(held)
        yield held
        if held != before:
            with contextlib.suppress(OSError):
                handle.seek(0)
                handle.truncate()
                handle.write("".join(f"{port} {until:.3f}\n" for port, until in sorted(held.items())))
                handle.flush()


def free_ports(count: int, host: str = "127.0.0.1", *, exclude: Collection[int] = ()) -> list[int]:
    """``count`` distinct ports that were free a moment ago and that no other caller was just given.

    Ports in ``exclude`` (reserved for something not running right now) are
    never returned; the ports returned are held from every caller on this
    machine for ``HOLD_SECONDS``.
    """
    with _held_ports() as held:
        taken = set(exclude) | set(held or ())
        sockets = []
        ports: list[int] = []
        try:
            # Bounded: the kernel hands out ephemeral ports in a wide range, so the few
            # excluded or held ones are skipped within a handful of tries.
            for _ in range(count + len(taken) + 16):
                if len(ports) == count:
                    break
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((host, 0))
                sockets.append(s)
                port = s.getsockname()[1]
                if port not in taken:
                    ports.append(port)
            if len(ports) < count:
                raise OSError(f"could not find {count} free ports on {host}")
        finally:
            for s in sockets:
                s.close()
        if held is not None:
            until = time.time() + HOLD_SECONDS
            held.update(dict.fromkeys(ports, until))
        return ports


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound on ``host`` right now (a listener on any address counts as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
