"""The API's server refuses oversized heads and drops slow or idle clients, and stays responsive.

Served by real uvicorn with the product's ``server_config`` (h11, head limit,
head deadline, body pacing) around a real SQLite registry.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .api_fixtures import ApiServer, serve_api

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 1.5
BODY_IDLE = 1.5


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with serve_api(
        tmp_path_factory.mktemp("limits") / "state",
        header_timeout_seconds=HEADER_TIMEOUT,
        body_idle_timeout_seconds=BODY_IDLE,
        min_upload_bytes_per_second=1024,
        max_header_bytes=16 * 1024,
    ) as server:
        yield server


def connect(api: ApiServer) -> socket.socket:
    host, port = api.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def healthz_seconds(api: ApiServer) -> float:
    started = time.monotonic()
    with httpx.Client(timeout=5) as client:
        assert client.get(f"{api.url}/healthz").status_code == 200
    return time.monotonic() - started


def test_a_one_megabyte_header_is_refused_with_431_json_while_healthz_answers_at_once(api: ApiServer) -> None:
    sock = connect(api)
    answers: list[float] = []
    probe = threading.Thread(target=lambda: answers.append(healthz_seconds(api)))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    probe.start()
    sent = 0
    try:
        while sent < 1024 * 1024:
            sock.sendall(b"a" * 65536)
            sent += 65536
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = read_all(sock, 5)
    probe.join()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b'"code":"headers_too_large"' in answer.replace(b" ", b"")
    assert sent < 1024 * 1024 or answer  # refused before the whole header was taken
    assert answers and answers[0] < 0.5


def test_a_request_line_that_never_ends_is_closed_within_the_header_timeout(api: ApiServer) -> None:
    sock = connect(api)
    started = time.monotonic()
    sock.sendall(b"GET /heal")
    answer = read_all(sock, HEADER_TIMEOUT + 5)
    elapsed = time.monotonic() - started
    assert answer == b""
    assert HEADER_TIMEOUT - 0.2 <= elapsed < HEADER_TIMEOUT + 2


def test_headers_trickled_a_byte_at_a_time_are_cut_at_the_header_timeout(api: ApiServer) -> None:
    sock = connect(api)
    started = time.monotonic()
    closed_after = None
    try:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100:
            sock.send(bytes([byte]))
            time.sleep(0.2)
            if time.monotonic() - started > HEADER_TIMEOUT + 5:
                break
    except (BrokenPipeError, ConnectionResetError):
        closed_after = time.monotonic() - started
    if closed_after is None:
        assert read_all(sock, 1) == b""
        closed_after = time.monotonic() - started
    assert closed_after < HEADER_TIMEOUT + 2


def test_an_upload_trickling_one_byte_per_second_is_cut_with_408(api: ApiServer) -> None:
    sock = connect(api)
    sock.sendall(
        b"POST /v1/models/mlp/versions HTTP/1.1\r\nHost: x\r\nContent-Type: application/gzip\r\n"
        b"Authorization: Bearer " + api.admin.encode() + b"\r\nContent-Length: 1000\r\n\r\n"
    )
    started = time.monotonic()
    answer = b""
    sock.settimeout(1.0)
    while time.monotonic() - started < BODY_IDLE + 10:
        try:
            sock.send(b"x")
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
        if not chunk:
            break
        answer += chunk
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"request_timeout" in answer
    assert elapsed < BODY_IDLE + 3
    assert list(Path(api.settings.uploads_dir).glob("*")) == []


@pytest.mark.exclusive
def test_fifty_idle_connections_do_not_delay_healthz(api: ApiServer) -> None:
    idle = [connect(api) for _ in range(50)]
    try:
        for sock in idle[:25]:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # half a request head
        assert max(healthz_seconds(api) for _ in range(5)) < 0.5
    finally:
        for sock in idle:
            sock.close()
