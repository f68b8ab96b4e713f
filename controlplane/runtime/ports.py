"""Free TCP ports on the loopback interface."""

from __future__ import annotations

import socket
from collections.abc import Collection


def free_ports(count: int, host: str = "127.0.0.1", *, exclude: Collection[int] = ()) -> list[int]:
    """``count`` distinct ports that were free a moment ago (bound together, then released).

    Ports in ``exclude`` (reserved for something not running right now) are
    never returned.
    """
    sockets = []
    ports: list[int] = []
    try:
        # Bounded: the kernel hands out ephemeral ports in a wide range, so a few
        # excluded ones are skipped within a handful of tries.
        for _ in range(count + len(exclude) + 16):
            if len(ports) == count:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
            port = s.getsockname()[1]
            if port not in exclude:
                ports.append(port)
        if len(ports) < count:
            raise OSError(f"could not find {count} free ports on {host}")
        return ports
    finally:
        for s in sockets:
            s.close()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound on ``host`` right now (a listener on any address counts as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
