"""The reconciler: converge what runs (Triton, repositories, proxy weights) to what the database says.

``run_once`` is one pass; ``run_forever`` adds only sleeping and a stop flag.
A pass never fights another operation: each pool is repaired under its claim
(``pool_claims``), so pools a rollout or a deploy holds are skipped, and
weights are left alone while any rollout holds a pool, whichever control
plane drives it. The pass adopts and resumes active rollouts that nobody
drives (after a restart of the control plane, or the death of another one),
and expires rollout requests whose approval deadline has passed.

Invariant enforced on weights: a pool keeps a weight above 0 only if every
model of its release is READY there, unless no other pool could take the
traffic (then moving it would fail every request instead of some).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session

from controlplane.domain.claims import HolderKind
from controlplane.domain.recycling import RecyclePolicy, recycle_due
from controlplane.errors import ControlPlaneError, PoolBusy
from controlplane.registry import claim_store, rollout_store, store
from controlplane.rollout.engine import RolloutEngine
from controlplane.rollout.weights import ProxyWeights
from controlplane.services.recycle import PoolRecycler
from controlplane.services.repair import PoolRepair
from controlplane.traffic.router import TrafficRouter

log = logging.getLogger(__name__)


class Reconciler:
    """Compares desired state with actual state and converges, one pass at a time."""

    def __init__(
        self,
        *,
        repair: PoolRepair,
        engine: RolloutEngine,
        router: TrafficRouter,
        recycler: PoolRecycler | None = None,
        recycle_policy: RecyclePolicy | None = None,
    ) -> None:
        self.repair = repair
        self.engine = engine
        self.router = router
        self.recycler = recycler
        self.recycle_policy = recycle_policy or RecyclePolicy()
        self.weights = ProxyWeights(db=repair.db, router=router, pools=repair.pools)
        self._wake = threading.Event()

    def run_once(self) -> list[str]:
        """One pass; returns a line per change made."""
        prepare = self._sync_standby if self.engine.settings.standby_warm else None
        changes = [c for c in self.repair.reconcile(prepare=prepare) if not c.startswith("skipped")]
        changes += [f"resumed rollout {i}" for i in self.engine.resume()]
        changes += [f"rollout {i} expired waiting for approval" for i in self.engine.expire_overdue()]
        if not self.engine.busy() and not self._rollout_holds_a_pool():
            changes += self._converge_weights()
            changes += self._recycle_due_pools()
        return changes

    def _recycle_due_pools(self) -> list[str]:
        """Recycle each pool without traffic that the policy says is due (one pool per pass)."""
        if self.recycler is None or not self.recycle_policy.active:
            return []
        with self.repair.db.transaction() as session:
            weights = rollout_store.pool_weights(session)
        for name, pool in self.repair.pools.items():
            if weights.get(name, 0) > 0:
                continue
            why = recycle_due(
                self.recycle_policy,
                loads=pool.loads_since_recycle,
                memory_bytes=self.recycler.processes.memory_bytes(name)
                if self.recycle_policy.above_bytes
                else None,
            )
            if why is None:
                continue
            try:
                outcome = self.recycler.recycle(name, actor="reconciler", why=why)
            except PoolBusy:
                continue
            except ControlPlaneError as exc:
                return [f"could not recycle {name} ({why}): {exc.message}"]
            return [f"recycled {name} ({why}) in {outcome.seconds:.1f} s"]
        return []

    def _rollout_holds_a_pool(self) -> bool:
        with self.repair.db.transaction() as session:
            return any(c.holder.kind is HolderKind.ROLLOUT for c in claim_store.list_claims(session))

    def _sync_standby(self, session: Session, pool: str) -> list[str]:
        """Record the live pool's release for ``pool`` if it has no traffic (a deploy changed it, say).

        Runs in the transaction that claims ``pool`` for the repair, so no
        rollout (which decides its pools' releases itself) holds it.
        """
        weights = rollout_store.pool_weights(session)
        if not weights or max(weights.values()) == 0:
            return []
        live = rollout_store.live_pool_of(weights)
        if weights.get(pool, 0) > 0 or pool == live:
            return []
        release = rollout_store.pool_release(session, live)
        current = rollout_store.pool_release(session, pool)
        if current == release:
            return []
        rollout_store.set_pool_release(session, pool, release)
        store.append_event(
            session,
            actor="reconciler",
            action="standby.sync",
            target=pool,
            outcome="recorded",
            details={"from": current, "to": release, "live_pool": live},
        )
        return [f"standby {pool} follows {live}: {current} -> {release}"]

    def _converge_weights(self) -> list[str]:
        before = self.weights.apply_safe(why="reconcile safety", actor="reconciler")
        return [] if before is None else [f"proxy weights {before} -> {self.router.weights()}"]

    def wake(self) -> None:
        """Run the next pass now instead of at the end of the interval (after a deploy, say)."""
        self._wake.set()

    def run_forever(self, stop: threading.Event, *, interval: float = 5.0) -> None:
        """Pass after pass until ``stop`` is set; a failing pass is logged and retried.

        A retryable failure (the database or a Triton out of reach) is logged
        when it begins and when it ends, not at every pass in between.
        """
        failing = False
        while not stop.is_set():
            try:
                for change in self.run_once():
                    log.info("reconcile: %s", change)
                if failing:
                    log.info("reconcile passes succeed again")
                failing = False
            except ControlPlaneError as exc:
                level = logging.DEBUG if failing and exc.retryable else logging.WARNING
                log.log(level, "reconcile pass failed: %s", exc)
                failing = True
            except Exception:
                # The loop must outlive any bug in one pass: log it whole and try again next time.
                log.exception("reconcile pass failed unexpectedly")
                failing = True
            self._wake.wait(interval)
            self._wake.clear()
