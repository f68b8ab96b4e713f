"""In-memory stand-ins for Triton, the traffic router, the pool sampler and the clock.

They implement the surface the rollout engine, the reconciler and the
service layer call, with Triton's observable behaviour where the code
depends on it: a load reads the pool's live folder (no folder, no model;
the configuration Triton runs is the staged ``config.pbtxt``), a failed
load leaves the version UNAVAILABLE with a reason, an unload keeps the model
in the repository index as UNAVAILABLE, a configuration override lasts until
the next load. Faults are injected per call (hooks run before an operation
acts; one that raises ``SystemExit`` ends a rollout worker there without any
cleanup, as a killed process would) and every call is recorded for the
assertions. ``build_world`` wires them with a real SQLite registry, blob
store and pool folders into the services and rollout engines.

Thread safety: the engine's worker threads and the test thread call these
at the same time; each fake guards its state with one lock.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format
from registry_template import migrated_sqlite
from tritonclient.utils import triton_to_np_dtype

from controlplane.artifacts.archive import ArchiveLimits, pack_directory
from controlplane.artifacts.blobs import BlobStore
from controlplane.artifacts.model_config import parse_model_config
from controlplane.claims import PoolClaims
from controlplane.domain.analysis import Gates, PoolSample
from controlplane.domain.models import Deployment, ModelSignature, VersionMetadata
from controlplane.domain.rollouts import RolloutSpec, Strategy
from controlplane.errors import ModelLoadFailed, ProxyError, SmokeTestFailed, TritonUnavailable
from controlplane.pools import Pool
from controlplane.registry import rollout_store
from controlplane.registry.db import Database
from controlplane.rollout.engine import EngineSettings, RolloutEngine
from controlplane.rollout.reconciler import Reconciler
from controlplane.services.deploys import Deployer
from controlplane.services.registry import Registry
from controlplane.services.repair import PoolRepair
from controlplane.services.signing import Signing
from controlplane.staging.repository import PoolRepository
from controlplane.triton.client import ModelStatus
from controlplane.triton.wire import Zeros

Hook = Callable[..., None]
InferAnswer = Callable[[str, int, dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]
"""(model, version, inputs, outputs) -> the outputs a fake inference returns."""


class FakeClock:
    """A monotonic clock that moves only when something sleeps on it (or a test advances it).

    ``at(t, fn)`` runs ``fn`` once, in the sleeping thread, when the clock
    reaches ``t``: how a test acts "in the middle of step 2" without racing
    the worker.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._alarms: list[tuple[float, Callable[[], None]]] = []
        self.slept = 0.0

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run ``action`` once the clock has reached ``when``."""
        with self._lock:
            self._alarms.append((when, action))

    def sleep(self, seconds: float) -> None:
        """Advance by ``seconds`` at once and fire the alarms that became due."""
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += max(seconds, 0.0)
            self.slept += max(seconds, 0.0)
            due = [a for a in self._alarms if a[0] <= self._now]
            self._alarms = [a for a in self._alarms if a[0] > self._now]
        for _when, action in due:
            action()


class FakeTriton:
    """One Triton in explicit model-control mode over a ``PoolRepository``.

    Injected faults: ``load_failures[(model, version)] = reason`` (Triton
    reports the version UNAVAILABLE), ``smoke_failures`` (the inference
    fails), ``overrides[model]`` (a configuration Triton runs on top of the
    staged one, as after a load with an override), ``up = False`` (the
    server does not answer), ``before[op]`` (a hook called with the
    arguments before ``op`` acts; raise from it to fail or crash there).
    """

    def __init__(self, repository: PoolRepository) -> None:
        self.repository = repository
        self.up = True
        self.load_failures: dict[tuple[str, int], str] = {}
        self.smoke_failures: set[tuple[str, int]] = set()
        self.answer: InferAnswer | None = None
        """Computes what ``infer`` returns (default: zeros, one row per input row)."""
        self.overrides: dict[str, dict[str, Any]] = {}
        self.before: dict[str, Hook] = {}
        self.calls: list[tuple[str, str, int | None]] = []
        self._states: dict[str, dict[str, tuple[str, str]]] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()

    # -- helpers for tests -----------------------------------------------------------------

    def ready_models(self) -> dict[str, int]:
        """Model -> the version that is READY (the highest, if several are)."""
        with self._lock:
            found: dict[str, int] = {}
            for name, versions in self._states.items():
                ready = [int(v) for v, (state, _r) in versions.items() if state == "READY"]
                if ready:
                    found[name] = max(ready)
            return found

    def force_loaded(self, model: str, version: int) -> None:
        """Mark ``model`` READY without any folder: what a load by someone else leaves behind."""
        with self._lock:
            self._states[model] = {str(version): ("READY", "")}
            self._configs[model] = {"name": model}

    # -- the TritonClient surface ----------------------------------------------------------

    def _enter(self, op: str, model: str = "", version: int | None = None) -> None:
        hook = self.before.get(op)
        if hook is not None:
            hook(model, version)
        with self._lock:
            self.calls.append((op, model, version))
        if not self.up:
            raise TritonUnavailable(f"Triton did not answer {op} {model!r}")

    def is_ready(self) -> bool:
        return self.up

    def wait_server_ready(self, timeout: float, *, sleep: Callable[[float], None] = lambda _s: None) -> None:
        if not self.up:
            raise TritonUnavailable("Triton did not become ready")

    def restart(self) -> None:
        """What a restart with ``--load-model=*`` leaves: every folder of the repository loaded afresh."""
        with self._lock:
            self.calls.append(("restart", "", None))
            self._states.clear()
            self._configs.clear()
            self.overrides.clear()
        for name in self.repository.live_models():
            numbers = sorted(int(p.name) for p in (self.repository.live / name).iterdir() if p.name.isdigit())
            if numbers and (name, numbers[-1]) not in self.load_failures:
                self.load(name, numbers[-1], timeout=1.0)

    def repository_index(self) -> list[ModelStatus]:
        self._enter("repository_index")
        with self._lock:
            rows = [
                ModelStatus(name=name, version=v, state=state, reason=reason)
                for name, versions in sorted(self._states.items())
                for v, (state, reason) in sorted(versions.items())
            ]
            # Folders Triton has never loaded are listed without version or state.
            rows += [
                ModelStatus(name=name, version="", state="", reason="")
                for name in self.repository.live_models()
                if name not in self._states
            ]
            return rows

    def ready_anywhere(self) -> set[str]:
        return set(self.ready_models())

    def model_status(self, model: str) -> list[ModelStatus]:
        return [s for s in self.repository_index() if s.name == model]

    def is_model_ready(self, model: str, version: int | None = None) -> bool:
        if not self.up:
            return False
        with self._lock:
            versions = self._states.get(model, {})
            if version is None:
                return any(state == "READY" for state, _r in versions.values())
            return versions.get(str(version), ("", ""))[0] == "READY"

    def load(self, model: str, version: int, *, timeout: float) -> None:
        self._enter("load", model, version)
        folder = self.repository.live / model
        with self._lock:
            if not (folder / "config.pbtxt").is_file():
                raise ModelLoadFailed(f"Triton failed to load {model!r}: no model folder in the repository")
            reason = self.load_failures.get((model, version))
            if reason is not None:
                self._states[model] = {str(version): ("UNAVAILABLE", reason)}
                raise ModelLoadFailed(f"Triton failed to load {model!r} version {version}: {reason}")
            numbers = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
            # Triton's default version policy: the latest version of the folder serves.
            self._states[model] = {str(numbers[-1]): ("READY", "")} if numbers else {}
            config = parse_model_config((folder / "config.pbtxt").read_text(encoding="utf-8"))
            self._configs[model] = json_format.MessageToDict(config, preserving_proto_field_name=True)
            self.overrides.pop(model, None)
        self.wait_model_ready(model, version, timeout=timeout)

    def wait_model_ready(self, model: str, version: int, *, timeout: float) -> None:
        with self._lock:
            state, reason = self._states.get(model, {}).get(str(version), ("", ""))
        if state != "READY":
            raise ModelLoadFailed(f"{model!r} version {version} is not READY: {reason or state or 'absent'}")

    def unload(self, model: str) -> None:
        self._enter("unload", model)
        with self._lock:
            versions = self._states.get(model)
            if versions:
                self._states[model] = {v: ("UNAVAILABLE", "unloaded") for v in versions}
            self._configs.pop(model, None)

    def smoke_test(self, model: str, version: int, signature: ModelSignature) -> None:
        self._enter("smoke_test", model, version)
        if not self.is_model_ready(model, version):
            raise SmokeTestFailed(f"smoke inference on {model!r} version {version}: not ready")
        if (model, version) in self.smoke_failures:
            raise SmokeTestFailed(f"smoke inference on {model!r} version {version} returned no 'OUTPUT0'")

    def infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray | Zeros],
        outputs: Sequence[str],
        *,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        self._enter("infer", model, version)
        if not self.is_model_ready(model, version):
            raise SmokeTestFailed(f"inference on {model!r} version {version}: not ready")
        # What Triton receives for described zeros (a warm-up's) is arrays of zeros.
        arrays = {
            name: np.zeros(v.shape, dtype=triton_to_np_dtype(v.datatype)) if isinstance(v, Zeros) else v
            for name, v in inputs.items()
        }
        if self.answer is not None:
            return self.answer(model, version, arrays, list(outputs))
        rows = next(iter(arrays.values())).shape[0] if arrays else 1
        return {name: np.zeros((rows, 1), dtype=np.float32) for name in outputs}

    def model_config(self, model: str) -> dict[str, Any]:
        self._enter("model_config", model)
        with self._lock:
            if model not in self._configs:
                raise ModelLoadFailed(f"config of {model!r}: the model is not loaded")
            return {**self._configs[model], **self.overrides.get(model, {})}


class FakeRouter:
    """A TrafficRouter that applies weights at once and records every change.

    ``history`` holds ``(clock time, weights)`` per ``set_weights``;
    ``down`` names pools whose health check fails; ``before_set_weights``
    is called with the weights before they apply (raise to fail or crash).
    """

    def __init__(self, weights: Mapping[str, int], *, clock: Callable[[], float] = lambda: 0.0) -> None:
        self._weights = dict(weights)
        self.clock = clock
        self.history: list[tuple[float, dict[str, int]]] = []
        self.drained: list[str] = []
        self.down: set[str] = set()
        self.busy: set[str] = set()
        self.before_set_weights: Callable[[Mapping[str, int]], None] | None = None
        self._lock = threading.Lock()

    def set_weights(self, weights: Mapping[str, int]) -> None:
        if self.before_set_weights is not None:
            self.before_set_weights(weights)
        with self._lock:
            self._weights.update(weights)
            self.history.append((self.clock(), dict(self._weights)))

    def weights(self) -> dict[str, int]:
        with self._lock:
            return dict(self._weights)

    def wait_idle(self, pool: str, timeout: float) -> None:
        with self._lock:
            self.drained.append(pool)
        if pool in self.busy:
            raise ProxyError(f"pool {pool!r} still has requests in flight after {timeout:.0f} s")

    def pool_up(self, pool: str) -> bool:
        return pool not in self.down

    def timeline(self, pool: str) -> list[tuple[float, int]]:
        """``(clock time, weight)`` each time ``pool``'s weight changed."""
        seen: list[tuple[float, int]] = []
        for at, weights in self.history:
            if not seen or seen[-1][1] != weights[pool]:
                seen.append((at, weights[pool]))
        return seen

    def shares(self, pool: str) -> list[int]:
        """The successive weights ``pool`` was given, repeats collapsed."""
        return [weight for _at, weight in self.timeline(pool)]


