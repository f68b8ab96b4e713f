"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that records every request it gets.

What it answers is up to the test (``answer``: a status, or a status and a
Location), and it can answer slowly (``delay``) to keep deliveries in
flight. It counts requests under way, so a test can act while one is.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from controlplane.domain.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str
    host: str
    event_id: str
    timestamp: str
    signature: str
    body: bytes
    at: float
    """time.time() when the request arrived."""

    def signed_by(self, secret: str) -> bool:
        """Whether the signature is valid and the timestamp was fresh when the request arrived."""
        return verify(secret, body=self.body, timestamp=self.timestamp, signature=self.signature, now=self.at)


Answer = Callable[[Received], int | tuple[int, str]]


class Receiver:
    """Records requests; answers each with ``answer(request)`` after ``delay`` seconds."""

    def __init__(
        self, answer: Answer = lambda _r: 200, *, delay: float = 0.0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.answer = answer
        self.scheme = "https" if tls is not None else "http"
        self.delay = delay
        self.received: list[Received] = []
        self.in_flight = 0
        self.in_flight_ids: set[str] = set()
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="webhook-receiver", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/hooks") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def event_ids(self) -> list[int]:
        """The event id of every POST, in arrival order (repeats included)."""
        return [int(r.event_id) for r in self.requests() if r.method == "POST"]

    def wait_for(self, condition: Callable[[Receiver], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver: {what} not seen in {timeout} s; got {self.event_ids()}")
            time.sleep(0.02)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Received(
                    method=self.command,
                    path=self.path,
                    host=self.headers.get("Host", ""),
                    event_id=self.headers.get(EVENT_ID_HEADER, ""),
                    timestamp=self.headers.get(TIMESTAMP_HEADER, ""),
                    signature=self.headers.get(SIGNATURE_HEADER, ""),
                    body=body,
                    at=time.time(),
                )
                with receiver._lock:
                    receiver.received.append(request)
                    receiver.in_flight += 1
                    receiver.in_flight_ids.add(request.event_id)
                    receiver.max_in_flight = max(receiver.max_in_flight, receiver.in_flight)
                try:
                    if receiver.delay:
                        time.sleep(receiver.delay)
                    answer = receiver.answer(request)
                    status, location = answer if isinstance(answer, tuple) else (answer, "")
                    self.send_response(status)
                    if location:
                        self.send_header("Location", location)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender gave up (or was killed) before the answer
                finally:
                    with receiver._lock:
                        receiver.in_flight -= 1
                        receiver.in_flight_ids.discard(request.event_id)

            do_POST = _handle
            do_GET = _handle

            def log_message(self, *_args: object) -> None:
                pass

        return Handler


@contextmanager
def running_receiver(
    answer: Answer = lambda _r: 200, *, delay: float = 0.0, tls: ssl.SSLContext | None = None
) -> Iterator[Receiver]:
    """A started receiver (https with ``tls``), stopped at the end of the block."""
    receiver = Receiver(answer, delay=delay, tls=tls).start()
    try:
        yield receiver
    finally:
        receiver.stop()
