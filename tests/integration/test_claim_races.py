"""Concurrent operations on one pool: the database admits exactly one, on SQLite and on PostgreSQL.

Deploys, rollouts and rollbacks are started by the real service and engine
against a real registry and real model folders; only Triton and the proxy
are stand-ins here, so that an operation can be held in flight (its load
waits at a gate the test opens) while the others are refused. Each race
starts its requests together on a barrier, then opens the gate and checks
that the one accepted operation finished and left no claim behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from triton_helpers import load_examples_module

from controlplane.artifacts.archive import ArchiveLimits, pack_directory
from controlplane.artifacts.blobs import BlobStore
from controlplane.domain.analysis import Gates, PoolSample
from controlplane.domain.models import VersionMetadata
from controlplane.domain.rollouts import RolloutSpec, RolloutState, Strategy
from controlplane.errors import Conflict
from controlplane.pools import Pool
from controlplane.registry import claim_store, rollout_store
from controlplane.registry.db import Database, make_engine
from controlplane.rollout.engine import EngineSettings, RolloutEngine
from controlplane.service import ControlPlane
from controlplane.staging.repository import PoolRepository

pytestmark = pytest.mark.integration

examples = load_examples_module()


class Gate:
    """Where loads wait while the test holds them; it knows which threads are waiting."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self.waiting: set[int] = set()

    def open(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._open.clear()

    def pass_through(self) -> None:
        with self._lock:
            self.waiting.add(threading.get_ident())
        try:
            assert self._open.wait(30), "the test never opened the gate"
        finally:
            with self._lock:
                self.waiting.discard(threading.get_ident())


class GatedTriton:
    """Stands in for one Triton: every load waits until the test opens the gate."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def load(self, model: str, version: int, *, timeout: float) -> None:
        self.gate.pass_through()

    def smoke_test(self, model: str, version: int, signature: object) -> None:
        return None

    def unload(self, model: str) -> None:
        return None

    def is_model_ready(self, model: str, version: int | None = None) -> bool:
        return True


class FakeRouter:
    def __init__(self) -> None:
        self.current: dict[str, int] = {"blue": 100, "green": 0}

    def set_weights(self, weights: Mapping[str, int]) -> None:
        self.current.update(weights)

    def weights(self) -> dict[str, int]:
        return dict(self.current)

    def wait_idle(self, pool: str, timeout: float) -> None:
        return None

    def pool_up(self, pool: str) -> bool:
        return True


def _no_traffic(pool: str, models: object) -> PoolSample:
    return PoolSample(0.0, 0, 0, 0, 0, None)


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("claim-races")
    return {
        seed: pack_directory(examples.build_mlp(root / f"v{seed}", seed=seed), root / f"v{seed}.tar.gz")
        for seed in (1, 2)
    }


@dataclass
class ControlPlaneProcess:
    """What one ``controlplane up`` holds: its own database connection pool, service and engine."""

    cp: ControlPlane
    engine: RolloutEngine

    def attempt(self, kind: str) -> Callable[[], str]:
        """A request of ``kind``; it answers "accepted <what>" or "refused <code>"."""

        def run() -> str:
            try:
                if kind == "deploy":
                    self.cp.deploy("mlp", 2, actor="race")
                    return "accepted deploy"
                if kind == "rollback":
                    return f"accepted rollout {self.engine.rollback_model('mlp', actor='race').id}"
                rollout = self.engine.start(_spec(Strategy(kind)), actor="race")
                return f"accepted rollout {rollout.id}"
            except Conflict as exc:
                return f"refused {exc.code}"

        return run


def _spec(strategy: Strategy) -> RolloutSpec:
    steps = (100,) if strategy is Strategy.INPLACE else (50, 100)
    return RolloutSpec("mlp", 2, strategy, steps, 0.0, 0.0, Gates()).validate()


def _process(db: Database, root: Path, gate: Gate) -> ControlPlaneProcess:
    blobs = BlobStore(root / "artifacts")
    pools = {
        name: Pool(name=name, repository=PoolRepository(root / "pools" / name), triton=GatedTriton(gate))
        for name in ("blue", "green")
    }
    cp = ControlPlane(
        db=db,
        blobs=blobs,
        uploads_dir=root / "uploads",
        pools=pools,
        default_pool="blue",
        limits=ArchiveLimits(),
    )
    engine = RolloutEngine(
        db=db,
        pools=pools,
        blobs=blobs,
        router=FakeRouter(),  # type: ignore[arg-type]
        sampler=_no_traffic,
        settings=EngineSettings(poll_interval=0.01, drain_timeout=0.1, standby_warm=False),
        policy_check=cp.check_deployable,
    )
    return ControlPlaneProcess(cp, engine)


@pytest.fixture
def gate() -> Iterator[Gate]:
    held = Gate()
    yield held
    held.open()


@pytest.fixture
def plane(
    database: Database, tmp_path: Path, archives: dict[int, Path], gate: Gate
) -> Iterator[ControlPlaneProcess]:
    """mlp v1 serving on blue (all traffic), v2 pushed; loads pass until the test closes the gate."""
    process = _process(database, tmp_path, gate)
    (tmp_path / "uploads").mkdir()
    with database.transaction() as session:
        rollout_store.ensure_pools(session, ("blue", "green"))
    for seed in (1, 2):
        process.cp.push(model="mlp", archive=archives[seed], metadata=VersionMetadata())
    process.cp.deploy("mlp", 1)
    yield process
    gate.open()
    process.engine.stop()


def _race(attempts: list[Callable[[], str]], gate: Gate) -> list[str]:
    """Run the attempts at the same instant while loads are held; return their answers in order.

    The gate opens once every attempt has answered, or (an accepted deploy)
    waits at the gate itself: each one has then met the claims.
    """
    gate.close()
    barrier = threading.Barrier(len(attempts))
    threads: dict[int, int] = {}

    def go(index: int) -> str:
        threads[index] = threading.get_ident()
        barrier.wait()
        return attempts[index]()

    with ThreadPoolExecutor(max_workers=len(attempts)) as executor:
        futures = [executor.submit(go, i) for i in range(len(attempts))]

        def settled() -> bool:
            return all(f.done() or threads.get(i) in gate.waiting for i, f in enumerate(futures))

        deadline = time.monotonic() + 10.0
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert settled(), "every request answers, or holds its pool, while the loads are held"
        gate.open()
        return [f.result(timeout=30) for f in futures]


def _finish(process: ControlPlaneProcess, answers: list[str]) -> None:
    """Wait for accepted rollouts to end; then no pool may still be claimed."""
    for answer in answers:
        if answer.startswith("accepted rollout"):
            rollout = process.engine.wait(int(answer.split()[-1]), 30)
            assert rollout.state is RolloutState.SUCCEEDED, rollout.reason
    with process.cp.db.transaction() as session:
        assert claim_store.list_claims(session) == []


def test_an_inplace_and_a_bluegreen_rollout_on_the_live_pool_are_not_both_accepted(
    plane: ControlPlaneProcess, gate: Gate
) -> None:
    answers = _race([plane.attempt("inplace"), plane.attempt("bluegreen")], gate)

    assert sum(a.startswith("accepted") for a in answers) == 1, answers
    assert [a for a in answers if a.startswith("refused")] == ["refused pool_busy"], answers
    _finish(plane, answers)


def test_a_deploy_and_a_rollout_at_once_accept_exactly_one(plane: ControlPlaneProcess, gate: Gate) -> None:
    answers = _race([plane.attempt("deploy"), plane.attempt("canary")], gate)

    assert sum(a.startswith("accepted") for a in answers) == 1, answers
    assert [a for a in answers if a.startswith("refused")] == ["refused pool_busy"], answers
    _finish(plane, answers)


def test_four_requests_of_mixed_kinds_on_one_pool_accept_exactly_one(
    plane: ControlPlaneProcess, gate: Gate
) -> None:
    kinds = ["deploy", "inplace", "bluegreen", "canary"]

    answers = _race([plane.attempt(kind) for kind in kinds], gate)

    assert sum(a.startswith("accepted") for a in answers) == 1, dict(zip(kinds, answers, strict=True))
    assert answers.count("refused pool_busy") == 3, dict(zip(kinds, answers, strict=True))
    _finish(plane, answers)


def test_a_refusal_names_the_operation_that_holds_the_pool(plane: ControlPlaneProcess, gate: Gate) -> None:
    gate.close()
    running = plane.engine.start(_spec(Strategy.BLUEGREEN), actor="first")
    with pytest.raises(Conflict) as refused:
        plane.cp.deploy("mlp", 2, actor="second")
    gate.open()

    assert refused.value.code == "pool_busy"
    assert refused.value.details["pool"] == "blue"
    assert refused.value.details["holder"]["kind"] == "rollout"
    assert refused.value.details["holder"]["id"] == str(running.id)
    assert f"rollout {running.id}" in refused.value.message
    _finish(plane, [f"accepted rollout {running.id}"])


def test_a_rollback_while_a_deploy_runs_is_refused(plane: ControlPlaneProcess, gate: Gate) -> None:
    first = plane.engine.wait(plane.engine.start(_spec(Strategy.BLUEGREEN), actor="t").id, 30)
    assert first.state is RolloutState.SUCCEEDED, first.reason

    answers = _race([plane.attempt("deploy"), plane.attempt("rollback")], gate)

    assert sum(a.startswith("accepted") for a in answers) == 1, answers
    assert "refused pool_busy" in answers
    _finish(plane, answers)


def _second_connection(db: Database) -> Database:
    """Another Database on the same PostgreSQL schema: what a second control-plane process holds."""
    with db.engine.connect() as conn:
        schema = conn.execute(text("SHOW search_path")).scalar_one()
    return Database(db.url, engine=make_engine(db.url, connect_args={"options": f"-csearch_path={schema}"}))


def test_two_control_plane_processes_on_one_postgresql_accept_exactly_one_operation_per_pool(
    plane: ControlPlaneProcess, gate: Gate, tmp_path: Path
) -> None:
    if plane.cp.db.engine.dialect.name != "postgresql":
        pytest.skip("two processes share a registry only on PostgreSQL")
    other_db = _second_connection(plane.cp.db)
    other = _process(other_db, tmp_path, gate)
    try:
        kinds = [(plane, "bluegreen"), (other, "inplace"), (plane, "deploy"), (other, "deploy")]

        answers = _race([process.attempt(kind) for process, kind in kinds], gate)

        assert sum(a.startswith("accepted") for a in answers) == 1, answers
        assert answers.count("refused pool_busy") == 3, answers
        winner = next(p for (p, _k), a in zip(kinds, answers, strict=True) if a.startswith("accepted"))
        assert other.engine.resume() == [] or winner is other, "a live rollout is not taken over"
        _finish(winner, answers)
    finally:
        other.engine.stop()
        other_db.dispose()