@dataclass
class Traffic:
    """Cumulative counters of one pool as the fake sampler reports them."""

    requests: int = 0
    errors: int = 0


class FakeSampler:
    """The engine's ``Sampler``: each reading adds ``requests_per_sample`` requests to the pool.

    ``error_rate[pool]`` is the share of those that failed; ``p99_ms[pool]``
    the latency Triton would report.
    """

    def __init__(self, clock: Callable[[], float], *, requests_per_sample: int = 100) -> None:
        self.clock = clock
        self.requests_per_sample = requests_per_sample
        self.error_rate: dict[str, float] = {}
        self.p99_ms: dict[str, float] = {}
        self.readings: list[tuple[str, tuple[str, ...]]] = []
        self._traffic: dict[str, Traffic] = {}
        self._lock = threading.Lock()

    def __call__(self, pool: str, models: Collection[str]) -> PoolSample:
        with self._lock:
            self.readings.append((pool, tuple(sorted(models))))
            traffic = self._traffic.setdefault(pool, Traffic())
            traffic.requests += self.requests_per_sample
            traffic.errors += round(self.requests_per_sample * self.error_rate.get(pool, 0.0))
            p99 = self.p99_ms.get(pool)
            return PoolSample(
                at=self.clock(),
                proxy_requests=traffic.requests,
                proxy_errors=traffic.errors,
                triton_success=traffic.requests - traffic.errors,
                triton_failure=0,
                p99_us=None if p99 is None else p99 * 1000.0,
            )


