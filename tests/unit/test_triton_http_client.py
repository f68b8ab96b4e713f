"""The Triton control client over HTTP, against a local socket that plays the part of a restarted server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from controlplane.errors import TritonUnavailable
from controlplane.triton.client import TritonClient

READY = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


@pytest.fixture
def server() -> Iterator[tuple[int, list[bytes]]]:
    """Closes its first connection after reading a request, without answering; answers 200 after that."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        for number in range(2):
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                seen.append(connection.recv(65536))
                if number > 0:
                    connection.sendall(READY)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], seen
    listener.close()
    thread.join(5)


def test_a_connection_the_server_drops_unanswered_is_tried_once_more_on_a_new_one(
    server: tuple[int, list[bytes]],
) -> None:
    port, seen = server
    client = TritonClient(f"127.0.0.1:{port}", timeout=5)
    try:
        assert client.is_ready()
    finally:
        client.close()
    assert [request.split(b"\r\n")[0] for request in seen] == [b"GET /v2/health/ready HTTP/1.1"] * 2


def test_a_server_that_is_not_there_is_unavailable_not_a_failed_version() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    client = TritonClient(f"http://127.0.0.1:{port}", timeout=1)
    try:
        assert not client.is_ready()
        with pytest.raises(TritonUnavailable, match="Triton did not answer repository index"):
            client.repository_index()
    finally:
        client.close()
