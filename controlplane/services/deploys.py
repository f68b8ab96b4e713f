"""Deploy: put one version on one pool, as an inplace rollout with no steps and no bake.

A deploy is a rollout row like any other (strategy ``inplace``), so it holds
its pool's claim from the transaction that creates it to the one that ends
it, survives outages and restarts the way rollouts do, and shows in
``/v1/rollouts``. What this adds is the synchronous answer: the caller
waits for the rollout to end and gets the deployment (it serves), or
DeployFailed with Triton's reason (what served before still serves), or,
when the rollout is still waiting out an outage after ``answer_within``,
DeployPending naming the rollout that goes on. A deploy of a model that
requires approval is answered DeployPending at once: its rollout waits for
an approver, not for this request.
"""

from __future__ import annotations

import time

from controlplane.domain.models import Deployment
from controlplane.domain.rollouts import Rollout, RolloutState, Strategy, one_step_spec
from controlplane.errors import Conflict, DeployFailed, DeployPending
from controlplane.metrics import DEPLOY_SECONDS, DEPLOYS
from controlplane.registry import store
from controlplane.registry.db import Database
from controlplane.rollout.engine import RolloutEngine
from controlplane.services import audit


class Deployer:
    """Runs deploys through the rollout engine and answers when they have ended."""

    def __init__(self, *, db: Database, engine: RolloutEngine, answer_within: float) -> None:
        self.db = db
        self.engine = engine
        self.answer_within = answer_within

    def deploy(
        self,
        model: str,
        number: int,
        *,
        pool: str | None = None,
        actor: str = "anonymous",
        allow_breaking: bool = False,
    ) -> Deployment:
        """Make ``number`` the version of ``model`` that ``pool`` (default: the live pool) serves.

        PoolBusy (409) names the rollout or repair that holds the pool;
        PolicyViolation refuses a version that may not serve before anything starts, and
        Conflict ``breaking_change`` one that breaks clients of production's version unless
        ``allow_breaking`` and the version declares a new major api_version.
        """
        started = time.monotonic()
        spec = one_step_spec(model, number, Strategy.INPLACE, allow_breaking=allow_breaking)
        rollout = self.engine.start(spec, actor=actor, pool=pool)
        if rollout.state is RolloutState.PENDING_APPROVAL:
            DEPLOYS.labels("pending").inc()
            raise DeployPending(
                f"the deploy of {model} version {number} waits for approval as rollout {rollout.id} "
                f"(until {rollout.approval_expires_at:%Y-%m-%d %H:%M:%S} UTC): another principal approves "
                f"it with POST /v1/rollouts/{rollout.id}/approve",
                details={"rollout": rollout.id, "state": rollout.state.value},
            )
        ended = self.engine.wait(rollout.id, timeout=self.answer_within)
        if ended.state is RolloutState.SUCCEEDED:
            return self._served(ended, actor=actor, seconds=time.monotonic() - started)
        if ended.active:
            DEPLOYS.labels("pending").inc()
            raise DeployPending(
                f"the deploy of {model} version {number} is not done after {self.answer_within:.0f} s "
                f"({ended.state}: {ended.reason or 'waiting'}); it goes on as rollout {ended.id}",
                details={"rollout": ended.id, "state": ended.state.value},
            )
        raise self._refused(ended, actor=actor)

    def _served(self, rollout: Rollout, *, actor: str, seconds: float) -> Deployment:
        model, number = rollout.spec.model, rollout.spec.version
        with self.db.transaction() as session:
            deployment = store.find_deployment(session, model=model, pool=rollout.target_pool)
            store.append_event(
                session,
                actor=actor,
                action="deploy",
                target=f"{model}/{number}",
                outcome="serving",
                details={
                    "pool": rollout.target_pool,
                    "previous": rollout.from_version,
                    "rollout": rollout.id,
                    "seconds": round(seconds, 3),
                },
            )
        DEPLOYS.labels("serving").inc()
        DEPLOY_SECONDS.observe(seconds)
        if deployment is None or deployment.version != number:
            # Another operation changed the pool between this deploy's end and this read.
            raise Conflict(
                f"{model} version {number} was deployed, then replaced by another operation on "
                f"pool {rollout.target_pool!r}",
                code="replaced",
                details={"rollout": rollout.id},
            )
        return deployment

    def _refused(self, rollout: Rollout, *, actor: str) -> DeployFailed:
        model, number = rollout.spec.model, rollout.spec.version
        last = rollout.events[-1].measurements if rollout.events else {}
        cause = str(last.get("cause") or rollout.state.value)
        why = str(last.get("error") or rollout.reason)
        audit.record(
            self.db,
            actor=actor,
            action="deploy",
            target=f"{model}/{number}",
            outcome="failed",
            details={"pool": rollout.target_pool, "code": cause, "error": why, "rollout": rollout.id},
        )
        DEPLOYS.labels("failed").inc()
        return DeployFailed(
            f"deploy of {model} version {number} failed: {why}",
            details={"cause": cause, "still_serving": rollout.from_version, "rollout": rollout.id},
        )