CONFIG = """name: "{name}"
max_batch_size: 8
input {{ name: "INPUT0" data_type: TYPE_FP32 dims: 4 }}
output {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: 2 }}
backend: "onnxruntime"
"""


def onnx_model(weights: bytes) -> bytes:
    """An ONNX graph with the interface of ``CONFIG`` (INPUT0[4] -> OUTPUT0[2]) that carries ``weights``.

    Push checks the graph against the config; ``weights`` (in the doc string) tells versions apart.
    """
    from onnx import TensorProto, helper, numpy_helper

    matrix = numpy_helper.from_array(np.zeros((4, 2), dtype=np.float32), name="W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["INPUT0", "W"], ["OUTPUT0"])],
        "fake",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 2])],
        [matrix],
    )
    model = helper.make_model(graph, doc_string=weights.decode("utf-8", "backslashreplace"))
    return model.SerializeToString(deterministic=True)


def model_folder(root: Path, name: str, weights: bytes) -> Path:
    """A model folder as a user pushes it: config.pbtxt and a ``1/model.onnx`` that carries ``weights``."""
    folder = root / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(CONFIG.format(name=name), encoding="utf-8")
    (folder / "1" / "model.onnx").write_bytes(onnx_model(weights))
    return folder


@dataclass
class World:
    """A control plane over fakes: SQLite registry, real blob store and pool folders, fake Triton/router."""

    root: Path
    db: Database
    clock: FakeClock
    router: FakeRouter
    sampler: FakeSampler
    pools: dict[str, Pool]
    blobs: BlobStore
    signing: Signing
    registry: Registry
    repair: PoolRepair
    engines: list[RolloutEngine] = field(default_factory=list)
    _deploying: RolloutEngine | None = None

    def triton(self, pool: str) -> FakeTriton:
        triton = self.pools[pool].triton
        assert isinstance(triton, FakeTriton)
        return triton

    def engine(self, cls: type[RolloutEngine] = RolloutEngine, **settings: Any) -> RolloutEngine:
        """A rollout engine on this world; several of them stand for successive control-plane processes."""
        engine = cls(
            db=self.db,
            pools=self.pools,
            blobs=self.blobs,
            router=self.router,
            sampler=self.sampler,
            settings=EngineSettings(
                load_timeout=5.0, drain_timeout=1.0, pool_up_timeout=5.0, poll_interval=1.0, **settings
            ),
            clock=self.clock,
            sleep=self.clock.sleep,
            policy_check=self.signing.check_deployable,
        )
        self.engines.append(engine)
        return engine

    def reconciler(self, engine: RolloutEngine) -> Reconciler:
        return Reconciler(repair=self.repair, engine=engine, router=self.router)

    def deploy(self, model: str, number: int, *, pool: str | None = None, actor: str = "tests") -> Deployment:
        """Deploy as the API does (an inplace rollout, answered when it has ended)."""
        if self._deploying is None:
            self._deploying = self.engine()
        return Deployer(db=self.db, engine=self._deploying, answer_within=60.0).deploy(
            model, number, pool=pool, actor=actor
        )

    def push(self, name: str, weights: bytes) -> int:
        """Push a version of ``name`` whose model file holds ``weights``; return its number."""
        source = self.root / "sources" / f"{name}-{hashlib.sha256(weights).hexdigest()[:16]}"
        folder = model_folder(source, name, weights)
        archive = pack_directory(folder, folder.parent / "model.tar.gz")
        version, _created = self.registry.push(model=name, archive=archive, metadata=VersionMetadata())
        return version.number

    def releases(self) -> dict[str, dict[str, int]]:
        """What the registry says each pool should serve."""
        with self.db.transaction() as session:
            return {p: rollout_store.pool_release(session, p) for p in self.pools}

    def desired_weights(self) -> dict[str, int]:
        with self.db.transaction() as session:
            return rollout_store.pool_weights(session)

    def close(self) -> None:
        for engine in self.engines:
            engine.stop(timeout=5.0)
        self.repair.claims.close()
        self.db.dispose()


