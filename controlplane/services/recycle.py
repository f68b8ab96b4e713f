"""Recycling a pool: restart its Triton(s) to give back memory that unloads do not return.

Triton keeps memory after unloads and degrades slowly over many reloads
(triton-inference-server issues #3320 and #5944); restarting the server is
the remedy. A recycle is safe only where no client is served, so:

- it runs under the pool's claim (a ``recycle`` holder): no rollout, deploy
  or repair changes the pool meanwhile, in this process or another;
- the pool must have weight 0, checked in the transaction that takes the
  claim (409 ``pool_serving`` otherwise);
- after the restart every replica must be ready with every model of the
  pool's release loaded (Triton starts with ``--load-model=*``, so the
  repository is loaded before its ports open), anything missing is repaired,
  and each model is smoke-tested; only then is the claim released, so a
  rollout can give the pool traffic again.

How a pool's servers are restarted and measured is the runtime's business
(``PoolProcesses``): supervised processes here, containers through the
Docker API for compose.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from controlplane.claims import PoolClaims, patiently
from controlplane.domain.claims import Holder, HolderKind
from controlplane.errors import Conflict, ControlPlaneError, NotFound
from controlplane.pools import Pool
from controlplane.registry import claim_store, rollout_store, store
from controlplane.registry.db import Database
from controlplane.services import audit
from controlplane.services.repair import PoolRepair

log = logging.getLogger(__name__)


class PoolProcesses(Protocol):
    """The runtime's side of a recycle."""

    def restart(self, pool: str) -> None:
        """Restart every Triton of ``pool``; return once each has been started again."""

    def memory_bytes(self, pool: str) -> int | None:
        """Memory the pool's Tritons (with their backend processes) hold now, if the runtime can tell."""


@dataclass(frozen=True)
class PoolStatus:
    """A pool as an operator sees it before deciding to recycle it."""

    name: str
    weight: int
    release: Mapping[str, int]
    ready: bool
    loads_since_recycle: int
    memory_bytes: int | None
    held_by: str | None


@dataclass(frozen=True)
class RecycleOutcome:
    """What a recycle did, for the API and the audit log."""

    pool: str
    seconds: float
    memory_before: int | None
    memory_after: int | None
    models: tuple[str, ...]


class PoolRecycler:
    """Restarts an idle pool's Triton(s) and proves them ready before anyone may use the pool."""

    def __init__(
        self,
        *,
        db: Database,
        pools: Mapping[str, Pool],
        claims: PoolClaims,
        repair: PoolRepair,
        processes: PoolProcesses,
        ready_timeout: float = 120.0,
    ) -> None:
        self.db = db
        self.pools = dict(pools)
        self.claims = claims
        self.repair = repair
        self.processes = processes
        self.ready_timeout = ready_timeout

    def status(self) -> list[PoolStatus]:
        """Every pool: recorded weight and release, readiness, loads since its start, memory, holder."""
        with self.db.transaction() as session:
            weights = rollout_store.pool_weights(session)
            releases = {name: rollout_store.pool_release(session, name) for name in self.pools}
            holders = {c.pool: str(c.holder) for c in claim_store.list_claims(session)}
        result = []
        for name, pool in self.pools.items():
            try:
                ready = pool.triton.is_ready()
            except ControlPlaneError:
                ready = False
            result.append(
                PoolStatus(
                    name=name,
                    weight=weights.get(name, 0),
                    release=releases[name],
                    ready=ready,
                    loads_since_recycle=pool.loads_since_recycle,
                    memory_bytes=self._memory(name),
                    held_by=holders.get(name),
                )
            )
        return result

    def _memory(self, pool: str) -> int | None:
        try:
            return self.processes.memory_bytes(pool)
        except ControlPlaneError:
            return None

    def recycle(self, pool_name: str, *, actor: str, why: str = "requested") -> RecycleOutcome:
        """Restart ``pool_name``'s Tritons, then repair and smoke-test its release; the pool must be idle."""
        pool = self.pools.get(pool_name)
        if pool is None:
            raise NotFound(f"pool {pool_name!r} does not exist", code="pool_not_found")
        holder = Holder(HolderKind.RECYCLE, uuid.uuid4().hex)

        def claim() -> dict[str, int]:
            with self.db.transaction() as session:
                # The claim first: while a rollout runs, its name is the more useful answer.
                self.claims.take(session, [pool_name], holder)
                weight = rollout_store.pool_weights(session).get(pool_name, 0)
                if weight > 0:
                    raise Conflict(
                        f"pool {pool_name!r} serves clients (weight {weight}); recycle only a pool without "
                        "traffic: roll out to the other pool first",
                        code="pool_serving",
                        details={"pool": pool_name, "weight": weight},
                    )
                return rollout_store.pool_release(session, pool_name)

        try:
            release = patiently(claim, timeout=self.ready_timeout)
        except BaseException:
            self.claims.done(holder)
            raise
        try:
            outcome = self._recycle_claimed(pool, release)
        finally:
            self.claims.end(holder)
        audit.record(
            self.db,
            actor=actor,
            action="pool.recycle",
            target=pool_name,
            outcome="ready",
            details={
                "why": why,
                "seconds": round(outcome.seconds, 3),
                "memory_before": outcome.memory_before,
                "memory_after": outcome.memory_after,
                "models": list(outcome.models),
            },
        )
        log.info(
            "pool %s recycled in %.1f s (%s); memory %s -> %s bytes",
            pool_name,
            outcome.seconds,
            why,
            outcome.memory_before,
            outcome.memory_after,
        )
        pool.loads_since_recycle = 0
        return outcome

    def _recycle_claimed(self, pool: Pool, release: Mapping[str, int]) -> RecycleOutcome:
        started = time.monotonic()
        before = self.processes.memory_bytes(pool.name)
        self.processes.restart(pool.name)
        pool.triton.wait_server_ready(self.ready_timeout)
        # Whatever the restart did not bring back (a folder Triton refused, say) is reinstalled now.
        for change in self.repair.repair_claimed(pool):
            log.info("recycle of %s: %s", pool.name, change)
        with self.db.transaction() as session:
            versions = [store.get_version(session, model, number) for model, number in release.items()]
        for version in versions:
            pool.triton.smoke_test(version.model, version.number, version.signature)
        return RecycleOutcome(
            pool=pool.name,
            seconds=time.monotonic() - started,
            memory_before=before,
            memory_after=self.processes.memory_bytes(pool.name),
            models=tuple(sorted(release)),
        )
