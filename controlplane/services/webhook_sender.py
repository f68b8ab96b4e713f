"""One delivery attempt over HTTP: check the target, POST the signed event, read a bounded answer.

The request goes to the address the check approved (the URL carries the IP;
the Host header and, for https, the TLS server name and certificate check
keep the host name). Redirects are not followed (a 3xx fails: its Location
was never checked), proxies from the environment are not used (they would
connect elsewhere), and the whole attempt, resolution included, has a
deadline; at most ``max_response_bytes`` of the answer are read, then
dropped.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Mapping

import anyio
import httpx

from controlplane.domain.webhooks import AttemptResult, DeliveryOutcome, outcome_of_status
from controlplane.errors import InvalidInput
from controlplane.services.webhook_targets import CheckedTarget, TargetChecker

USER_AGENT = "triton-controlplane-webhooks/1"


class WebhookSender:
    """Sends one signed event to a subscription's URL and says how it went.

    Thread-safe: the requests of every calling thread run on one event loop
    in a daemon thread of the sender's own (started at the first send, ended
    by ``close``), rather than a loop made per request (milliseconds each).
    """

    def __init__(
        self,
        targets: TargetChecker,
        *,
        connect_timeout: float = 2.0,
        total_timeout: float = 5.0,
        max_response_bytes: int = 64 * 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.targets = targets
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self.max_response_bytes = max_response_bytes
        # Loading the CA bundle takes tens of milliseconds: once, not per delivery.
        self.ssl_context = ssl_context or httpx.create_ssl_context()
        self._lock = threading.Lock()
        self._event_loop: asyncio.AbstractEventLoop | None = None

    def _loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._event_loop is None:
                loop = asyncio.new_event_loop()

                def run() -> None:
                    loop.run_forever()
                    loop.close()

                threading.Thread(target=run, name="webhook-http", daemon=True).start()
                self._event_loop = loop
            return self._event_loop

    def close(self) -> None:
        """End the sender's event loop (a later send starts another)."""
        with self._lock:
            loop, self._event_loop = self._event_loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)

    def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> AttemptResult:
        """POST ``body`` with ``headers``; never raises for anything the target or the network does."""
        started = time.monotonic()

        def result(outcome: DeliveryOutcome, status: int | None, error: str | None) -> AttemptResult:
            return AttemptResult(outcome, status, error, int((time.monotonic() - started) * 1000))

        try:
            target = self.targets.check(url, timeout=min(self.connect_timeout, self.total_timeout))
        except InvalidInput as exc:
            return result(DeliveryOutcome.REFUSED, None, exc.message)
        remaining = self.total_timeout - (time.monotonic() - started)
        pending = asyncio.run_coroutine_threadsafe(
            self._post(target, body, dict(headers), remaining), self._loop()
        )
        try:
            # The coroutine keeps its own deadline; this one only covers a loop stopped under it.
            status, location = pending.result(timeout=remaining + 5.0)
        except TimeoutError:
            pending.cancel()
            return result(DeliveryOutcome.FAILED, None, f"no answer within {self.total_timeout:g} s")
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            return result(DeliveryOutcome.FAILED, None, f"{type(exc).__name__}: {exc or 'no detail'}")
        outcome = outcome_of_status(status)
        if outcome is DeliveryOutcome.DELIVERED:
            return result(outcome, status, None)
        if 300 <= status < 400:
            return result(outcome, status, f"HTTP {status} redirect to {location or '?'} not followed")
        return result(outcome, status, f"HTTP {status}")

    async def _post(
        self, target: CheckedTarget, body: bytes, headers: dict[str, str], deadline: float
    ) -> tuple[int, str | None]:
        extensions = {}
        if target.url.scheme == "https" and not target.url.host_is_address:
            extensions["sni_hostname"] = target.url.host
        headers = {
            **headers,
            "Host": target.url.host_header,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        with anyio.fail_after(max(deadline, 0.001)):
            async with (
                httpx.AsyncClient(
                    verify=self.ssl_context,
                    trust_env=False,
                    follow_redirects=False,
                    timeout=httpx.Timeout(self.total_timeout, connect=self.connect_timeout),
                ) as client,
                client.stream(
                    "POST", target.pinned_url, content=body, headers=headers, extensions=extensions
                ) as response,
            ):
                received = 0
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if received >= self.max_response_bytes:
                        break
                return response.status_code, response.headers.get("location")
