"""The traffic router as the rollout code sees it: weights per pool, idleness, health.

``TrafficRouter`` is the interface; ``HAProxyRouter`` drives HAProxy's
runtime API. A Kubernetes Gateway API router would implement the same four
calls with HTTPRoute backend weights.

A pool is one or more replica servers in the proxy; the router speaks of
pools only. A pool's weight is every one of its replicas' weight, it is up
only when every replica is, and idle only when every replica is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from controlplane.traffic.haproxy import GRPC_BACKEND, HAProxyRuntime, ServerState

log = logging.getLogger(__name__)


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
        """Set each pool's weight on every replica server of it (a split pool is made whole again)."""
        # Raise weights before lowering others so the total never drops to zero mid-change.
        current = self.weights()
        ordered = sorted(weights.items(), key=lambda kv: kv[1] <= current.get(kv[0], 0))
        for pool, weight in ordered:
            self.runtime.set_pool_weight(pool, weight)

    def weights(self) -> dict[str, int]:
        """One weight per pool, read from its replica servers in the gRPC backend.

        A pool whose replicas have different weights (a change half applied,
        by a control plane that died between two commands) is left out and
        logged: it has no one weight. Left out rather than raised, because
        the callers that heal it are the ones comparing these weights with
        the desired ones (the reconciler, the start-up): a missing pool
        differs from any desired weight, so they apply it again, to every
        replica. An error here would stop them instead, for good.
        """
        per_pool: dict[str, set[int]] = {}
        # Standbys are backups with a fixed weight, not pools of their own.
        for state in self._replica_states():
            per_pool.setdefault(state.pool, set()).add(state.weight)
        split = {pool: sorted(found) for pool, found in per_pool.items() if len(found) > 1}
        if split:
            log.warning("pool replicas with different weights (a change half applied): %s", split)
        return {pool: found.pop() for pool, found in per_pool.items() if pool not in split}

    def wait_idle(self, pool: str, timeout: float) -> None:
        self.runtime.wait_pool_idle(pool, timeout)

    def pool_up(self, pool: str) -> bool:
        """Every replica server of ``pool`` is running with a passing health check (False for none)."""
        replicas = [s for s in self._replica_states() if s.pool == pool]
        return bool(replicas) and all(
            s.operational == "running" and s.check_result in ("passed", "neutral") for s in replicas
        )

    def _replica_states(self) -> list[ServerState]:
        return [s for s in self.runtime.servers_state(GRPC_BACKEND) if not s.standby]
