"""The traffic router as the rollout code sees it: weights per pool, idleness, health.

``TrafficRouter`` is the interface; ``HAProxyRouter`` drives HAProxy's
runtime API. A Kubernetes Gateway API router would implement the same four
calls with HTTPRoute backend weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from controlplane.traffic.haproxy import GRPC_BACKEND, HAProxyRuntime


class TrafficRouter(Protocol):
    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Give each named pool its weight (relative share of new requests)."""

    def weights(self) -> dict[str, int]:
        """The weights the router applies now."""

    def wait_idle(self, pool: str, timeout: float) -> None:
        """Return once ``pool`` has no request in flight; ProxyError after ``timeout``."""

    def pool_up(self, pool: str) -> bool:
        """Whether the router's health checks consider ``pool`` able to serve."""


class HAProxyRouter:
    """TrafficRouter over HAProxy's admin socket (both the gRPC and the HTTP backend)."""

    def __init__(self, runtime: HAProxyRuntime) -> None:
        self.runtime = runtime

    def set_weights(self, weights: Mapping[str, int]) -> None:
        # Raise weights before lowering others so the total never drops to zero mid-change.
        current = self.weights()
        ordered = sorted(weights.items(), key=lambda kv: kv[1] <= current.get(kv[0], 0))
        for pool, weight in ordered:
            self.runtime.set_pool_weight(pool, weight)

    def weights(self) -> dict[str, int]:
        # Standbys are backups with a fixed weight, not pools of their own.
        return {s.name: s.weight for s in self.runtime.servers_state(GRPC_BACKEND) if not s.standby}

    def wait_idle(self, pool: str, timeout: float) -> None:
        self.runtime.wait_pool_idle(pool, timeout)

    def pool_up(self, pool: str) -> bool:
        return any(
            s.name == pool and s.operational == "running" and s.check_result in ("passed", "neutral")
            for s in self.runtime.servers_state(GRPC_BACKEND)
        )
