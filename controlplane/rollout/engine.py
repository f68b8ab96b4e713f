"""Runs rollouts: stage the target pool, shift weights step by step with analysis, bake, finish.

Who runs what: one worker thread per active rollout, started by
``RolloutEngine.start`` (new rollouts) or ``RolloutEngine.resume`` (after a
restart). Every state change goes through ``rollout_store.transition`` and is
committed before the action it announces (weights, unloads), so after a crash
the database says what may have happened and ``resume`` can finish the job.

Invariants kept here:
- the target pool gets weight only after every model of its release is READY
  there, smoke-tested, and the proxy's health check passes;
- the source pool keeps its models loaded until the rollout has succeeded;
- models are unloaded only from a pool at weight 0 whose in-flight requests
  have drained.

Errors: a retryable error (database, Triton or proxy out of reach, see
``ControlPlaneError.retryable``) never fails a rollout nor marks its version
failed. The worker logs it once per outage, backs off and drives the rollout
again from its recorded state, for as long as it takes; every attempt is
bounded by the timeouts of the calls it makes. Permanent errors (a refused
load, a failed smoke test or gate, a policy) fail or roll back as their rules
say; anything else rolls back to the source pool. A worker leaves its
rollout active only when the engine stops.

Operators steer a running rollout by setting ``requested_action`` (abort,
promote); the worker reads it between steps and while waiting.

Approval: a rollout of a model whose policy requires approval is recorded in
``pending_approval`` by ``start``, holding no claim and with no worker, so a
request waiting for a day blocks no other deploy; ``approve`` chooses its
pools then, takes their claims and starts its worker; ``reject`` and expiry
end it. A rollback never waits for approval.

Exclusion: a rollout holds the claims of its pools (``pool_claims``) from the
transaction that creates it to the one that ends it, so no deploy, repair or
other rollout touches those pools meanwhile, in this process or another. A
worker runs only where its claims' lease is renewed (``PoolClaims``):
``resume`` adopts the claims of an active rollout whose driver is gone, and
leaves alone one that another control plane still drives. The old pool takes
the new release (or is emptied) before the rollout succeeds, so that work is
covered by the rollout's claims too.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from controlplane.artifacts.blobs import BlobStore
from controlplane.claims import PoolClaims, patiently
from controlplane.domain.analysis import (
    PoolSample,
    StepMove,
    Verdict,
    evaluate,
    measure,
    next_look,
    next_move,
)
from controlplane.domain.approvals import approval_deadline, check_approvable, check_rejectable, is_overdue
from controlplane.domain.models import ModelVersion
from controlplane.domain.rollouts import (
    RequestedAction,
    Rollout,
    RolloutSpec,
    RolloutState,
    Strategy,
    one_step_spec,
    split_weights,
)
from controlplane.domain.versions import VersionEvent
from controlplane.errors import (
    ArtifactCorrupted,
    CandidateRejected,
    Conflict,
    ControlPlaneError,
    DeployFailed,
    InvalidInput,
    ModelLoadFailed,
    NotFound,
    ProxyError,
    SmokeTestFailed,
)
from controlplane.logs import logs_as_rollout
from controlplane.pools import Pool, install, redact_reason, uninstall
from controlplane.registry import alias_store, rollout_store, signature_store, store
from controlplane.registry.db import Database
from controlplane.rollout.weights import ProxyWeights
from controlplane.traffic.router import TrafficRouter

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

Sampler = Callable[[str, Collection[str]], PoolSample]


class Admission(Protocol):
    """Raises (InvalidInput, Conflict) when a rollout may not start (interface, metrics); see ``start``."""

    def __call__(self, spec: RolloutSpec, *, actor: str) -> None: ...


CandidateChecks = Callable[[Rollout, Pool], Mapping[str, object]]
"""Proves a staged candidate before traffic (golden set, warm-up): its report, or CandidateRejected."""

# Verdicts on the version or its pool. An unreachable Triton is not one: it is waited out (see _run_to_end).
# Who applies a rollout's weights, in the audit log.
_ACTOR = "rollout-engine"

_STAGING_ERRORS = (ModelLoadFailed, SmokeTestFailed, ArtifactCorrupted, DeployFailed, CandidateRejected)


class _RolledBack(Exception):
    """Raised inside a worker to leave the forward path once a rollback has been done."""


@dataclass
class EngineSettings:
    load_timeout: float = 120.0
    drain_timeout: float = 30.0
    pool_up_timeout: float = 30.0
    poll_interval: float = 0.2
    standby_warm: bool = True
    """Pools without traffic keep the production release loaded (see ``RolloutEngine._keep_standby``)."""
    retry_backoff: float = 0.25
    """First wait after a retryable error; it doubles per failed attempt up to ``retry_backoff_max``."""
    retry_backoff_max: float = 2.0


class RolloutEngine:
    """Starts, steers and resumes rollouts between the pools of one pool pair."""

    def __init__(
        self,
        *,
        db: Database,
        pools: Mapping[str, Pool],
        blobs: BlobStore,
        router: TrafficRouter,
        sampler: Sampler,
        settings: EngineSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        policy_check: Callable[[str, int], None] | None = None,
        sleep: Callable[[float], None] | None = None,
        claims: PoolClaims | None = None,
        admission: Admission | None = None,
        candidate_checks: CandidateChecks | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.db = db
        self.pools = dict(pools)
        self.blobs = blobs
        self.router = router
        self.weights = ProxyWeights(db=db, router=router, pools=self.pools)
        self.sampler = sampler
        self.settings = settings or EngineSettings()
        self.clock = clock
        self.policy_check = policy_check
        self.admission = admission
        self.candidate_checks = candidate_checks
        self.now = now or (lambda: datetime.now(UTC))
        """Wall-clock time, for approval deadlines (``clock`` is monotonic, for waits)."""
        # Tests pass a fake clock's sleep so waits advance it; by default waits end early on stop().
        self._sleep = sleep
        self._owns_claims = claims is None
        self.claims = claims or PoolClaims(db)
        self._workers: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # Rollout id -> clock time its current outage began; logged when it begins and when it ends.
        self._outages: dict[int, float] = {}
        self.after_end: Callable[[], None] | None = None
        """Called when a worker has ended its rollout (the composition root wakes the reconciler)."""

    # -- entry points -----------------------------------------------------------------------

    def start(self, spec: RolloutSpec, *, actor: str, pool: str | None = None) -> Rollout:
        """Record a rollout holding its pools and start its worker; PoolBusy if another holds one.

        ``pool`` names the pool an inplace rollout changes (default: the live
        pool, as for every other strategy's source); a deploy to a standby names it.
        A model that requires approval gets its rollout recorded in
        ``pending_approval`` instead, holding nothing and with no worker until
        ``approve``.
        """
        self._admit(spec, actor=actor, pool=pool)
        timeout = self._approval_timeout(spec.model)
        if timeout is not None:
            return self._request_approval(spec, actor=actor, pool=pool, timeout=timeout)
        return self._start_now(spec, actor=actor, pool=pool)

    def _admit(self, spec: RolloutSpec, *, actor: str, pool: str | None) -> None:
        """Refuse a rollout that may not start (pool, signature policy, interface, metrics)."""
        if pool is not None and spec.strategy is not Strategy.INPLACE:
            raise InvalidInput(
                f"a {spec.strategy} rollout moves traffic away from the live pool; only an inplace "
                "rollout takes a pool",
                code="invalid_rollout",
            )
        if pool is not None and pool not in self.pools:
            raise NotFound(f"pool {pool!r} does not exist", code="pool_not_found")
        if self.policy_check is not None:
            # Signature policy first: a version that may not serve never gets a rollout row.
            self.policy_check(spec.model, spec.version)
        if self.admission is not None:
            # Interface and metrics against production: a refused rollout leaves no row either.
            self.admission(spec, actor=actor)

    def _choose_pools(
        self, session: Session, spec: RolloutSpec, pool: str | None
    ) -> tuple[str, str, int | None]:
        """``(source, target, from_version)`` of a rollout of ``spec`` starting now."""
        store.get_version(session, spec.model, spec.version)
        source = pool or rollout_store.live_pool(session)
        if spec.strategy is Strategy.INPLACE:
            target = source
        else:
            others = sorted(p for p in self.pools if p != source)
            if not others:
                raise Conflict(
                    f"strategy {spec.strategy} needs two pools; this stack has only {source!r}",
                    code="needs_two_pools",
                )
            target = others[0]
        return source, target, rollout_store.pool_release(session, source).get(spec.model)

    def _start_now(self, spec: RolloutSpec, *, actor: str, pool: str | None = None) -> Rollout:
        def create() -> Rollout:
            with self.db.transaction() as session:
                source, target, from_version = self._choose_pools(session, spec, pool)
                rollout = rollout_store.create_rollout(
                    session,
                    spec=spec,
                    source_pool=source,
                    target_pool=target,
                    from_version=from_version,
                    actor=actor,
                    lease=self.claims.lease,
                )
            return rollout

        # A reconciler repair in the way is waited out; any other holder is refused at once.
        rollout = patiently(create, timeout=self.settings.load_timeout)
        self.claims.drive(rollout_store.rollout_holder(rollout.id))
        self._spawn(rollout.id)
        return rollout

    # -- approval ---------------------------------------------------------------------------

    def _approval_timeout(self, model: str) -> int | None:
        """Seconds a rollout of ``model`` may wait for approval; None when its policy requires none."""
        with self.db.transaction() as session:
            policy = signature_store.get_policy(session, model)
        if policy is None or not policy.require_approval:
            return None
        return policy.approval_timeout_seconds

    def _request_approval(self, spec: RolloutSpec, *, actor: str, pool: str | None, timeout: int) -> Rollout:
        with self.db.transaction() as session:
            # The pools are chosen again at approval; these show what it would take now.
            source, target, from_version = self._choose_pools(session, spec, pool)
            rollout = rollout_store.create_rollout(
                session,
                spec=spec,
                source_pool=source,
                target_pool=target,
                from_version=from_version,
                actor=actor,
                approval_expires_at=approval_deadline(self.now(), timeout),
                requested_pool=pool,
            )
        log.info(
            "rollout %s of %s waits for approval until %s",
            rollout.id,
            spec.model,
            rollout.approval_expires_at,
        )
        return rollout

    def _decidable(self, rollout_id: int) -> Rollout:
        """The rollout as it is now; one past its approval deadline is expired first."""
        with self.db.transaction() as session:
            rollout = rollout_store.get_rollout(session, rollout_id)
            if is_overdue(rollout, self.now()):
                rollout = rollout_store.expire_rollout(session, rollout_id, now=self.now()) or rollout
        return rollout

    def approve(self, rollout_id: int, *, actor: str) -> Rollout:
        """Approve a rollout waiting for approval: it takes its pools' claims and starts.

        Forbidden ``self_approval`` for its requester; Conflict when it does
        not wait (``approval_expired`` once past its deadline); PoolBusy when
        another operation holds a pool, and then it still waits. The version
        is checked again (signature policy, admission) against what serves now.
        """
        rollout = self._decidable(rollout_id)
        check_approvable(rollout, actor=actor)
        pool = _requested_pool(rollout)
        self._admit(rollout.spec, actor=actor, pool=pool)

        def take() -> Rollout:
            with self.db.transaction() as session:
                source, target, from_version = self._choose_pools(session, rollout.spec, pool)
                return rollout_store.approve_rollout(
                    session,
                    rollout_id,
                    actor=actor,
                    source_pool=source,
                    target_pool=target,
                    from_version=from_version,
                    lease=self.claims.lease,
                    now=self.now(),
                )

        approved = patiently(take, timeout=self.settings.load_timeout)
        self.claims.drive(rollout_store.rollout_holder(rollout_id))
        self._spawn(rollout_id)
        return approved

    def reject(self, rollout_id: int, *, actor: str, reason: str) -> Rollout:
        """End a rollout waiting for approval as rejected; Conflict when it does not wait."""
        check_rejectable(self._decidable(rollout_id))
        with self.db.transaction() as session:
            return rollout_store.reject_rollout(session, rollout_id, actor=actor, reason=reason)

    def expire_overdue(self) -> builtins.list[int]:
        """End every rollout still waiting for approval past its deadline; return their ids."""
        with self.db.transaction() as session:
            overdue = rollout_store.overdue_approvals(session, now=self.now())
        expired = []
        for rollout_id in overdue:
            with self.db.transaction() as session:
                if rollout_store.expire_rollout(session, rollout_id, now=self.now()) is not None:
                    expired.append(rollout_id)
        return expired

    def request(self, rollout_id: int, action: RequestedAction, *, actor: str) -> Rollout:
        """Ask a running rollout to abort or promote; its worker acts within a poll interval.

        A rollout still waiting for approval has nothing to promote (Conflict
        ``pending_approval``); aborting it withdraws the request (rejected).
        """
        if self.get(rollout_id).state is RolloutState.PENDING_APPROVAL:
            if action is RequestedAction.ABORT:
                return self.reject(rollout_id, actor=actor, reason="aborted before approval")
            raise Conflict(
                f"rollout {rollout_id} waits for approval: there is nothing to {action} yet",
                code="pending_approval",
                details={"rollout": rollout_id},
            )
        with self.db.transaction() as session:
            rollout = rollout_store.request_action(session, rollout_id, action, actor=actor)
        # Whichever control plane drives the rollout reads the request; here only if none does.
        self._resume_one(rollout_id)
        return rollout

    def get(self, rollout_id: int) -> Rollout:
        with self.db.transaction() as session:
            return rollout_store.get_rollout(session, rollout_id)

    def list(self, *, active_only: bool = False, limit: int = 50) -> list[Rollout]:
        with self.db.transaction() as session:
            return rollout_store.list_rollouts(session, active_only=active_only, limit=limit)

    def rollback_model(self, model: str, *, actor: str) -> Rollout:
        """Return ``model`` to its previous production version.

        A rollout of the model still running (or baking, with the old pool
        warm) is aborted: a weight flip. Otherwise a blue-green rollout to the
        version that served before the last successful one starts. Neither
        waits for approval: a rollback restores what served; requests of the
        model waiting for approval stay as they are.
        """
        with self.db.transaction() as session:
            store.get_model(session, model)
            running = [
                r
                for r in rollout_store.list_rollouts(session, active_only=True)
                if r.spec.model == model and r.running
            ]
            previous = rollout_store.previous_production_version(session, model)
        if running:
            return self.request(running[0].id, RequestedAction.ABORT, actor=actor)
        if previous is None:
            raise Conflict(f"model {model!r} has no previous production version", code="no_previous_version")
        spec = one_step_spec(model, previous, Strategy.BLUEGREEN)
        self._admit(spec, actor=actor, pool=None)
        return self._start_now(spec, actor=actor)

    def resume(self) -> builtins.list[int]:  # builtins: the method `list` above shadows the type here
        """Start workers for active rollouts that nobody drives (after a restart); return their ids.

        A rollout another control plane drives (its lease is renewed) is left to it;
        one waiting for approval has nothing to drive.
        """
        with self.db.transaction() as session:
            active = rollout_store.list_rollouts(session, active_only=True)
        return [rollout.id for rollout in active if rollout.running and self._resume_one(rollout.id)]

    def _resume_one(self, rollout_id: int) -> bool:
        with self._lock:
            existing = self._workers.get(rollout_id)
            if existing is not None and existing.is_alive():
                return False
        if not self.claims.adopt(rollout_store.rollout_holder(rollout_id)):
            return False
        return self._spawn(rollout_id)

    def busy(self) -> bool:
        """Whether any rollout worker is running."""
        return any(w.is_alive() for w in self._workers.values())

    def stop(self, timeout: float = 10.0) -> None:
        """Ask workers to stop at their next wait (state stays in the database for resume)."""
        self._stopping.set()
        for worker in list(self._workers.values()):
            worker.join(timeout)
        if self._owns_claims:
            self.claims.close()

    def wait(self, rollout_id: int, timeout: float) -> Rollout:
        """Block until the rollout has ended (tests, CLI)."""
        worker = self._workers.get(rollout_id)
        if worker is not None:
            worker.join(timeout)
        with self.db.transaction() as session:
            return rollout_store.get_rollout(session, rollout_id)

    def _spawn(self, rollout_id: int) -> bool:
        with self._lock:
            existing = self._workers.get(rollout_id)
            if existing is not None and existing.is_alive():
                return False
            worker = threading.Thread(
                target=self._run, args=(rollout_id,), name=f"rollout-{rollout_id}", daemon=True
            )
            self._workers[rollout_id] = worker
            worker.start()
            return True

    # -- the worker -------------------------------------------------------------------------

    def _get(self, rollout_id: int) -> Rollout:
        with self.db.transaction() as session:
            return rollout_store.get_rollout(session, rollout_id)

    def _move(
        self,
        rollout: Rollout,
        to: RolloutState,
        *,
        reason: str,
        step_index: int | None = None,
        weights: Mapping[str, int] | None = None,
        measurements: Mapping[str, object] | None = None,
    ) -> Rollout:
        """Commit a transition (and the desired weights) before acting on it."""
        with self.db.transaction() as session:
            decision, updated = rollout_store.transition(
                session,
                rollout.id,
                to,
                reason=reason,
                step_index=step_index,
                weights=weights,
                measurements=measurements,
            )
            if not decision.accepted:
                raise Conflict(f"rollout {rollout.id}: {decision.reason}", code="invalid_transition")
            if weights:
                rollout_store.set_pool_weights(session, weights)
        self._outage_over(rollout.id)
        return updated

    @logs_as_rollout
    def _run(self, rollout_id: int) -> None:
        try:
            self._run_to_end(rollout_id)
        finally:
            # Ended: its claims are gone. Stopped or stuck: another worker may adopt them at once.
            self.claims.let_go(rollout_store.rollout_holder(rollout_id))
        if self.after_end is not None and not self._stopping.is_set():
            # A pool's release may have changed: the standby follows at the next pass, which is now.
            self.after_end()

    def _run_to_end(self, rollout_id: int) -> None:
        """Drive the rollout until it has ended or the engine stops, whatever is raised meanwhile."""
        failures = 0
        broken = False
        while True:
            try:
                rollout = self._get(rollout_id)
                if not rollout.running:
                    return
                if broken and rollout.state is not RolloutState.ROLLING_BACK:
                    self._rollback(rollout, "internal error; see the control plane log")
                self._drive(rollout)
                return
            except _RolledBack:
                return
            except Exception as exc:
                if isinstance(exc, ControlPlaneError) and exc.retryable:
                    self._outage_begins(rollout_id, exc)
                    failures += 1
                elif broken:
                    # The rollback itself hit a bug: the reconciler's next pass adopts the rollout again.
                    log.exception("rollout %s: rollback after an internal error failed", rollout_id)
                    return
                else:
                    # Not a verdict the rules know: leave traffic where it is safe, on the source pool.
                    log.exception("rollout %s failed unexpectedly; rolling back", rollout_id)
                    broken = True
                    failures = 0
            backoff = self.settings.retry_backoff * 2 ** max(failures - 1, 0)
            if self._pause(min(backoff, self.settings.retry_backoff_max)):
                return

    def _outage_begins(self, rollout_id: int, exc: ControlPlaneError) -> None:
        if rollout_id not in self._outages:
            self._outages[rollout_id] = self.clock()
            log.warning("rollout %s waits: %s; retrying until it passes", rollout_id, exc.message)
        else:
            log.debug("rollout %s still waits: %s", rollout_id, exc.message)

    def _outage_over(self, rollout_id: int) -> None:
        began = self._outages.pop(rollout_id, None)
        if began is not None:
            log.info("rollout %s goes on after %.1f s of waiting", rollout_id, self.clock() - began)

    def _drive(self, rollout: Rollout) -> None:
        """Continue ``rollout`` from whatever state it is in."""
        if rollout.state is RolloutState.PENDING:
            rollout = self._move(rollout, RolloutState.STAGING, reason="staging the target pool")
            rollout = self._stage(rollout)
        elif rollout.state is RolloutState.STAGING:
            # A crash interrupted staging: nothing got weight; start the staging over.
            rollout = self._stage(rollout)
        elif rollout.state is RolloutState.ROLLING_BACK:
            self._finish_rollback(rollout)
            return
        if rollout.state in (RolloutState.STAGING, RolloutState.SHIFTING):
            rollout = self._shift(rollout)
        if rollout.state is RolloutState.BAKING:
            self._bake_and_finish(rollout)

    def _release_for_target(self, rollout: Rollout) -> dict[str, int]:
        with self.db.transaction() as session:
            release = rollout_store.pool_release(session, rollout.source_pool)
        release[rollout.spec.model] = rollout.spec.version
        return release

    def _stage(self, rollout: Rollout) -> Rollout:
        target = self.pools[rollout.target_pool]
        release = self._release_for_target(rollout)
        if rollout.spec.strategy is Strategy.INPLACE:
            return self._stage_inplace(rollout, target)
        with self.db.transaction() as session:
            rollout_store.set_pool_release(session, target.name, release)
            versions = {m: store.get_version(session, m, v) for m, v in release.items()}
        try:
            self._converge(target, versions)
            self._wait_pool_up(target.name)
            self._check_candidate(rollout, target)
        except _STAGING_ERRORS as exc:
            self._fail_staging(rollout, exc)
            raise _RolledBack from exc
        return rollout

    def _check_candidate(self, rollout: Rollout, target: Pool) -> None:
        """Run the candidate checks on the staged target (weight 0) and record their report."""
        if self.candidate_checks is None:
            return
        report = self.candidate_checks(rollout, target)
        if report:
            with self.db.transaction() as session:
                rollout_store.record_measurement(
                    session,
                    rollout.id,
                    reason="candidate checks passed on " + target.name,
                    weights=split_weights(0, source=rollout.source_pool, target=rollout.target_pool),
                    measurements=dict(report),
                )

    def _converge(self, pool: Pool, versions: Mapping[str, ModelVersion]) -> None:
        """Make a pool without traffic serve exactly ``versions``: unload the rest, install what differs."""
        for name in pool.repository.live_models():
            if name not in versions:
                uninstall(pool, name)
        for name, version in versions.items():
            if pool.repository.matches(version, self.blobs) and pool.triton.is_model_ready(
                name, version.number
            ):
                pool.triton.smoke_test(name, version.number, version.signature)
                continue
            install(pool, version, self.blobs, previous=None, load_timeout=self.settings.load_timeout)

    def _keep_standby(self, rollout: Rollout, standby: str, release_of: str) -> None:
        """Leave ``standby`` (at weight 0) serving what ``release_of`` serves, or empty it.

        A warm standby is what the proxy falls back to when the pool with the
        traffic dies, so a crashed Triton costs no request; it costs the
        memory of a second copy of every production model.
        """
        pool = self.pools[standby]
        with self.db.transaction() as session:
            release = rollout_store.pool_release(session, release_of) if self.settings.standby_warm else {}
            rollout_store.set_pool_release(session, standby, release)
            versions = {m: store.get_version(session, m, v) for m, v in release.items()}
        try:
            self._converge(pool, versions)
        except ControlPlaneError as exc:
            if exc.retryable:
                # Waited out like any outage, so the rollout never ends with its pools disagreeing.
                raise
            # The reconciler retries; the rollout's outcome does not depend on the standby.
            log.warning("rollout %s: keeping %s as standby: %s", rollout.id, standby, exc.message)

    def _stage_inplace(self, rollout: Rollout, pool: Pool) -> Rollout:
        with self.db.transaction() as session:
            version = store.get_version(session, rollout.spec.model, rollout.spec.version)
        try:
            install(
                pool,
                version,
                self.blobs,
                previous=rollout.from_version,
                load_timeout=self.settings.load_timeout,
            )
        except _STAGING_ERRORS as exc:
            self._fail_staging(rollout, exc)
            raise _RolledBack from exc
        with self.db.transaction() as session:
            rollout_store.set_pool_release(session, pool.name, self._release_for_target(rollout))
        return rollout

    def _fail_staging(self, rollout: Rollout, exc: ControlPlaneError) -> None:
        log.warning("rollout %s: staging failed: %s", rollout.id, exc.message)
        if rollout.spec.strategy is not Strategy.INPLACE:
            self._clean_target(rollout)
        # Stored and shown by the API: Triton's reason without server paths or the stub's stack.
        why = redact_reason(self.pools.values(), exc.message)
        self._mark_failed(rollout, why)
        report = {"cause": exc.code, "error": why}
        if isinstance(exc, CandidateRejected) and isinstance(exc.details, Mapping):
            report.update(exc.details)
        self._move(rollout, RolloutState.FAILED, reason=f"staging failed: {why}", measurements=report)

    def _mark_failed(self, rollout: Rollout, why: str) -> None:
        """Record that the rollout's version failed, and why (it stays deployable again later)."""
        with self.db.transaction() as session:
            try:
                store.change_version_state(
                    session,
                    model=rollout.spec.model,
                    number=rollout.spec.version,
                    event=VersionEvent.FAILED,
                    error=why,
                )
            except Conflict as refused:
                # It serves on the source pool: the failure is in the rollout's events, its state stays.
                log.info("rollout %s: %s", rollout.id, refused.message)

    def _clean_target(self, rollout: Rollout) -> None:
        """Return the target pool (weight 0) to standby: the source's release, or nothing."""
        self._keep_standby(rollout, rollout.target_pool, release_of=rollout.source_pool)

    def _wait_pool_up(self, pool: str) -> None:
        deadline = self.clock() + self.settings.pool_up_timeout
        while not self.router.pool_up(pool):
            if self.clock() > deadline:
                # Triton answers the control plane but not the proxy's checks: a verdict, not an outage.
                raise DeployFailed(
                    f"pool {pool} not passing the proxy's health check after "
                    f"{self.settings.pool_up_timeout:.0f} s"
                )
            if self._pause(self.settings.poll_interval):
                raise _RolledBack("engine stopping")

    def _action(self, rollout_id: int) -> RequestedAction | None:
        # Polled every few hundred milliseconds while a step waits: one column, not the whole rollout.
        with self.db.transaction() as session:
            return rollout_store.requested_action(session, rollout_id)

    def _wait(self, rollout: Rollout, seconds: float) -> RequestedAction | None:
        """Sleep ``seconds`` unless an operator asks for something (or the engine stops)."""
        deadline = self.clock() + seconds
        while True:
            action = self._action(rollout.id)
            if action is not None:
                return action
            remaining = deadline - self.clock()
            if remaining <= 0:
                return None
            if self._pause(min(self.settings.poll_interval, remaining)):
                raise _RolledBack("engine stopping")

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` (with the injected sleep, if any); True once the engine is stopping."""
        if self._sleep is None:
            return self._stopping.wait(seconds)
        self._sleep(seconds)
        return self._stopping.is_set()

    def _shift(self, rollout: Rollout) -> Rollout:
        spec = rollout.spec
        if spec.strategy is Strategy.INPLACE:
            # One pool: the swap itself is the only step; weights do not change.
            if rollout.state is not RolloutState.SHIFTING:
                rollout = self._move(rollout, RolloutState.SHIFTING, reason="swapped in place", step_index=0)
            return self._move(rollout, RolloutState.BAKING, reason="new version serving in place")
        start = 0 if rollout.state is RolloutState.STAGING else (rollout.step_index or 0)
        models = sorted(self._release_for_target(rollout))
        index = start
        while index < len(spec.steps):
            action = self._action(rollout.id)
            if action is RequestedAction.ABORT:
                self._rollback(rollout, "aborted by an operator")
            if action is RequestedAction.PROMOTE:
                index = len(spec.steps) - 1
            percent = spec.steps[index]
            weights = split_weights(percent, source=rollout.source_pool, target=rollout.target_pool)
            if rollout.state is not RolloutState.SHIFTING or rollout.step_index != index:
                rollout = self._move(
                    rollout,
                    RolloutState.SHIFTING,
                    reason=f"step {index + 1}/{len(spec.steps)}: {percent}% to {rollout.target_pool}",
                    step_index=index,
                    weights=weights,
                )
            self.weights.apply_recorded(
                why=f"rollout {rollout.id} step {index + 1}/{len(spec.steps)}", actor=_ACTOR
            )
            if action is not RequestedAction.PROMOTE and spec.step_seconds > 0:
                interrupted = self._analyse_step(rollout, index, weights, models)
                if interrupted is RequestedAction.ABORT:
                    self._rollback(rollout, "aborted by an operator")
                if interrupted is RequestedAction.PROMOTE:
                    index = len(spec.steps) - 1
                    continue
            index += 1
        return self._move(
            rollout,
            RolloutState.BAKING,
            reason=f"{rollout.target_pool} has all traffic; {rollout.source_pool} drains and stays warm",
            weights=split_weights(100, source=rollout.source_pool, target=rollout.target_pool),
        )

    def _sample_step(self, rollout: Rollout, models: Collection[str]) -> tuple[PoolSample, PoolSample | None]:
        """The candidate's sample and, when a relative gate needs it, the baseline's, taken together."""
        candidate = self.sampler(rollout.target_pool, models)
        gates = rollout.spec.gates
        if gates.max_error_rate_increase is None and gates.max_p99_ratio is None:
            # Not sampled when nothing compares with it: a baseline out of reach would stall the step.
            return candidate, None
        return candidate, self.sampler(rollout.source_pool, models)

    def _analyse_step(
        self, rollout: Rollout, index: int, weights: Mapping[str, int], models: Collection[str]
    ) -> RequestedAction | None:
        """Judge one step's window until it passes; roll back on a breach or, as told, without evidence.

        The window starts when the step's weights apply and grows while the
        step holds for ``min_requests``, so evidence accumulates. Returns the
        operator's action that interrupted it, if any (acted on by the caller).
        """
        spec = rollout.spec
        gates = spec.gates
        step = f"step {index + 1}/{len(spec.steps)}"
        candidate_before, baseline_before = self._sample_step(rollout, models)
        window_start = self.clock()
        look = spec.step_seconds
        while True:
            interrupted = self._wait(rollout, look)
            candidate_after, baseline_after = self._sample_step(rollout, models)
            baseline = (
                measure(baseline_before, baseline_after)
                if baseline_before is not None and baseline_after is not None
                else None
            )
            verdict = evaluate(measure(candidate_before, candidate_after), gates, baseline=baseline)
            held = max(0.0, self.clock() - window_start - spec.step_seconds)
            move = next_move(verdict, gates, held_seconds=held)
            if interrupted is not None and move in (StepMove.HOLD, StepMove.ABORT, StepMove.PROMOTE):
                # The operator decides now; what the window held so far is recorded with it.
                self._record_analysis(
                    rollout,
                    weights,
                    verdict,
                    move,
                    f"no evidence yet: {verdict.measurement.requests} of {gates.min_requests} requests"
                    f" at {step}; an operator asked to {interrupted}",
                    held=held,
                )
                return interrupted
            reason = self._analysis_reason(rollout, verdict, move, step, held)
            self._record_analysis(rollout, weights, verdict, move, reason, held=held)
            if move is StepMove.BREACH:
                self._rollback(rollout, "gate breached: " + "; ".join(verdict.breaches), failed=True)
            if move is StepMove.ABORT:
                self._rollback(rollout, reason)
            if move is not StepMove.HOLD:
                return interrupted
            look = next_look(gates, step_seconds=spec.step_seconds, held_seconds=held)

    def _analysis_reason(
        self, rollout: Rollout, verdict: Verdict, move: StepMove, step: str, held: float
    ) -> str:
        """The measurement event's reason: what the analysis saw and what the step does."""
        gates = rollout.spec.gates
        got = verdict.measurement.requests
        if move is StepMove.PASS:
            return "analysis passed"
        if move is StepMove.BREACH:
            return "; ".join(verdict.breaches)
        if move is StepMove.HOLD:
            if held >= gates.max_hold_seconds:
                return (
                    f"holding: {got} of {gates.min_requests} requests at {step}, {held:.0f} s held"
                    " (on_no_data=hold: until traffic comes or an operator promotes or aborts)"
                )
            return (
                f"holding: {got} of {gates.min_requests} requests at {step},"
                f" {held:.0f} s held of max {gates.max_hold_seconds:.0f} s"
            )
        shortfall = (
            f"no evidence: {got} requests < min {gates.min_requests} on {rollout.target_pool}"
            f" after holding {held:.0f} s at {step}"
        )
        if move is StepMove.PROMOTE:
            return f"{shortfall}; going on without it (on_no_data=promote)"
        return f"{shortfall}; set on_no_data=promote to go on without traffic"

    def _record_analysis(
        self,
        rollout: Rollout,
        weights: Mapping[str, int],
        verdict: Verdict,
        move: StepMove,
        reason: str,
        *,
        held: float,
    ) -> None:
        """One measurement event: the candidate's window (flat), the baseline's, the verdict, any hold."""
        gates = rollout.spec.gates
        holding = (
            None
            if verdict.evidence
            else {
                "held_seconds": round(held, 3),
                "max_hold_seconds": gates.max_hold_seconds,
                "min_requests": gates.min_requests,
                "on_no_data": gates.on_no_data.value,
            }
        )
        with self.db.transaction() as session:
            rollout_store.record_measurement(
                session,
                rollout.id,
                reason=reason,
                weights=weights,
                measurements={
                    **verdict.measurement.as_dict(),
                    "passed": verdict.passed,
                    "move": move.value,
                    "baseline": None if verdict.baseline is None else verdict.baseline.as_dict(),
                    "breaches": list(verdict.breaches),
                    "notes": list(verdict.notes),
                    "holding": holding,
                },
            )

    def _bake_and_finish(self, rollout: Rollout) -> None:
        weights = split_weights(100, source=rollout.source_pool, target=rollout.target_pool)
        two_pools = rollout.spec.strategy is not Strategy.INPLACE
        if two_pools:
            self.weights.apply_recorded(why=f"rollout {rollout.id} bake", actor=_ACTOR)
            try:
                self.router.wait_idle(rollout.source_pool, self.settings.drain_timeout)
            except ProxyError as exc:
                log.warning("rollout %s: %s did not drain: %s", rollout.id, rollout.source_pool, exc)
        # Resumed after the old pool had begun to take the new release: there is no way back any more.
        if not (two_pools and self._standby_begun(rollout)):
            action = self._wait(rollout, rollout.spec.bake_seconds)
            if action is RequestedAction.ABORT:
                self._rollback(rollout, "aborted by an operator during bake")
        if two_pools:
            # Still under the rollout's claims: nothing else may touch the old pool before this is done.
            self._keep_standby(rollout, rollout.source_pool, release_of=rollout.target_pool)
        with self.db.transaction() as session:
            decision, _ = rollout_store.transition(
                session,
                rollout.id,
                RolloutState.SUCCEEDED,
                reason="promoted",
                weights=weights if rollout.spec.strategy is not Strategy.INPLACE else None,
            )
            if not decision.accepted:
                raise Conflict(f"rollout {rollout.id}: {decision.reason}", code="invalid_transition")
            store.change_version_state(
                session, model=rollout.spec.model, number=rollout.spec.version, event=VersionEvent.SERVED
            )
            if rollout.from_version is not None and rollout.from_version != rollout.spec.version:
                store.change_version_state(
                    session,
                    model=rollout.spec.model,
                    number=rollout.from_version,
                    event=VersionEvent.REPLACED,
                )
            # Live traffic and the production alias change in one commit: its history is what was live when.
            alias_store.follow_rollout(session, rollout_id=rollout.id)
        self._outage_over(rollout.id)

    def _standby_begun(self, rollout: Rollout) -> bool:
        """Whether the source pool's recorded release is already the one it keeps as standby."""
        with self.db.transaction() as session:
            source = rollout_store.pool_release(session, rollout.source_pool)
            target = rollout_store.pool_release(session, rollout.target_pool)
        standby = target if self.settings.standby_warm else {}
        return source == standby and source.get(rollout.spec.model) != rollout.from_version

    def _rollback(self, rollout: Rollout, reason: str, *, failed: bool = False) -> None:
        """Move all traffic back to the source pool, then clean the target. Leaves via _RolledBack."""
        current = self._get(rollout.id)
        if current.state is not RolloutState.ROLLING_BACK:
            weights = (
                None
                if rollout.spec.strategy is Strategy.INPLACE
                else split_weights(0, source=rollout.source_pool, target=rollout.target_pool)
            )
            if failed:
                # First: a retry after an outage resumes from ROLLING_BACK and would not mark it again.
                self._mark_failed(rollout, reason)
            current = self._move(current, RolloutState.ROLLING_BACK, reason=reason, weights=weights)
        self._finish_rollback(current)
        raise _RolledBack(reason)

    def _finish_rollback(self, rollout: Rollout) -> None:
        if rollout.spec.strategy is Strategy.INPLACE:
            self._rollback_inplace(rollout)
        else:
            self.weights.apply_recorded(why=f"rollout {rollout.id} rollback", actor=_ACTOR)
            try:
                self.router.wait_idle(rollout.target_pool, self.settings.drain_timeout)
            except ProxyError as exc:
                log.warning("rollout %s: %s did not drain: %s", rollout.id, rollout.target_pool, exc)
            self._clean_target(rollout)
        self._move(rollout, RolloutState.ROLLED_BACK, reason=f"rolled back: {rollout.reason}")

    def _rollback_inplace(self, rollout: Rollout) -> None:
        if rollout.from_version is None:
            return
        pool = self.pools[rollout.source_pool]
        with self.db.transaction() as session:
            previous = store.get_version(session, rollout.spec.model, rollout.from_version)
            release = rollout_store.pool_release(session, pool.name)
            release[rollout.spec.model] = previous.number
            rollout_store.set_pool_release(session, pool.name, release)
        install(pool, previous, self.blobs, previous=None, load_timeout=self.settings.load_timeout)


def _requested_pool(rollout: Rollout) -> str | None:
    """The pool the request named (a deploy to a standby), kept in its first event; None: the live pool."""
    first = rollout.events[0].measurements if rollout.events else {}
    pool = first.get("pool")
    return pool if isinstance(pool, str) else None
