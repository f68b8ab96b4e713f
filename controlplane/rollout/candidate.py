"""Checks a staged candidate passes before any weight moves: its golden set, then warm-up.

The candidate is loaded on the idle pool (weight 0), so what is sent here
reaches it straight, never through the proxy, and no client request does.
The golden set runs on every replica: a replica that answers differently
(another build of a backend, a corrupted copy) fails the rollout as surely as
a wrong version.
"""

from __future__ import annotations

from collections.abc import Mapping

from controlplane.artifacts.blobs import BlobStore
from controlplane.domain.rollouts import Rollout
from controlplane.pools import Pool
from controlplane.registry import golden_store, store
from controlplane.registry.db import Database
from controlplane.rollout.warmup import warm_up


class CandidateChecks:
    """The rollout engine's ``candidate_checks``: a report, or CandidateRejected."""

    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs

    def __call__(self, rollout: Rollout, pool: Pool) -> Mapping[str, object]:
        """Prove ``rollout``'s version on ``pool`` (weight 0); the measurements, to be recorded."""
        gates = rollout.spec.gates
        with self.db.transaction() as session:
            version = store.get_version(session, rollout.spec.model, rollout.spec.version)
            record = (
                golden_store.get_golden(session, model=version.model, number=version.number)
                if gates.golden
                else None
            )
        report: dict[str, object] = {}
        if record is not None:
            # Imported here: numpy is loaded by the first golden set asked, not by every control plane.
            from controlplane.rollout.golden_run import run_golden

            report["golden"] = run_golden(pool, version, record, self.blobs)
        if gates.warmup_requests > 0:
            report.update(warm_up(pool, version, gates.warmup_requests))
        return report
