"""The tuner: measure batching configurations of a version on the idle pool, write the best as a new version.

What a run does, in order:

1. **Refuses early** (before any pool is touched): an unknown model or
   version, a model that cannot batch, a sweep out of bounds (422).
2. **Claims the idle pool** (a ``tune`` holder, see ``controlplane.claims``)
   in the transaction that checks its weight is 0 and writes ``tune.start``:
   no rollout, deploy, repair or recycle changes that pool while the run
   measures on it (409 ``pool_busy`` naming the holder while another
   operation holds it). The pool that serves is never touched.
3. **Measures** the version's own configuration (the baseline), then each
   swept one: its folder is staged under the tuning name (``<model>~tune``,
   hard links to the version's blobs plus the new ``config.pbtxt``) and
   swapped in, loaded on every replica, warmed up and measured with the
   load generator against replica 1 straight (never through the proxy),
   then unloaded. What the pool holds for its standby keeps its name,
   folder and loaded state throughout. Before each configuration the run
   checks it still holds the pool and the pool still has no traffic, and
   stops otherwise.
4. **Cleans up** the tuning model and folder, whatever happened, and
   releases the claim. A control plane killed mid-run leaves both behind:
   its claim lapses (at once on the same host) and the next repair of the
   pool removes a folder or a loaded model named ``<model>~tune``
   (``PoolRepair``), without counting it as drift.
5. **Chooses** the best configuration under the objective
   (``domain.tuning.choose_best``) and pushes it through the registry as a
   new version: the version's files with the new ``config.pbtxt``, its
   metrics and api_version, and ``tuning.*`` labels (provenance). When no
   configuration meets the objective nothing is written and the run fails
   with ``objective_not_met``. ``tune.finish`` is audited either way.

Run state is kept in memory (a restart forgets it; the audit events and
the version's labels remain). Concurrency: ``start`` is called from API
threads; each run has a worker thread of its own; one lock guards every
run's state.
"""

from __future__ import annotations

import copy
import enum
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from controlplane.artifacts.archive import pack_directory
from controlplane.artifacts.blobs import BlobStore
from controlplane.artifacts.protobuf_modules import model_config_pb2
from controlplane.claims import PoolClaims, patiently
from controlplane.domain.claims import Holder, HolderKind
from controlplane.domain.models import ModelVersion, VersionMetadata, validate_model_name
from controlplane.domain.tuning import (
    BatchingConfig,
    LoadShape,
    LoadTarget,
    Measurement,
    Provenance,
    SweepSpec,
    Trial,
    choose_best,
    plan,
    tuning_model_name,
)
from controlplane.errors import (
    Conflict,
    ControlPlaneError,
    ModelLoadFailed,
    NotFound,
)
from controlplane.files import link_or_copy, write_atomically
from controlplane.pools import Pool, redact_reason
from controlplane.registry import claim_store, rollout_store, store
from controlplane.registry.db import Database
from controlplane.services import audit
from controlplane.services.registry import Registry
from controlplane.tuning.configs import batching_of, read_config, render_config

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
KEEP_FINISHED_RUNS = 50
UNLOAD_WAIT_SECONDS = 30.0

Measure = Callable[..., Measurement]
"""``measure(target, shape, *, stop)``: the load generator (a fake in unit tests)."""


def measure_over_grpc(target: LoadTarget, shape: LoadShape, *, stop: threading.Event) -> Measurement:
    """The gRPC load generator, imported on the first sweep (grpc is not needed before)."""
    from controlplane.tuning.loadgen import measure

    return measure(target, shape, stop=stop)


