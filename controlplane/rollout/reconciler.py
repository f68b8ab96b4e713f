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
from controlplane.registry import rollout_store, store
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
        self._wake = threading.Event()

    def run_once(self) -> list[str]:
        """One pass; returns a line per change made."""
        changes = self._sync_standby() if self.engine.settings.standby_warm else []
        changes += [c for c in self.cp.reconcile() if not c.startswith("skipped")]
        changes += [f"resumed rollout {i}" for i in self.engine.resume()]
        if not self.engine.busy():
            changes += self._converge_weights()
        return changes

    def _sync_standby(self) -> list[str]:
        """Record the live pool's release for every pool without traffic (a deploy changed it, say).

        Only while no rollout runs: a rollout decides its pools' releases itself.
        """
        if self.engine.busy():
            return []
        changes: list[str] = []
        with self.cp.db.transaction() as session:
            if rollout_store.list_rollouts(session, active_only=True):
                return []
            weights = rollout_store.pool_weights(session)
            if not weights or max(weights.values()) == 0:
                return []
            live = rollout_store.live_pool_of(weights)
            release = rollout_store.pool_release(session, live)
            for pool, weight in weights.items():
                if weight > 0 or pool == live or pool not in self.cp.pools:
                    continue
                current = rollout_store.pool_release(session, pool)
                if current == release:
                    continue
                rollout_store.set_pool_release(session, pool, release)
                store.append_event(
                    session,
                    actor="reconciler",
                    action="standby.sync",
                    target=pool,
                    outcome="recorded",
                    details={"from": current, "to": release, "live_pool": live},
                )
                changes.append(f"standby {pool} follows {live}: {current} -> {release}")
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

    def wake(self) -> None:
        """Run the next pass now instead of at the end of the interval (after a deploy, say)."""
        self._wake.set()

    def run_forever(self, stop: threading.Event, *, interval: float = 5.0) -> None:
        """Pass after pass until ``stop`` is set; a failing pass is logged and retried."""
        while not stop.is_set():
            try:
                for change in self.run_once():
                    log.info("reconcile: %s", change)
            except ControlPlaneError as exc:
                log.warning("reconcile pass failed: %s", exc)
            except Exception:
                # The loop must outlive any bug in one pass: log it whole and try again next time.
                log.exception("reconcile pass failed unexpectedly")
            self._wake.wait(interval)
            self._wake.clear()
