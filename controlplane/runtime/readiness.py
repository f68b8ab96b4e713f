"""``/readyz``'s view of a serving stack: does every Triton replica and the proxy answer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controlplane.errors import ControlPlaneError
from controlplane.traffic.haproxy import HAProxyRuntime
from controlplane.triton.client import TritonClient


def stack_readiness(
    tritons: Iterable[tuple[str, str, Mapping[str, str]]], runtime: HAProxyRuntime
) -> dict[str, str]:
    """One entry per (check name, HTTP URL, admin headers) and one for the proxy: "ok" or what is wrong."""
    checks: dict[str, str] = {}
    for name, url, headers in tritons:
        client = TritonClient(url, timeout=2.0, headers=dict(headers))
        try:
            checks[name] = "ok" if client.is_ready() else "not ready"
        finally:
            client.close()
    try:
        runtime.servers_state()
        checks["proxy"] = "ok"
    except ControlPlaneError as exc:
        checks["proxy"] = exc.message
    return checks