def build_world(root: Path, pool_names: tuple[str, ...] = ("blue", "green")) -> World:
    """A migrated SQLite registry with pool rows, and the pools, control plane and fakes around it.

    The first pool has all traffic (as on a first start); nothing is pushed yet.
    """
    db = migrated_sqlite(root / "registry.db")
    with db.transaction() as session:
        rollout_store.ensure_pools(session, pool_names)
        weights = rollout_store.pool_weights(session)
    clock = FakeClock()
    pools: dict[str, Pool] = {}
    for name in pool_names:
        repository = PoolRepository(root / "pools" / name)
        pools[name] = Pool(name=name, repository=repository, triton=FakeTriton(repository))  # type: ignore[arg-type]
    uploads = root / "uploads"
    uploads.mkdir()
    blobs = BlobStore(root / "artifacts")
    signing = Signing(db=db, blobs=blobs, uploads_dir=uploads)
    return World(
        root=root,
        db=db,
        clock=clock,
        router=FakeRouter(weights, clock=clock),
        sampler=FakeSampler(clock),
        pools=pools,
        blobs=blobs,
        signing=signing,
        registry=Registry(db=db, blobs=blobs, uploads_dir=uploads, signing=signing, limits=ArchiveLimits()),
        repair=PoolRepair(db=db, blobs=blobs, pools=pools, claims=PoolClaims(db), load_timeout=5.0),
    )


def serving_world(root: Path) -> World:
    """``mlp`` versions 1 and 2 pushed; version 1 serves on blue and blue's standby green holds it warm."""
    world = build_world(root)
    world.push("mlp", b"weights of version 1")
    world.push("mlp", b"weights of version 2")
    world.deploy("mlp", 1)
    world.reconciler(world.engine()).run_once()
    assert world.releases() == {"blue": {"mlp": 1}, "green": {"mlp": 1}}
    assert world.triton("green").ready_models() == {"mlp": 1}
    return world


def spec(
    version: int,
    *,
    strategy: Strategy = Strategy.CANARY,
    steps: tuple[int, ...] = (10, 50, 100),
    step_seconds: float = 30.0,
    bake_seconds: float = 60.0,
    gates: Gates | None = None,
    model: str = "mlp",
) -> RolloutSpec:
    """A validated rollout spec with step and bake times long enough to act in (on the fake clock)."""
    return RolloutSpec(
        model=model,
        version=version,
        strategy=strategy,
        steps=steps,
        step_seconds=step_seconds,
        bake_seconds=bake_seconds,
        gates=gates or Gates(max_error_rate=0.01, min_requests=10),
    ).validate()
