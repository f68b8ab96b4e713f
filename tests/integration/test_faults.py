"""Rollouts that lose their database, a Triton or the proxy's admin socket for a while, and still end well.

Each test runs the in-process stack (two real Triton pools behind a real
HAProxy), client load through the proxy and the reconciler thread, injects
a fault mid-rollout, lifts it, and checks that no request failed, the
rollout ended as if nothing had happened, the reconciler thread lived
through it, and the registry, HAProxy and both Tritons agree with no active
rollout left. The tests on SQLite share one stack, each rolling out the
version that does not serve yet; the PostgreSQL test has a database of its
own to take away.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from rollout_load import FIXED_INPUT, Load, rollout_spec
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from triton_helpers import load_examples_module

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.models import VersionMetadata, VersionState
from controlplane.domain.rollouts import Rollout, RolloutState, Strategy
from controlplane.registry import rollout_store, store
from controlplane.runtime.local import LocalStack
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import Services, local_services
from controlplane.settings import Settings

pytestmark = pytest.mark.integration

examples = load_examples_module()


@dataclass
class Running:
    """A stack with mlp v1 and v2 pushed, one serving (the other pool warm), and the reconciler running."""

    stack: LocalStack
    services: Services
    state_dir: Path
    grpc_url: str
    outputs: dict[str, np.ndarray]
    reconciler: threading.Thread

    def load(self) -> Load:
        """Client threads on the proxy that tell v1's answers from v2's."""
        return Load(self.grpc_url, self.outputs, threads=4)

    def next_version(self) -> int:
        """The version a rollout moves to: whichever of v1 and v2 does not serve now."""
        with self.services.db.transaction() as session:
            serving = store.get_model(session, "mlp").deployments[0].version
        return 2 if serving == 1 else 1


@contextmanager
def _running_stack(root: Path, database_url: str | None = None) -> Iterator[Running]:
    """The stack with mlp v1 serving on blue (green warm), v2 pushed, and the reconciler running."""
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(
        state_dir=root / "state",
        api_port=api_port,
        grpc_port=grpc_port,
        http_port=http_port,
        database_url=database_url,
    )
    with local_services(settings, pool_names=("blue", "green")) as (stack, services):
        outputs = {}
        for version in (1, 2):
            folder = examples.build_mlp(root / f"v{version}", seed=version)
            outputs[f"v{version}"] = examples.reference_outputs(folder, {"INPUT0": FIXED_INPUT})["OUTPUT0"]
            archive = pack_directory(folder, root / f"v{version}.tar.gz")
            services.registry.push(model="mlp", archive=archive, metadata=VersionMetadata())
        services.deployer.deploy("mlp", 1)
        services.reconciler.run_once()
        stop = threading.Event()
        reconciler = threading.Thread(
            target=services.reconciler.run_forever, args=(stop,), kwargs={"interval": 1.0}, daemon=True
        )
        reconciler.start()
        try:
            yield Running(stack, services, settings.state_dir, f"127.0.0.1:{grpc_port}", outputs, reconciler)
        finally:
            stop.set()
            services.reconciler.wake()
            reconciler.join(10)


@pytest.fixture(scope="module")
def sqlite_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One stack on SQLite for every test here that needs no database of its own."""
    with _running_stack(tmp_path_factory.mktemp("faults")) as running:
        yield running


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _assert_everything_agrees(services: Services, version: int) -> None:
    """Registry, HAProxy and both Tritons say the same, and no rollout is left active."""
    with services.db.transaction() as session:
        assert rollout_store.list_rollouts(session, active_only=True) == []
        weights = rollout_store.pool_weights(session)
        releases = {p: rollout_store.pool_release(session, p) for p in weights}
        state = store.get_version(session, "mlp", version).state
    assert services.router.weights() == weights
    for pool, release in releases.items():
        assert release == {"mlp": version}
        triton = services.pools[pool].triton
        assert triton.is_model_ready("mlp", version), f"{pool} serves {release}"
    assert state is VersionState.SERVING


def _assert_the_worker_waited(caplog: pytest.LogCaptureFixture) -> None:
    assert any("waits:" in r.getMessage() for r in caplog.records), "the fault reached the rollout worker"