class TuningState(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class TuningRun:
    """One tuning run as the API shows it; ``trials`` grow as configurations are measured."""

    id: str
    model: str
    version: int
    pool: str
    spec: SweepSpec
    baseline_config: BatchingConfig
    planned: tuple[BatchingConfig, ...]
    actor: str
    started_at: datetime
    state: TuningState = TuningState.RUNNING
    phase: str = "starting"
    trials: list[Trial] = field(default_factory=list)
    best: Trial | None = None
    new_version: int | None = None
    version_created: bool | None = None
    error: dict[str, Any] | None = None
    finished_at: datetime | None = None

    @property
    def tuning_model(self) -> str:
        return tuning_model_name(self.model)

    def baseline(self) -> Trial | None:
        return next((t for t in self.trials if t.baseline), None)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able state: settings, every trial so far, the best, the new version or the error."""
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "pool": self.pool,
            "tuning_model": self.tuning_model,
            "state": self.state.value,
            "phase": self.phase,
            "actor": self.actor,
            "started_at": self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            "objective_p99_ms": self.spec.p99_ms,
            "settings": self.spec.as_dict(),
            "planned": len(self.planned),
            "default_config": self.baseline_config.as_dict(),
            "trials": [t.as_dict(self.spec.p99_ms) for t in self.trials],
            "best": None if self.best is None else self.best.as_dict(self.spec.p99_ms),
            "new_version": self.new_version,
            "version_created": self.version_created,
            "error": self.error,
        }


class _Stopped(ControlPlaneError):
    code = "tuning_stopped"


class Tuner:
    """Starts tuning runs on the idle pool and keeps their state for the API."""

    def __init__(
        self,
        *,
        db: Database,
        pools: Mapping[str, Pool],
        endpoints: Mapping[str, Sequence[str]],
        claims: PoolClaims,
        blobs: BlobStore,
        registry: Registry,
        work_dir: Path,
        load_timeout: float = 120.0,
        request_timeout: float = 10.0,
        measure: Measure = measure_over_grpc,
    ) -> None:
        self.db = db
        self.pools = dict(pools)
        self.endpoints = {name: list(urls) for name, urls in endpoints.items()}
        self.claims = claims
        self.blobs = blobs
        self.registry = registry
        self.work_dir = work_dir
        self.load_timeout = load_timeout
        self.request_timeout = request_timeout
        self.measure = measure
        self._runs: dict[str, TuningRun] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- reads -------------------------------------------------------------------------------

    def get(self, run_id: str) -> TuningRun:
        """A copy of the run's state now; NotFound (``tuning_not_found``) for an unknown id."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise NotFound(
                    f"tuning run {run_id!r} does not exist (runs are kept in memory until the control plane "
                    "restarts)",
                    code="tuning_not_found",
                )
            return copy.deepcopy(run)

    def list(self) -> list[TuningRun]:
        """Every run this process knows, newest first."""
        with self._lock:
            runs = [copy.deepcopy(r) for r in self._runs.values()]
        return sorted(runs, key=lambda r: r.started_at, reverse=True)

    def wait(self, run_id: str, timeout: float) -> TuningRun:
        """The run once it has ended (or as it is after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.get(run_id)
            if run.state is not TuningState.RUNNING or time.monotonic() > deadline:
                return run
            time.sleep(0.05)

    # -- starting ----------------------------------------------------------------------------

    def start(self, model: str, spec: SweepSpec, *, version: int | None = None, actor: str) -> TuningRun:
        """Check the request, claim the idle pool and start measuring in a worker thread.

        InvalidInput (422) for a sweep out of bounds or a model that cannot
        batch, NotFound (404) for an unknown model or version, PoolBusy (409)
        while another operation holds the idle pool, Conflict ``no_idle_pool``
        (409) when every pool has traffic.
        """
        name = validate_model_name(model)
        spec = spec.validate()
        with self.db.transaction() as session:
            source = (
                store.get_version(session, name, version)
                if version is not None
                else self._default_version(session, name)
            )
        config = read_config(self._config_text(source))
        planned = plan(spec, max_batch_size=source.signature.max_batch_size, backend=source.signature.backend)
        run_id = uuid.uuid4().hex[:12]
        holder = Holder(HolderKind.TUNE, run_id)

        def claim() -> str:
            with self.db.transaction() as session:
                pool = self._idle_pool(rollout_store.pool_weights(session))
                self.claims.take(session, [pool], holder)
                store.append_event(
                    session,
                    actor=actor,
                    action="tune.start",
                    target=f"{name}/{source.number}",
                    outcome="running",
                    details={
                        "run": run_id,
                        "pool": pool,
                        "objective_p99_ms": spec.p99_ms,
                        "configurations": len(planned),
                        "concurrency": spec.concurrency,
                        "seconds_per_config": spec.seconds_per_config,
                    },
                )
                return pool

        try:
            pool = patiently(claim, timeout=self.load_timeout)
        except BaseException:
            self.claims.done(holder)
            raise
        run = TuningRun(
            id=run_id,
            model=name,
            version=source.number,
            pool=pool,
            spec=spec,
            baseline_config=batching_of(config),
            planned=tuple(planned),
            actor=actor,
            started_at=datetime.now(UTC),
        )
        thread = threading.Thread(
            target=self._drive, args=(run, holder, source, config), name=f"tune-{run_id}", daemon=True
        )
        with self._lock:
            self._forget_old_runs()
            self._runs[run_id] = run
            self._threads[run_id] = thread
        log.info(
            "tuning %s version %s on pool %s: %d configurations (run %s)",
            name,
            source.number,
            pool,
            len(planned),
            run_id,
        )
        thread.start()
        return self.get(run_id)

    def stop(self, timeout: float = 30.0) -> None:
        """End running runs (each cleans up and releases its pool) and wait for their threads."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads.values())
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _default_version(self, session: Session, model: str) -> ModelVersion:
        """The version serving production (the live pool's), else the latest one."""
        live = rollout_store.live_pool(session)
        number = rollout_store.pool_release(session, live).get(model)
        if number is None:
            number = store.get_model(session, model).latest_version
        return store.get_version(session, model, number)

    def _config_text(self, version: ModelVersion) -> str:
        entry = next((e for e in version.manifest if e.path == CONFIG_FILE), None)
        if entry is None:
            raise NotFound(f"{version.model} version {version.number} has no {CONFIG_FILE}")
        return self.blobs.verify(entry.sha256, entry.size).read_text(encoding="utf-8")

    def _idle_pool(self, weights: Mapping[str, int]) -> str:
        live = rollout_store.live_pool_of(weights) if weights else None
        idle = [p for p in sorted(self.pools) if weights.get(p, 0) == 0 and p != live and p in self.endpoints]
        if not idle:
            raise Conflict(
                f"no pool is without traffic (weights {dict(weights)}); tuning runs only on an idle pool",
                code="no_idle_pool",
                details={"weights": dict(weights)},
            )
        return idle[0]

    def _forget_old_runs(self) -> None:
        finished = sorted(
            (r for r in self._runs.values() if r.state is not TuningState.RUNNING), key=lambda r: r.started_at
        )
        for run in finished[: max(0, len(finished) - KEEP_FINISHED_RUNS + 1)]:
            self._runs.pop(run.id, None)
            self._threads.pop(run.id, None)

    # -- the worker --------------------------------------------------------------------------

    def _update(self, run: TuningRun, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(run, key, value)

    def _drive(
        self, run: TuningRun, holder: Holder, source: ModelVersion, config: model_config_pb2.ModelConfig
    ) -> None:
        """Measure, release the pool, then choose and write; every ending is recorded and audited."""
        try:
            try:
                self._sweep(run, holder, source, config)
            finally:
                self.claims.end(holder)
            with self._lock:
                trials = list(run.trials)
            best = choose_best(trials, p99_ms=run.spec.p99_ms)
            if best.baseline:
                self._update(
                    run,
                    best=best,
                    new_version=source.number,
                    version_created=False,
                    state=TuningState.SUCCEEDED,
                    phase=f"version {source.number}'s own configuration is the best: nothing new written",
                )
                return
            self._update(run, best=best, phase="writing the new version")
            new, created = self._push(run, source, config, best)
            if created:
                phase = f"wrote version {new.number}"
            elif new.number == source.number:
                phase = f"version {new.number} has this configuration already: nothing new written"
            else:
                phase = f"version {new.number} has these files already: nothing new written"
            self._update(
                run, new_version=new.number, version_created=created, state=TuningState.SUCCEEDED, phase=phase
            )
        except ControlPlaneError as exc:
            log.warning("tuning run %s of %s failed: %s", run.id, run.model, exc.message)
            self._update(
                run,
                state=TuningState.FAILED,
                phase="failed",
                error={"code": exc.code, "message": exc.message, "details": exc.details},
            )
        except Exception as exc:
            log.exception("tuning run %s of %s failed unexpectedly", run.id, run.model)
            self._update(
                run,
                state=TuningState.FAILED,
                phase="failed",
                error={"code": "internal_error", "message": f"the tuning run failed unexpectedly: {exc}"},
            )
        finally:
            self._update(run, finished_at=datetime.now(UTC))
            self._audit_finish(run)

    def _sweep(
        self, run: TuningRun, holder: Holder, source: ModelVersion, config: model_config_pb2.ModelConfig
    ) -> None:
        pool = self.pools[run.pool]
        name = run.tuning_model
        target = LoadTarget(
            url=self.endpoints[run.pool][0], model=name, version=source.number, signature=source.signature
        )
        shape = LoadShape(
            concurrency=run.spec.concurrency,
            seconds=run.spec.seconds_per_config,
            warmup_seconds=run.spec.warmup_seconds,
            timeout=self.request_timeout,
        )
        configurations = [run.baseline_config, *run.planned]
        try:
            # What a run killed before its cleanup left here (the repair would remove it too).
            self._remove(pool, name)
            for index, batching in enumerate(configurations):
                self._check_may_go_on(run, holder)
                self._update(run, phase=f"measuring {index} of {len(run.planned)} ({batching.describe()})")
                trial = self._trial(pool, source, config, target, shape, index, batching)
                with self._lock:
                    run.trials.append(trial)
                log.info("tuning run %s: #%d %s: %s", run.id, index, batching.describe(), _summary(trial))
        finally:
            self._update(run, phase="cleaning up")
            self._remove(pool, name)

    def _check_may_go_on(self, run: TuningRun, holder: Holder) -> None:
        """Stop when the control plane stops, the claim was lost, or the pool got traffic."""
        if self._stop.is_set():
            raise _Stopped("the control plane is stopping; the tuning run ends here")
        with self.db.transaction() as session:
            claim = claim_store.claim_of(session, run.pool)
            weight = rollout_store.pool_weights(session).get(run.pool, 0)
        if claim is None or claim.holder != holder:
            raise Conflict(
                f"the tuning run lost its claim on pool {run.pool!r}; it stops without measuring further",
                code="claim_lost",
            )
        if weight > 0:
            raise Conflict(
                f"pool {run.pool!r} got traffic (weight {weight}) during the tuning run; it stops without "
                "measuring further",
                code="pool_serving",
                details={"pool": run.pool, "weight": weight},
            )

    def _trial(
        self,
        pool: Pool,
        source: ModelVersion,
        config: model_config_pb2.ModelConfig,
        target: LoadTarget,
        shape: LoadShape,
        index: int,
        batching: BatchingConfig,
    ) -> Trial:
        """Stage, load, measure and unload one configuration under the tuning name."""
        name = target.model
        # Blobs are hashed again once per run, before the first load: the bytes measured are the version's.
        folder = pool.repository.build(source, self.blobs, verify=index == 0)
        try:
            staged_config = folder / CONFIG_FILE
            # A hard link to the version's blob: unlinked, never written through.
            staged_config.unlink()
            write_atomically(staged_config, render_config(config, batching, name=name), mode=0o644)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        replaced = pool.repository.activate(name, folder)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
        pool.loads_since_recycle += 1
        try:
            pool.triton.load(name, source.number, timeout=self.load_timeout)
        except ModelLoadFailed as exc:
            # Replicas before the one that refused it run it now: unloaded before the next candidate.
            self._unload(pool, name)
            return Trial(index=index, config=batching, failure=redact_reason([pool], exc.message))
        try:
            measured = self.measure(target, shape, stop=self._stop)
        finally:
            self._unload(pool, name)
        return Trial(index=index, config=batching, measurement=measured)

    def _unload(self, pool: Pool, name: str) -> None:
        """Unload ``name`` and wait until no replica has it READY (the next candidate gets the CPU)."""
        try:
            pool.triton.unload(name)
        except ModelLoadFailed as exc:
            log.info("unload of %s on %s: %s", name, pool.name, exc.message)
        deadline = time.monotonic() + UNLOAD_WAIT_SECONDS
        while name in pool.triton.ready_anywhere() or _unloading(pool, name):
            if time.monotonic() > deadline:
                log.warning("%s on %s still unloading after %.0f s", name, pool.name, UNLOAD_WAIT_SECONDS)
                return
            time.sleep(0.05)

    def _remove(self, pool: Pool, name: str) -> None:
        """Unload ``name`` and remove its folder; a Triton out of reach leaves the unload to the repair."""
        try:
            self._unload(pool, name)
        except ControlPlaneError as exc:
            log.warning("tuning cleanup: unloading %s on %s failed: %s", name, pool.name, exc.message)
        pool.repository.remove(name)

    def _push(
        self, run: TuningRun, source: ModelVersion, config: model_config_pb2.ModelConfig, best: Trial
    ) -> tuple[ModelVersion, bool]:
        """Push the version's files with the best configuration as a new version of the model."""
        work = self.work_dir / f"tune-{run.id}"
        folder = work / run.model
        try:
            for entry in source.manifest:
                dest = folder / entry.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                if entry.path == CONFIG_FILE:
                    write_atomically(dest, render_config(config, best.config), mode=0o644)
                else:
                    link_or_copy(self.blobs.verify(entry.sha256, entry.size), dest)
            archive = pack_directory(folder, work / "model.tar.gz")
            labels = Provenance(
                tuned_from=source.number, run_id=run.id, best=best, baseline=run.baseline(), spec=run.spec
            ).labels()
            metadata = VersionMetadata(
                labels=labels, metrics=dict(source.metadata.metrics), api_version=source.metadata.api_version
            )
            return self.registry.push(model=run.model, archive=archive, metadata=metadata, actor=run.actor)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _audit_finish(self, run: TuningRun) -> None:
        with self._lock:
            state = run.as_dict()
        baseline, best = run.baseline(), run.best
        try:
            audit.record(
                self.db,
                actor=run.actor,
                action="tune.finish",
                target=f"{run.model}/{run.version}",
                outcome=run.state.value,
                details={
                    "run": run.id,
                    "pool": run.pool,
                    "objective_p99_ms": run.spec.p99_ms,
                    "measured": len(state["trials"]),
                    "best": None if best is None else state["best"],
                    "default": None if baseline is None else baseline.as_dict(run.spec.p99_ms),
                    "new_version": run.new_version,
                    "error": run.error,
                },
            )
        except ControlPlaneError as exc:
            log.warning("auditing the end of tuning run %s: %s", run.id, exc.message)


def _unloading(pool: Pool, name: str) -> bool:
    return any(s.state == "UNLOADING" for s in pool.triton.model_status(name))


def _summary(trial: Trial) -> str:
    if trial.failure is not None:
        return f"not loaded: {trial.failure}"
    m = trial.measurement
    if m is None:
        return "not measured"
    p99 = "-" if m.p99_ms is None else f"{m.p99_ms:.2f} ms"
    return f"{m.throughput_rps:.0f} req/s, p99 {p99}, {m.errors} errors"
