"""The service layer: push, deploy, reconcile, health. API, CLI and runtime call these.

Concurrency: a deploy and a reconciler repair each hold the claim of the
pool they change (``pool_claims``, see ``controlplane.claims``), so one
operation per pool runs at a time across threads and control-plane processes
(a second gets PoolBusy naming the holder; a repair in the way is waited
out); pushes run concurrently and the registry numbers them without races.

Deploy order (measured to lose no request on one pool):
build the new folder aside, swap it in atomically, reload in Triton (the old
version keeps serving until the new one is READY), smoke-test it, and only
then record it as serving. On any failure the previous folder is swapped back
and reloaded, so the registry and the live repository keep agreeing.

After a crash, ``reconcile`` makes each pool's repository and Triton match the
deployments recorded in the database.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from controlplane.artifacts.archive import ArchiveLimits
from controlplane.artifacts.blobs import BlobStore
from controlplane.artifacts.config_fields import DEFAULT_ALLOWED_BACKENDS
from controlplane.artifacts.ingest import IngestedArtifact, ingest_archive
from controlplane.artifacts.model_config import ConfigReview, code_runners_of
from controlplane.artifacts.signatures import SignatureRejected, TrustedSigners, verify_folder
from controlplane.claims import ALL_KINDS, PoolClaims, patiently
from controlplane.domain.claims import Holder, HolderKind
from controlplane.domain.models import (
    Deployment,
    Model,
    ModelName,
    ModelVersion,
    VersionMetadata,
    validate_model_name,
)
from controlplane.domain.policy import (
    ModelPolicy,
    SignaturePolicy,
    SignatureRecord,
    check_deployable,
    check_pushable,
    effective_policy,
)
from controlplane.domain.redaction import redact
from controlplane.domain.versions import VersionEvent
from controlplane.errors import (
    ArtifactCorrupted,
    Conflict,
    ControlPlaneError,
    DeployFailed,
    ModelLoadFailed,
    NotFound,
    PoolBusy,
    SmokeTestFailed,
    TritonUnavailable,
)
from controlplane.files import link_or_copy
from controlplane.metrics import DEPLOY_SECONDS, DEPLOYS, DRIFT, PUSHES
from controlplane.pools import Pool, install
from controlplane.registry import rollout_store, signature_store, store
from controlplane.registry.db import Database
from controlplane.triton.drift import config_drift

log = logging.getLogger(__name__)


NOT_INSTALLED = "not_installed"


@dataclass(frozen=True)
class ModelHealth:
    """Whether a model is READY where it serves, and why not."""

    model: str
    ready: bool
    reason: str
    pools: Mapping[str, str]


class ControlPlane:
    """Registry, artifact store and pools, with the operations on them."""

    def __init__(
        self,
        *,
        db: Database,
        blobs: BlobStore,
        uploads_dir: Path,
        pools: Mapping[str, Pool],
        default_pool: str,
        limits: ArchiveLimits,
        load_timeout: float = 120.0,
        trusted: TrustedSigners | None = None,
        global_policy: SignaturePolicy | None = None,
        allowed_backends: Collection[str] = DEFAULT_ALLOWED_BACKENDS,
        claims: PoolClaims | None = None,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.uploads_dir = uploads_dir
        self.pools = dict(pools)
        self.default_pool = default_pool
        self.limits = limits
        self.load_timeout = load_timeout
        self.trusted = trusted or TrustedSigners()
        self.global_policy = global_policy or SignaturePolicy()
        self.allowed_backends = tuple(allowed_backends)
        self.claims = claims or PoolClaims(db)
        self.after_deploy: Callable[[], None] | None = None
        """Called after every successful deploy (the composition root wakes the reconciler)."""

    # registry -----------------------------------------------------------------

    def push(
        self, *, model: str, archive: Path, metadata: VersionMetadata, actor: str = "anonymous"
    ) -> tuple[ModelVersion, bool]:
        """Ingest an archive as a new version of ``model`` (or return the identical one)."""
        name = validate_model_name(model)

        def admit(review: ConfigReview) -> None:
            check_pushable(model=name, code_runners=review.code_runners, policy=self.policy_of(name)[1])

        # Held from the first stored blob until the version is committed: gc never takes these blobs.
        with self.blobs.writing():
            try:
                artifact = ingest_archive(
                    archive,
                    model_name=name,
                    store=self.blobs,
                    work_dir=self.uploads_dir,
                    limits=self.limits,
                    allowed_backends=self.allowed_backends,
                    admit=admit,
                )
            except ControlPlaneError as exc:
                PUSHES.labels("rejected").inc()
                self._audit(actor, "push", name, "rejected", {"code": exc.code, "error": exc.message})
                raise
            version, created = self._register(name, artifact, metadata, actor)
        PUSHES.labels("created" if created else "unchanged").inc()
        return version, created

    def _register(
        self, name: ModelName, artifact: IngestedArtifact, metadata: VersionMetadata, actor: str
    ) -> tuple[ModelVersion, bool]:
        with self.db.transaction() as session:
            version, created = store.register_version(
                session,
                model=name,
                digest=artifact.digest,
                manifest=artifact.manifest,
                source_version_dir=artifact.source_version_dir,
                signature=artifact.signature,
                metadata=metadata,
            )
            store.append_event(
                session,
                actor=actor,
                action="push",
                target=f"{name}/{version.number}",
                outcome="created" if created else "unchanged",
                details={"digest": version.digest, "files": len(version.manifest)},
            )
        return version, created

    def list_models(self) -> list[Model]:
        with self.db.transaction() as session:
            return store.list_models(session)

    def get_model(self, model: str) -> Model:
        with self.db.transaction() as session:
            return store.get_model(session, model)

    def list_versions(self, model: str) -> list[ModelVersion]:
        with self.db.transaction() as session:
            return store.list_versions(session, model)

    def get_version(self, model: str, number: int) -> ModelVersion:
        with self.db.transaction() as session:
            return store.get_version(session, model, number)

    def events(self, *, after_id: int = 0, limit: int = 100) -> list:
        with self.db.transaction() as session:
            return store.list_events(session, after_id=after_id, limit=limit)

    # signatures and policy -----------------------------------------------------

    def attach_signature(self, model: str, number: int, *, bundle: Path, actor: str) -> SignatureRecord:
        """Verify a signature bundle against the version's stored files and record it.

        The folder that is verified is rebuilt from the read-only blob store
        under the paths that were pushed, so what is checked is what will be
        staged. SignatureRejected names the file or rule that failed.
        """
        version = self.get_version(model, number)
        with tempfile.TemporaryDirectory(dir=self.uploads_dir, prefix="verify-") as tmp:
            folder = Path(tmp) / model
            for entry in version.manifest:
                dest = folder / entry.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                blob = self.blobs.verify(entry.sha256, entry.size)
                link_or_copy(blob, dest)
            try:
                verified = verify_folder(folder, bundle, self.trusted)
            except SignatureRejected as exc:
                self._audit(
                    actor, "signature.attach", f"{model}/{number}", "rejected", {"error": exc.message}
                )
                raise
        with self.db.transaction() as session:
            return signature_store.attach_signature(
                session,
                model=model,
                number=number,
                method=str(verified.method),
                identity=verified.identity.as_dict(),
                statement=verified.statement_bytes,
                statement_sha256=verified.statement_sha256,
                bundle=verified.bundle_bytes,
                files=dict(verified.files),
                actor=actor,
            )

    def signature_of(self, model: str, number: int) -> SignatureRecord | None:
        with self.db.transaction() as session:
            return signature_store.get_signature(session, model=model, number=number)

    def policy_of(self, model: str) -> tuple[ModelPolicy | None, SignaturePolicy]:
        """The model's own settings and the policy in force for it."""
        with self.db.transaction() as session:
            own = signature_store.get_policy(session, model)
        return own, effective_policy(self.global_policy, own)

    def set_policy(self, model: str, policy: ModelPolicy, *, actor: str) -> ModelPolicy:
        """Set a model's own policy (the model need not have a version yet)."""
        validate_model_name(model)
        SignaturePolicy(allowed_signers=policy.allowed_signers or ()).validate()
        with self.db.transaction() as session:
            return signature_store.set_policy(session, model, policy, actor=actor)

    def check_deployable(self, model: str, number: int) -> None:
        """PolicyViolation unless ``number`` meets its model's policy (signatures, code backends)."""
        version = self.get_version(model, number)
        _own, policy = self.policy_of(model)
        check_deployable(
            model=model,
            number=number,
            manifest=version.manifest,
            signature=self.signature_of(model, number),
            policy=policy,
            code_runners=self._code_runners(version),
        )

    def _code_runners(self, version: ModelVersion) -> tuple[str, ...]:
        """What in the version's stored config.pbtxt runs folder code, read from the verified blob.

        Read at every check rather than stored at push, so versions pushed
        before these rules existed are judged by them too.
        """
        entry = next((e for e in version.manifest if e.path == "config.pbtxt"), None)
        if entry is None:
            raise ArtifactCorrupted(f"{version.model} version {version.number} has no config.pbtxt")
        return code_runners_of(self.blobs.verify(entry.sha256, entry.size).read_bytes())

    def redact(self, text: str) -> str:
        """``text`` (a Triton or backend reason) without server paths or stack traces."""
        return redact(text, model_roots=[str(p.repository.live) for p in self.pools.values()])

    # deploy -------------------------------------------------------------------

    def _pool(self, session: Session, name: str | None) -> Pool:
        pool_name = name
        if pool_name is None:
            weights = rollout_store.pool_weights(session)
            pool_name = rollout_store.live_pool_of(weights) if weights else self.default_pool
        try:
            return self.pools[pool_name]
        except KeyError:
            raise NotFound(f"pool {pool_name!r} does not exist", code="pool_not_found") from None

    def deploy(
        self, model: str, number: int, *, pool: str | None = None, actor: str = "anonymous"
    ) -> Deployment:
        """Make ``number`` the version of ``model`` that ``pool`` serves.

        The pool's claim is taken in the transaction that reads what the pool
        serves and released in the one that records the outcome; PoolBusy
        (409) names the rollout or deploy that holds the pool.
        """
        self.check_deployable(model, number)
        holder = Holder(HolderKind.DEPLOY, uuid.uuid4().hex)

        def claim() -> tuple[Pool, ModelVersion, Deployment | None]:
            with self.db.transaction() as session:
                target = self._pool(session, pool)
                version = store.get_version(session, model, number)
                current = store.find_deployment(session, model=model, pool=target.name)
                self.claims.take(session, [target.name], holder)
            return target, version, current

        try:
            target, version, current = patiently(claim, timeout=self.load_timeout)
            return self._deploy_claimed(target, version, current, holder=holder, actor=actor)
        finally:
            self.claims.done(holder)

    def _deploy_claimed(
        self, target: Pool, version: ModelVersion, current: Deployment | None, *, holder: Holder, actor: str
    ) -> Deployment:
        model, number = version.model, version.number
        started = time.monotonic()
        try:
            install(
                target,
                version,
                self.blobs,
                previous=current.version if current else None,
                load_timeout=self.load_timeout,
            )
        except (ModelLoadFailed, SmokeTestFailed, ArtifactCorrupted) as exc:
            reason = self.redact(exc.message)
            with self.db.transaction() as session:
                self.claims.release(session, holder)
                try:
                    store.change_version_state(
                        session, model=model, number=number, event=VersionEvent.FAILED, error=reason
                    )
                except Conflict as refused:
                    # It serves on another pool: the failure is in the audit event, its state stays.
                    log.info("%s", refused.message)
                store.append_event(
                    session,
                    actor=actor,
                    action="deploy",
                    target=f"{model}/{number}",
                    outcome="failed",
                    details={"pool": target.name, "code": exc.code, "error": reason},
                )
            DEPLOYS.labels("failed").inc()
            raise DeployFailed(
                f"deploy of {model} version {number} failed: {reason}",
                details={"cause": exc.code, "still_serving": current.version if current else None},
            ) from exc
        except BaseException:
            self._release_quietly(holder)
            raise
        with self.db.transaction() as session:
            if not self.claims.release(session, holder):
                # Our lease ran out (the database was gone for a while) and another operation took
                # the pool: what it does wins; the reconciler returns the pool to its recorded release.
                raise Conflict(
                    f"the deploy of {model} version {number} lost pool {target.name!r} to another "
                    "operation before it could be recorded; nothing was recorded",
                    code="claim_lost",
                    details={"pool": target.name},
                )
            store.set_deployment(session, model=model, pool=target.name, number=number)
            store.change_version_state(session, model=model, number=number, event=VersionEvent.SERVED)
            if current and current.version != number:
                store.change_version_state(
                    session, model=model, number=current.version, event=VersionEvent.REPLACED
                )
            store.append_event(
                session,
                actor=actor,
                action="deploy",
                target=f"{model}/{number}",
                outcome="serving",
                details={
                    "pool": target.name,
                    "previous": current.version if current else None,
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
            deployment = store.find_deployment(session, model=model, pool=target.name)
        DEPLOYS.labels("serving").inc()
        DEPLOY_SECONDS.observe(time.monotonic() - started)
        if self.after_deploy is not None:
            self.after_deploy()
        assert deployment is not None
        return deployment

    # reconcile ----------------------------------------------------------------

    def reconcile(
        self,
        *,
        only: str | None = None,
        block: bool = False,
        prepare: Callable[[Session, str], list[str]] | None = None,
    ) -> list[str]:
        """Make pools' repositories and Triton match the recorded deployments; return what changed.

        Each pool is repaired under its claim (a ``repair`` holder). A pool
        that another operation holds is skipped (reported as such) unless
        ``block`` is set, in which case this waits up to ``load_timeout`` for
        it. ``prepare(session, pool)`` runs in the transaction that takes the
        claim, before the repair (the reconciler records a standby's release
        there); its lines are returned with the rest.
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
                changes.extend(self._reconcile_pool(pool))
            finally:
                self._release_quietly(holder)
        return changes

    def _release_quietly(self, holder: Holder) -> None:
        """End ``holder``'s claims; if the database refuses, its lease runs out by itself."""
        try:
            with self.db.transaction() as session:
                self.claims.release(session, holder)
        except ControlPlaneError as exc:
            log.warning("releasing the claim of %s: %s; its lease will run out", holder, exc.message)
        finally:
            self.claims.done(holder)

    def _reconcile_pool(self, pool: Pool) -> list[str]:
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
        for name in pool.repository.live_models():
            if name not in wanted:
                self._drift(pool, name, "unexpected_folder", "a model folder that no release names")
                pool.repository.remove(name)
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
                self._audit(
                    "reconciler",
                    "reconcile.install",
                    f"{pool.name}/{name}",
                    "serving",
                    {"pool": pool.name, "version": version.number},
                )
                changes.append(f"installed {name} version {version.number} on {pool.name}")
            else:
                changes.append(f"repaired {name} version {version.number} on {pool.name} ({kind}: {detail})")
        for name in sorted({s.name for s in loaded if s.state == "READY"} - set(wanted)):
            self._drift(pool, name, "unexpected_model", "loaded in Triton but in no release")
            pool.triton.unload(name)
            changes.append(f"unloaded {name} from {pool.name}")
        return changes

    def _model_drift(self, pool: Pool, version: ModelVersion, loaded: list) -> list[tuple[str, str]]:
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
        self._audit(
            "reconciler", "drift.repair", f"{pool.name}/{model}", kind, {"pool": pool.name, "detail": detail}
        )

    # health -------------------------------------------------------------------

    def model_health(self, model: str) -> ModelHealth:
        """READY on every pool that serves it? NotFound for an unknown model."""
        info = self.get_model(model)
        with self.db.transaction() as session:
            weights = rollout_store.pool_weights(session)
        # A standby (weight 0) serves no client: its state is not the model's health.
        serving = [d for d in info.deployments if weights.get(d.pool, 0) > 0]
        if not serving:
            return ModelHealth(model, False, f"model {model!r} is not deployed on any pool", {})
        states: dict[str, str] = {}
        for d in serving:
            pool = self.pools.get(d.pool)
            if pool is None:
                states[d.pool] = "unknown pool"
            elif pool.triton.is_model_ready(ModelName(model), d.version):
                states[d.pool] = "READY"
            else:
                statuses = [s for s in _safe_status(pool, model) if s.version == str(d.version)]
                states[d.pool] = (
                    f"{statuses[0].state}: {self.redact(statuses[0].reason)}".rstrip(": ")
                    if statuses
                    else "not loaded"
                )
        not_ready = {p: s for p, s in states.items() if s != "READY"}
        if not_ready:
            reason = "; ".join(f"version on pool {p} is {s}" for p, s in not_ready.items())
            return ModelHealth(model, False, reason, states)
        return ModelHealth(model, True, "READY", states)

    def _audit(self, actor: str, action: str, target: str, outcome: str, details: dict) -> None:
        with self.db.transaction() as session:
            store.append_event(
                session, actor=actor, action=action, target=target, outcome=outcome, details=details
            )


def _safe_status(pool: Pool, model: str) -> list:
    try:
        return pool.triton.model_status(model)
    except TritonUnavailable:
        return []
