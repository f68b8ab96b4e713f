"""Resolving a webhook URL and deciding whether a delivery may connect to it.

Checked when a subscription is made and again before every delivery (DNS
answers change). The delivery then connects to the very address checked
here, never resolving the name a second time, so a name that answers with a
public address for the check and a private one for the connection (DNS
rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from controlplane.domain.webhook_targets import (
    IPAddress,
    TargetAllowlist,
    WebhookUrl,
    parse_webhook_url,
    refusal,
)
from controlplane.errors import InvalidInput

Resolver = Callable[[str, int, float], list[str]]
"""(host, port, timeout seconds) -> the addresses the host resolves to; OSError when it does not."""

RESOLVE_TIMEOUT_SECONDS = 2.0


def resolve_host(host: str, port: int, timeout: float) -> list[str]:
    """The addresses ``host`` resolves to, within ``timeout`` seconds (TimeoutError past it)."""
    outcome: dict[str, object] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            outcome["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            outcome["error"] = exc
        finally:
            done.set()

    # getaddrinfo has no timeout of its own: a daemon thread is left to finish on its own if it hangs.
    threading.Thread(target=lookup, name="webhook-dns", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"{host} did not resolve within {timeout:g} s")
    error = outcome.get("error")
    if isinstance(error, OSError):
        raise error
    infos = outcome["infos"]
    assert isinstance(infos, list)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


REFUSED = "webhook_target_refused"


@dataclass(frozen=True)
class CheckedTarget:
    """A URL and the address it was checked at: the one the delivery connects to."""

    url: WebhookUrl
    address: IPAddress

    @property
    def pinned_url(self) -> str:
        return self.url.pinned(self.address)


class TargetChecker:
    """Checks URLs against the refused address classes and the admin's allowlist."""

    def __init__(self, allowlist: TargetAllowlist, *, resolver: Resolver = resolve_host) -> None:
        self.allowlist = allowlist
        self.resolver = resolver

    def check(self, url: str, *, timeout: float = RESOLVE_TIMEOUT_SECONDS) -> CheckedTarget:
        """The URL with its first address, if deliveries may reach every address its host resolves to.

        InvalidInput: ``webhook_target_refused`` naming the address and its
        class, or ``invalid_webhook_url`` for a URL of the wrong form.
        """
        parsed = parse_webhook_url(url)
        addresses = self._addresses(parsed, timeout)
        if self.allowlist.allows_host(parsed.host):
            return CheckedTarget(parsed, addresses[0])
        for address in addresses:
            kind = refusal(address, self.allowlist)
            if kind is not None:
                article = "an" if kind.value[0] in "aeiou" else "a"
                raise InvalidInput(
                    f"webhook host {parsed.host} resolves to {address}, {article} {kind} address: deliveries "
                    "may not reach it (an admin can allow it with CONTROLPLANE_WEBHOOK_ALLOWED_NETWORKS)",
                    code=REFUSED,
                    details={"host": parsed.host, "address": str(address), "class": kind.value},
                )
        return CheckedTarget(parsed, addresses[0])

    def _addresses(self, parsed: WebhookUrl, timeout: float) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(parsed.host)]
        except ValueError:
            pass
        try:
            found = self.resolver(parsed.host, parsed.port, timeout)
        except (OSError, TimeoutError) as exc:
            raise InvalidInput(
                f"webhook host {parsed.host} does not resolve: {exc}",
                code=REFUSED,
                details={"host": parsed.host, "class": "unresolvable"},
            ) from None
        addresses: list[IPAddress] = []
        for text in found:
            try:
                addresses.append(ipaddress.ip_address(text.split("%")[0]))
            except ValueError:
                continue
        if not addresses:
            raise InvalidInput(
                f"webhook host {parsed.host} resolves to no address",
                code=REFUSED,
                details={"host": parsed.host, "class": "unresolvable"},
            )
        return addresses
