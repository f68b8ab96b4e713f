"""Whether a rollout may start: its interface against the serving version, its metrics against production."""

from __future__ import annotations

from controlplane.domain.rollouts import RolloutSpec
from controlplane.registry.db import Database


class RolloutAdmission:
    """Called by the rollout engine before a rollout row exists; raises to refuse."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def __call__(self, spec: RolloutSpec) -> None:
        """Refuse ``spec`` (InvalidInput / Conflict naming every reason) or return."""
        return None
