"""Whether a rollout may start: its interface against the serving version, its metrics against production.

Production is what the live pool (the one with most of the traffic) serves of
the model. Nothing serving, or the candidate already serving there: nothing
to compare, admitted. Otherwise:

* interface (:mod:`controlplane.domain.compatibility`): a candidate that
  breaks clients of the serving version is refused (Conflict
  ``breaking_change``) unless the request allows it and the candidate
  declares a new major ``api_version``. A version that served production
  before (the previous production version, or any version now serving or
  retired) is exempt: a rollback must never be refused for the interface it
  had, since its clients are the ones it served.
* metric (:mod:`controlplane.domain.metric_gate`), when the gates name one:
  applies to every candidate, rollbacks included.

Every refusal, and every breaking change let through, is written to the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from controlplane.domain.compatibility import Compatibility, breaking_allowed, compare
from controlplane.domain.metric_gate import check_metric
from controlplane.domain.models import ModelVersion, VersionState
from controlplane.domain.rollouts import RolloutSpec
from controlplane.errors import Conflict, ControlPlaneError, NotFound
from controlplane.registry import rollout_store, store
from controlplane.registry.db import Database
from controlplane.services import audit

_SERVED_PRODUCTION = frozenset({VersionState.SERVING, VersionState.RETIRED})


@dataclass(frozen=True)
class ServingComparison:
    """A version's interface against the version serving production."""

    serving_version: int
    serving_api_version: str | None
    compatibility: Compatibility

    def as_dict(self) -> dict[str, Any]:
        """``{"serving_version", "compatible", "differences"}`` as JSON-ready values."""
        return {"serving_version": self.serving_version, **self.compatibility.as_dict()}


def serving_version(session: Session, model: str) -> ModelVersion | None:
    """The version of ``model`` the live pool serves, if any (None also when no pool exists)."""
    try:
        live = rollout_store.live_pool(session)
    except NotFound:
        return None
    number = rollout_store.pool_release(session, live).get(model)
    return store.get_version(session, model, number) if number is not None else None


def compare_with_production(db: Database, model: str, number: int) -> ServingComparison | None:
    """Version ``number`` of ``model`` against the version serving production; None when none serves."""
    with db.transaction() as session:
        candidate = store.get_version(session, model, number)
        serving = serving_version(session, model)
    if serving is None:
        return None
    return ServingComparison(
        serving_version=serving.number,
        serving_api_version=serving.metadata.api_version,
        compatibility=compare(serving.signature, candidate.signature),
    )


@dataclass(frozen=True)
class _Versions:
    candidate: ModelVersion
    serving: ModelVersion | None
    previous_production: int | None

    @property
    def served_production_before(self) -> bool:
        return self.candidate.state in _SERVED_PRODUCTION or self.candidate.number == self.previous_production


class RolloutAdmission:
    """Called by the rollout engine before a rollout row exists; raises to refuse."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def __call__(self, spec: RolloutSpec, *, actor: str = "controlplane") -> None:
        """Refuse ``spec`` (InvalidInput / Conflict naming every reason) or return.

        ``actor`` is who the audit log names for a refusal.
        """
        with self.db.transaction() as session:
            versions = _Versions(
                candidate=store.get_version(session, spec.model, spec.version),
                serving=serving_version(session, spec.model),
                previous_production=rollout_store.previous_production_version(session, spec.model),
            )
        serving = versions.serving
        if serving is None or serving.number == spec.version:
            return
        target = f"{spec.model}/{spec.version}"
        try:
            if not versions.served_production_before:
                self._check_interface(spec, serving, versions.candidate, actor=actor)
            check_metric(
                spec.gates,
                production=serving.metadata.metrics,
                candidate=versions.candidate.metadata.metrics,
                production_version=serving.number,
                candidate_version=spec.version,
            )
        except ControlPlaneError as refused:
            audit.record(
                self.db,
                actor=actor,
                action="rollout.admission",
                target=target,
                outcome="refused",
                details={
                    "code": refused.code,
                    "error": refused.message,
                    "strategy": spec.strategy.value,
                    "serving_version": serving.number,
                    **({"details": refused.details} if refused.details is not None else {}),
                },
            )
            raise

    def _check_interface(
        self, spec: RolloutSpec, serving: ModelVersion, candidate: ModelVersion, *, actor: str
    ) -> None:
        compat = compare(serving.signature, candidate.signature)
        if compat.compatible:
            return
        serving_api, candidate_api = serving.metadata.api_version, candidate.metadata.api_version
        allowed, reason = breaking_allowed(compat, serving_api, candidate_api, spec.gates.allow_breaking)
        details = {
            "differences": [d.as_dict() for d in compat.differences],
            "serving_version": serving.number,
            "candidate_version": candidate.number,
            "serving_api_version": serving_api,
            "candidate_api_version": candidate_api,
        }
        if allowed:
            # Let through on purpose: the log keeps what was broken and why it was allowed.
            audit.record(
                self.db,
                actor=actor,
                action="rollout.admission",
                target=f"{spec.model}/{spec.version}",
                outcome="breaking_allowed",
                details={**details, "reason": reason},
            )
            return
        listed = "; ".join(d.detail for d in compat.breaking)
        raise Conflict(
            f"{spec.model} version {candidate.number} breaks clients of version {serving.number}, which "
            f"serves production: {listed}. Refused because {reason}",
            code="breaking_change",
            details={**details, "reason": reason},
        )
