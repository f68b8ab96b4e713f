"""Pool repair: make each pool's repository and Triton match the release recorded for it.

Runs from the reconciler's passes and from the supervisor after a Triton
restart. Each pool is repaired under its claim (a ``repair`` holder, see
``controlplane.claims``), so a repair never runs beside a deploy, a rollout
or another repair of that pool, in this process or another. Every repair
goes through ``pools.install`` / ``pools.uninstall``, the same steps a
rollout takes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping

from sqlalchemy.orm import Session

from controlplane.artifacts.blobs import BlobStore
from controlplane.claims import ALL_KINDS, PoolClaims, patiently
from controlplane.domain.claims import Holder, HolderKind
from controlplane.domain.models import ModelVersion
from controlplane.domain.tuning import tuned_model_of
from controlplane.errors import (
    ArtifactCorrupted,
    ModelLoadFailed,
    PoolBusy,
    SmokeTestFailed,
)
from controlplane.metrics import DRIFT
from controlplane.pools import Pool, install, uninstall
from controlplane.registry import store
from controlplane.registry.db import Database
from controlplane.services import audit
from controlplane.triton.client import ModelStatus
from controlplane.triton.drift import config_drift

log = logging.getLogger(__name__)

NOT_INSTALLED = "not_installed"


class PoolRepair:
    """Finds where pools differ from their recorded releases and repairs them."""

    def __init__(
        self,
        *,
        db: Database,
        blobs: BlobStore,
        pools: Mapping[str, Pool],
        claims: PoolClaims,
        load_timeout: float = 120.0,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.pools = dict(pools)
        self.claims = claims
        self.load_timeout = load_timeout

    def reconcile(
        self,
        *,
        only: str | None = None,
        block: bool = False,
        prepare: Callable[[Session, str], list[str]] | None = None,
    ) -> list[str]:
        """Make pools' repositories and Triton match the recorded deployments; return what changed.

        A pool that another operation holds is skipped (reported as such)
        unless ``block`` is set, in which case this waits up to
        ``load_timeout`` for it. ``prepare(session, pool)`` runs in the
        transaction that takes the claim, before the repair (the reconciler
        records a standby's release there); its lines are returned with the rest.
        """
        changes: list[str] = []
        for pool in self.pools.values():
            if only is not None and pool.name != only:
                continue
            holder = Holder(HolderKind.REPAIR, uuid.uuid4().hex)

            def claim(pool: Pool = pool, holder: Holder = holder) -> list[str]:
                with self.db.transaction() as session:
                    self.claims.take(session, [pool.name], holder)
                    return prepare(session, pool.name) if prepare is not None else []

            try:
                changes.extend(
                    patiently(claim, timeout=self.load_timeout, behind=ALL_KINDS) if block else claim()
                )
            except PoolBusy as exc:
                self.claims.done(holder)
                changes.append(f"skipped {pool.name}: busy ({exc.details['holder']['kind']})")
                continue
            except BaseException:
                self.claims.done(holder)
                raise
            try:
                changes.extend(self._repair(pool))
            finally:
                self.claims.end(holder)
        return changes

    def repair_claimed(self, pool: Pool) -> list[str]:
        """Repair ``pool``, whose claim the caller holds (a recycle); return what changed."""
        return self._repair(pool)

    def _repair(self, pool: Pool) -> list[str]:
        """Find where ``pool`` differs from its recorded release and repair it.

        Drift is what nobody recorded: a model folder or a loaded model or
        version that is not in the release, files in a model folder that are
        not the staged blobs, a configuration Triton runs that is not the
        staged config.pbtxt (a load with an override), or a released model
        that is not READY. Each one found is repaired, counted and audited.
        Repairs go through ``install`` (build aside, swap in, load, smoke-test)
        so that a repair never leaves a half-staged folder; a fresh folder is
        also what makes Triton drop a configuration override.
        """
        changes: list[str] = []
        pool.repository.clear_staging()
        with self.db.transaction() as session:
            wanted = {
                d.model: store.get_version(session, d.model, d.version)
                for d in store.list_deployments(session, pool=pool.name)
            }
        loaded = pool.triton.repository_index()
        # Not the merged index: a model READY on one replica only is loaded there all the same.
        ready = pool.triton.ready_anywhere()
        folders = set(pool.repository.live_models())
        for name in sorted((ready | folders) - set(wanted)):
            if tuned_model_of(name) is not None:
                changes.append(self._remove_tuning_leftover(pool, name, loaded=name in ready))
                continue
            if name in folders:
                self._drift(pool, name, "unexpected_folder", "a model folder that no release names")
            if name in ready:
                self._drift(pool, name, "unexpected_model", "loaded in Triton but in no release")
            # Unloaded before its folder goes, so Triton never serves a model whose files are gone.
            uninstall(pool, name)
            if name in ready:
                changes.append(f"unloaded {name} from {pool.name}")
            if name in folders:
                changes.append(f"removed {name} from {pool.name}")
        for name, version in wanted.items():
            problems = self._model_drift(pool, version, loaded)
            if not problems:
                continue
            kind, detail = problems[0]
            if kind == NOT_INSTALLED:
                log.info("reconcile: installing %s version %s on %s", name, version.number, pool.name)
            else:
                self._drift(pool, name, kind, "; ".join(d for _k, d in problems))
            try:
                install(pool, version, self.blobs, previous=version.number, load_timeout=self.load_timeout)
            except (ModelLoadFailed, SmokeTestFailed, ArtifactCorrupted) as exc:
                # Permanent for this version: report it and go on with the other models.
                log.error("reconcile: %s version %s on %s: %s", name, version.number, pool.name, exc)
                changes.append(f"failed {name} version {version.number} on {pool.name}: {exc.message}")
                continue
            if kind == NOT_INSTALLED:
                audit.record(
                    self.db,
                    actor="reconciler",
                    action="reconcile.install",
                    target=f"{pool.name}/{name}",
                    outcome="serving",
                    details={"pool": pool.name, "version": version.number},
                )
                changes.append(f"installed {name} version {version.number} on {pool.name}")
            else:
                changes.append(f"repaired {name} version {version.number} on {pool.name} ({kind}: {detail})")
        return changes

    def _remove_tuning_leftover(self, pool: Pool, name: str, *, loaded: bool) -> str:
        """Remove what a tuning run left (its control plane died before its cleanup): expected, not drift.

        Only reached once the run's claim is gone, so never under a running tuning run.
        """
        log.info("reconcile: removing tuning leftover %s from %s", name, pool.name)
        uninstall(pool, name)
        audit.record(
            self.db,
            actor="reconciler",
            action="tune.cleanup",
            target=f"{pool.name}/{name}",
            outcome="removed",
            details={"pool": pool.name, "loaded": loaded},
        )
        return f"removed tuning leftover {name} from {pool.name}"

    def _model_drift(
        self, pool: Pool, version: ModelVersion, loaded: list[ModelStatus]
    ) -> list[tuple[str, str]]:
        """(kind, detail) for each way ``pool`` does not serve exactly ``version``; [] if it does."""
        name = version.model
        states = {s.version: s.state for s in loaded if s.name == name}
        if not (pool.repository.live / name).exists() and "READY" not in states.values():
            # Recorded but never installed here (a new release, a standby that follows): no drift.
            return [(NOT_INSTALLED, f"version {version.number} is not installed")]
        files = pool.repository.differences(version, self.blobs)
        if files:
            return [("files", f) for f in files]
        others = sorted(v for v, state in states.items() if state == "READY" and v != str(version.number))
        if others:
            return [("unexpected_version", f"version {', '.join(others)} is loaded")]
        if states.get(str(version.number)) != "READY":
            state = states.get(str(version.number)) or "absent"
            return [("not_loaded", f"version {version.number} is {state}")]
        staged = (pool.repository.live / name / "config.pbtxt").read_text(encoding="utf-8")
        try:
            differences = config_drift(staged, pool.triton.model_config(name))
        except ModelLoadFailed:
            return []
        return [("config", d) for d in differences]

    def _drift(self, pool: Pool, model: str, kind: str, detail: str) -> None:
        log.warning("drift on pool %s, model %s (%s): %s", pool.name, model, kind, detail)
        DRIFT.labels(pool.name, kind).inc()
        audit.record(
            self.db,
            actor="reconciler",
            action="drift.repair",
            target=f"{pool.name}/{model}",
            outcome=kind,
            details={"pool": pool.name, "detail": detail},
        )
