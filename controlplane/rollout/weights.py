"""Proxy weights: the one path that changes them.

The desired weights are the pools' rows in the database. A rollout records
them in the transaction of the transition that announces them, before they
apply, so ``ProxyWeights`` applies what the database says: as recorded (a
rollout's step, bake or rollback; start-up), or with the reconciler's safety
rule (:func:`safe_weights`). Every change it makes to the router leaves an
audit event ``weights.apply`` with the weights before and after and why; an
apply that changes nothing leaves none.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from controlplane.pools import Pool
from controlplane.registry import rollout_store, store
from controlplane.registry.db import Database
from controlplane.traffic.router import TrafficRouter

log = logging.getLogger(__name__)


def safe_weights(desired: Mapping[str, int], ready: Mapping[str, bool]) -> dict[str, int]:
    """``desired``, with weight 0 for each pool not ready while another ready pool has traffic.

    A pool that is not ready keeps its weight when no other pool could take
    the traffic: moving it would fail every request instead of some.
    """
    safe = dict(desired)
    for pool, weight in desired.items():
        others_ready = any(ready.get(o) and desired[o] > 0 for o in desired if o != pool)
        if weight > 0 and not ready.get(pool, False) and others_ready:
            safe[pool] = 0
    return safe


class ProxyWeights:
    """Applies the desired weights from the database to the router, and audits every change."""

    def __init__(self, *, db: Database, router: TrafficRouter, pools: Mapping[str, Pool]) -> None:
        self.db = db
        self.router = router
        self.pools = pools

    def desired(self) -> dict[str, int]:
        """The weights the database holds for every pool."""
        with self.db.transaction() as session:
            return rollout_store.pool_weights(session)

    def apply_recorded(self, *, why: str, actor: str) -> dict[str, int] | None:
        """Apply the recorded weights as they are; the weights before, or None if nothing changed."""
        return self._apply(self.desired(), why=why, actor=actor)

    def apply_safe(self, *, why: str, actor: str) -> dict[str, int] | None:
        """Apply the recorded weights under :func:`safe_weights`; the weights before, or None."""
        with self.db.transaction() as session:
            desired = rollout_store.pool_weights(session)
            releases = {p: rollout_store.pool_release(session, p) for p in desired}
        ready = {p: self._ready(p, releases[p]) for p in desired if p in self.pools}
        return self._apply(safe_weights(desired, ready), why=why, actor=actor)

    def _ready(self, pool: str, release: Mapping[str, int]) -> bool:
        triton = self.pools[pool].triton
        return all(triton.is_model_ready(model, version) for model, version in release.items())

    def _apply(self, weights: Mapping[str, int], *, why: str, actor: str) -> dict[str, int] | None:
        before = self.router.weights()
        changed = sorted(p for p, w in weights.items() if before.get(p) != w)
        if not changed:
            return None
        self.router.set_weights(weights)
        after = {p: weights[p] for p in sorted(weights)}
        log.debug("proxy weights %s -> %s (%s)", before, after, why)
        # After the change, not before: the event records what the proxy did, not what was tried.
        with self.db.transaction() as session:
            store.append_event(
                session,
                actor=actor,
                action="weights.apply",
                target=",".join(changed),
                outcome="applied",
                details={"from": before, "to": after, "why": why},
            )
        return before
