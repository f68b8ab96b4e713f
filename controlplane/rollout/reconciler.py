"""The reconciler: converge what runs (Triton, repositories, proxy weights) to what the database says.

``run_once`` is one pass; ``run_forever`` adds only sleeping and a stop flag.
A pass never fights a rollout worker: pools a worker holds are skipped, and
weights are left to the worker while one is running. After a restart of the
control plane the pass resumes rollouts that have no worker.

Invariant enforced on weights: a pool keeps a weight above 0 only if every
model of its release is READY there, unless no other pool could take the
traffic (then moving it would fail every request instead of some).
"""

from __future__ import annotations

import logging
import threading

from controlplane.errors import ControlPlaneError
from controlplane.registry import rollout_store
from controlplane.rollout.engine import RolloutEngine
from controlplane.service import ControlPlane
from controlplane.traffic.router import TrafficRouter

log = logging.getLogger(__name__)


class Reconciler:
    """Compares desired state with actual state and converges, one pass at a time."""

    def __init__(self, *, cp: ControlPlane, engine: RolloutEngine, router: TrafficRouter) -> None:
        self.cp = cp
        self.engine = engine
        self.router = router

    def run_once(self) -> list[str]:
        """One pass; returns a line per change made."""
        changes = list(c for c in self.cp.reconcile() if not c.startswith("skipped"))
        changes += [f"resumed rollout {i}" for i in self.engine.resume()]
        if not self.engine.busy():
            changes += self._converge_weights()
        return changes

    def _ready(self, pool: str, release: dict[str, int]) -> bool:
        triton = self.cp.pools[pool].triton
        return all(triton.is_model_ready(model, version) for model, version in release.items())

    def _converge_weights(self) -> list[str]:
        with self.cp.db.transaction() as session:
            desired = rollout_store.pool_weights(session)
            releases = {p: rollout_store.pool_release(session, p) for p in desired}
        ready = {p: self._ready(p, releases[p]) for p in desired if p in self.cp.pools}
        safe = dict(desired)
        for pool, weight in desired.items():
            others_ready = any(ready.get(o) and desired[o] > 0 for o in desired if o != pool)
            if weight > 0 and not ready.get(pool, False) and others_ready:
                safe[pool] = 0
        actual = self.router.weights()
        if all(actual.get(p) == w for p, w in safe.items()):
            return []
        self.router.set_weights(safe)
        return [f"proxy weights {actual} -> {safe}"]

    def run_forever(self, stop: threading.Event, *, interval: float = 5.0) -> None:
        """Pass after pass until ``stop`` is set; a failing pass is logged and retried."""
        while not stop.is_set():
            try:
                for change in self.run_once():
                    log.info("reconcile: %s", change)
            except ControlPlaneError as exc:
                log.warning("reconcile pass failed: %s", exc)
            stop.wait(interval)