def _first_transition_after(rollout: Rollout, moment: datetime) -> float:
    later = [e.at for e in rollout.events if e.at >= moment]
    assert later, "the rollout recorded nothing after the fault was lifted"
    return (min(later) - moment).total_seconds()


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[tuple[str, Callable[[bool], None]]]:
    """A database of its own for the control plane, and a switch that refuses and kills its connections."""
    name = f"cp_fault_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def reachable(allow: bool) -> None:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if allow else "false"}'))
            if not allow:
                conn.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                    {"name": name},
                )

    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url, reachable
    finally:
        reachable(True)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_canary_survives_postgresql_refusing_the_control_plane_and_resumes_when_it_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, postgres_database: tuple[str, Callable[[bool], None]]
) -> None:
    caplog.set_level(logging.INFO, logger="controlplane.rollout.engine")
    url, reachable = postgres_database
    with _running_stack(tmp_path, url) as running:
        services = running.services
        engine = services.engine
        with running.load() as load:
            rollout = engine.start(
                rollout_spec(2, Strategy.CANARY, (25, 50, 100), step_seconds=2.0), actor="test"
            )
            _wait_for(lambda: engine.get(rollout.id).state is RolloutState.SHIFTING, 60, "step 1")
            reachable(False)
            time.sleep(6)
            reachable(True)
            returned = datetime.now(UTC)
            done = engine.wait(rollout.id, 60)
            time.sleep(0.5)
        assert done.state is RolloutState.SUCCEEDED, done.reason
        assert load.failures == []
        assert len(load.answers) > 100
        resumed_after = _first_transition_after(done, returned)
        print(f"postgresql: database back -> next recorded transition in {resumed_after:.2f} s")
        assert resumed_after < 10
        _assert_the_worker_waited(caplog)
        _assert_everything_agrees(services, 2)
        assert running.reconciler.is_alive(), "the reconciler thread survived the fault"


def _immutable(paths: list[Path], on: bool) -> None:
    subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)], check=True)


def test_a_rollout_survives_a_sqlite_registry_that_cannot_be_written_for_a_while(
    sqlite_stack: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controlplane.rollout.engine")
    services = sqlite_stack.services
    engine = services.engine
    version = sqlite_stack.next_version()
    registry = sqlite_stack.state_dir / "registry.db"
    # Root ignores file modes; an immutable file (and directory, for the journal) refuses root too.
    # Not the -shm file: SQLite maps it into memory, and a mapping it cannot grow is a SIGBUS.
    locked = [p for p in registry.parent.glob("registry.db*") if not p.name.endswith("-shm")]
    locked.append(registry.parent)
    with sqlite_stack.load() as load:
        rollout = engine.start(
            rollout_spec(version, Strategy.CANARY, (25, 50, 100), step_seconds=2.0), actor="test"
        )
        _wait_for(lambda: engine.get(rollout.id).state is RolloutState.SHIFTING, 60, "step 1")
        _immutable(locked, True)
        try:
            time.sleep(4)
            assert engine.busy()
        finally:
            _immutable(locked, False)
        returned = datetime.now(UTC)
        done = engine.wait(rollout.id, 60)
        time.sleep(0.5)
    assert done.state is RolloutState.SUCCEEDED, done.reason
    assert load.failures == []
    resumed_after = _first_transition_after(done, returned)
    print(f"sqlite: file writable again -> next recorded transition in {resumed_after:.2f} s")
    _assert_the_worker_waited(caplog)
    _assert_everything_agrees(services, version)
    assert sqlite_stack.reconciler.is_alive(), "the reconciler thread survived the fault"


def test_a_rollout_waits_out_a_frozen_target_triton_and_a_missing_proxy_socket(
    sqlite_stack: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controlplane.rollout.engine")
    stack, services = sqlite_stack.stack, sqlite_stack.services
    engine = services.engine
    version = sqlite_stack.next_version()
    socket_path = services.router.runtime.socket_path  # type: ignore[attr-defined]
    with sqlite_stack.load() as load:
        rollout = engine.start(
            rollout_spec(version, Strategy.CANARY, (25, 50, 100), step_seconds=2.0), actor="test"
        )
        target = stack.pools[rollout.target_pool]
        pid = int(target.pid_file.read_text().split()[0])
        # The engine's calls into the frozen server give up after 1 s instead of the default 10 s.
        clients = services.pools[rollout.target_pool].triton.replicas  # type: ignore[attr-defined]
        default_timeouts = [client.timeout for client in clients]
        for client in clients:
            client.timeout = 1.0
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(4)  # longer than the Triton client's own timeout
            assert engine.get(rollout.id).state is RolloutState.STAGING
        finally:
            os.kill(pid, signal.SIGCONT)
            for client, timeout in zip(clients, default_timeouts, strict=True):
                client.timeout = timeout
        _wait_for(lambda: engine.get(rollout.id).state is RolloutState.SHIFTING, 60, "step 1")
        hidden = socket_path.with_name("admin.sock.hidden")
        socket_path.rename(hidden)
        try:
            time.sleep(3)
        finally:
            hidden.rename(socket_path)
        done = engine.wait(rollout.id, 60)
        time.sleep(0.5)
    assert done.state is RolloutState.SUCCEEDED, done.reason
    assert not [e for e in done.events if e.to_state in ("failed", "rolling_back")]
    assert load.failures == []
    _assert_the_worker_waited(caplog)
    _assert_everything_agrees(services, version)
    assert sqlite_stack.reconciler.is_alive(), "the reconciler thread survived the fault"
