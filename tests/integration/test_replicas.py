"""Pools of two real tritonservers each behind a real HAProxy: rollouts and a dead replica.

``local_services`` with ``pool_replicas=2`` (what ``CONTROLPLANE_POOL_REPLICAS=2``
gives ``controlplane up``): four tritonservers, blue and green, HAProxy with a
server and a standby per replica, the registry in SQLite. Clients are plain
tritonclient gRPC threads on the proxy port. The last test kills a control
plane of its own (a ``LocalStack`` in a subprocess) and starts the next one
on the same state directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from rollout_load import FIXED_INPUT, Load, rollout_spec
from triton_helpers import load_examples_module, wait_until

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.models import VersionMetadata
from controlplane.domain.rollouts import RolloutState, Strategy
from controlplane.registry import rollout_store
from controlplane.runtime.local import LocalStack
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import Services, local_services
from controlplane.settings import Settings
from controlplane.traffic.haproxy import GRPC_BACKEND
from controlplane.triton.client import TritonClient

pytestmark = pytest.mark.integration

examples = load_examples_module()


@dataclass
class Env:
    stack: LocalStack
    services: Services
    grpc_url: str
    outputs: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("replicas")
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(
        state_dir=root / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port, pool_replicas=2
    )
    with local_services(settings, pool_names=("blue", "green")) as (stack, services):
        assert isinstance(stack, LocalStack)
        outputs = {}
        for version in (1, 2):
            folder = examples.build_mlp(root / f"v{version}", seed=version)
            outputs[f"v{version}"] = examples.reference_outputs(folder, {"INPUT0": FIXED_INPUT})["OUTPUT0"]
            archive = pack_directory(folder, root / f"v{version}.tar.gz")
            services.registry.push(model="mlp", archive=archive, metadata=VersionMetadata())
        services.deployer.deploy("mlp", 1)
        # Green, the standby, takes the release too.
        services.reconciler.run_once()
        yield Env(stack, services, f"127.0.0.1:{grpc_port}", outputs)


def _replica_clients(env: Env, pool: str) -> list[TritonClient]:
    p = env.stack.pools[pool]
    return [TritonClient(url, timeout=2.0, headers=p.admin_headers) for url in p.http_urls]


def _ready_everywhere(env: Env, pool: str, version: int) -> list[bool]:
    clients = _replica_clients(env, pool)
    try:
        return [c.is_model_ready("mlp", version) for c in clients]
    finally:
        for c in clients:
            c.close()


def _assert_everything_agrees(env: Env, version: int) -> None:
    """Registry, HAProxy, both replicas of both pools and the health answer say the same."""
    services = env.services
    with services.db.transaction() as session:
        assert rollout_store.list_rollouts(session, active_only=True) == []
        weights = rollout_store.pool_weights(session)
        releases = {p: rollout_store.pool_release(session, p) for p in weights}
    assert services.router.weights() == weights
    for pool, release in releases.items():
        assert release == {"mlp": version}
        assert _ready_everywhere(env, pool, version) == [True, True], pool
        # One health check timing out on a busy machine (the load just stopped) fails the
        # last check without taking the server down; the next passing one makes it whole.
        wait_until(lambda p=pool: services.router.pool_up(p), timeout=5, what=f"{pool} up")
    health = services.health.model_health("mlp")
    assert health.ready, health.reason


def test_a_canary_over_two_replicas_per_pool_fails_no_request_and_gives_weight_only_when_both_are_ready(
    env: Env,
) -> None:
    engine = env.services.engine
    router = env.services.router
    checked: list[tuple[Mapping[str, int], dict[str, list[bool]]]] = []
    set_weights = router.set_weights

    def checking(weights: Mapping[str, int]) -> None:
        # What each replica of each pool that is about to get weight serves, asked directly.
        checked.append(
            (dict(weights), {p: _ready_everywhere(env, p, 2) for p, w in weights.items() if w > 0})
        )
        set_weights(weights)

    router.set_weights = checking  # type: ignore[method-assign]
    try:
        with Load(env.grpc_url, env.outputs, threads=4) as load:
            rollout = engine.start(
                rollout_spec(2, Strategy.CANARY, (50, 100), step_seconds=1.5), actor="test"
            )
            done = engine.wait(rollout.id, 90)
            time.sleep(0.5)
    finally:
        router.set_weights = set_weights  # type: ignore[method-assign]

    assert done.state is RolloutState.SUCCEEDED, done.reason
    assert load.failures == []
    assert len(load.answers) > 200
    target = done.target_pool
    given = [(weights, ready) for weights, ready in checked if weights.get(target, 0) > 0]
    assert given, f"the target never got weight: {checked}"
    for _weights, ready in given:
        assert ready[target] == [True, True], f"weight went to {target} before both replicas were ready"
    kinds = {k for _at, k in load.answers}
    assert kinds <= {"v1", "v2"} and "v2" in kinds
    measured = [e.measurements for e in done.events if e.measurements.get("passed") is True]
    assert measured and all(m["requests"] > 0 for m in measured)
    print(
        f"\ncanary over 2 replicas per pool: {len(load.answers)} requests, {len(load.failures)} failed;"
        f" analysis windows {[m['requests'] for m in measured]}"
    )
    _assert_everything_agrees(env, 2)


def test_a_killed_replica_comes_back_with_its_models_before_it_gets_traffic_while_its_sibling_serves(
    env: Env,
) -> None:
    services = env.services
    live = next(p for p, w in services.router.weights().items() if w > 0)
    pool = env.stack.pools[live]
    victim = pool.replicas[1]
    server = f"{live}_r2"
    assert victim.process is not None and victim.process.pid is not None
    old_pid = victim.process.pid
    runtime = env.stack.runtime

    def row() -> tuple[str, int]:
        (found,) = [
            (r.status, r.stot)
            for r in runtime.server_stats()
            if r.pxname == GRPC_BACKEND and r.svname == server
        ]
        return found

    snapshots: list[tuple[str, int, bool]] = []
    with Load(env.grpc_url, env.outputs, threads=4) as load:
        time.sleep(0.5)
        os.kill(old_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        deadline = killed_at + 45
        while True:
            status, stot = row()
            restarted = victim.process.pid not in (None, old_pid)
            ready = restarted and _ready_everywhere(env, live, 2)[1]
            snapshots.append((status, stot, ready))
            if status == "UP" and restarted and any(s.startswith("DOWN") for s, _n, _r in snapshots):
                break
            assert time.monotonic() < deadline, f"{server} never came back: {snapshots[-3:]}"
            time.sleep(0.05)
        back_after = time.monotonic() - killed_at
        time.sleep(1.0)
        after = row()

    assert any(s.startswith("DOWN") for s, _n, _r in snapshots), "HAProxy never took the dead replica out"
    # While DOWN it got nothing; the first reading that says UP again finds the model READY on it.
    down = [n for s, n, _r in snapshots if s.startswith("DOWN")]
    assert len(set(down)) == 1, f"{server} got requests while DOWN"
    assert snapshots[-1][2], "HAProxy put the restarted replica back before its model was READY"
    assert after[1] > down[0], "the restarted replica got no traffic once UP"
    # Only calls in flight on the killed server's connections may fail (HAProxy answers them REFUSED_STREAM).
    assert len(load.failures) <= 4, load.failures[:3]
    assert len(load.answers) > 100
    print(
        f"\nkill -9 of {server} under 4 clients: {len(load.answers)} requests, {len(load.failures)} failed;"
        f" UP again with mlp READY {back_after:.1f} s after the kill"
    )
    services.reconciler.run_once()
    _assert_everything_agrees(env, 2)


def test_runtime_json_records_every_replicas_ports(env: Env) -> None:
    state = env.stack.state
    for name, pool in env.stack.pools.items():
        entry = state.pools[name]
        assert [r.grpc_port for r in entry.replicas] == [r.grpc_port for r in pool.replicas]
        assert len(entry.replicas) == 2
    assert (env.stack.state_dir / "runtime.json").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in Path(env.stack.pools["blue"].root).glob("tritonserver*.pid")) == [
        "tritonserver-r1.pid",
        "tritonserver-r2.pid",
    ]


RUN_AND_WAIT = """
import json, signal, sys
from pathlib import Path
from controlplane.runtime.local import LocalStack

state_dir, grpc_port, http_port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
info = Path(sys.argv[4])
stack = LocalStack(state_dir, host="127.0.0.1", grpc_port=grpc_port, http_port=http_port,
                   pool_names=("blue", "green"), triton_user=None, pool_replicas=2)
stack.start(timeout=60)
pids = {r.pid_file.name + "@" + name: r.process.pid for name, p in stack.pools.items() for r in p.replicas}
info.write_text(json.dumps({"tritons": pids, "proxy": stack.proxy.pid}))
signal.pause()
"""


def test_a_control_plane_killed_with_two_replicas_per_pool_has_every_replica_adopted_by_the_next(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    grpc_port, http_port = free_ports(2)
    script = tmp_path / "run_and_wait.py"
    script.write_text(RUN_AND_WAIT)
    info = tmp_path / "first.json"
    first = subprocess.Popen(
        [sys.executable, str(script), str(state_dir), str(grpc_port), str(http_port), str(info)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "first.log").open("wb"),
    )
    stack: LocalStack | None = None
    try:
        deadline = time.monotonic() + 60
        while not info.exists():
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[
                -3000:
            ]
            time.sleep(0.05)
        started = json.loads(info.read_text())
        first.kill()
        first.wait(10)

        stack = LocalStack(
            state_dir,
            host="127.0.0.1",
            grpc_port=grpc_port,
            http_port=http_port,
            pool_names=("blue", "green"),
            triton_user=None,
            pool_replicas=2,
        )
        stack.start(timeout=60)

        adopted = {
            f"{r.pid_file.name}@{name}": (r.process.pid, r.process.adopted)
            for name, p in stack.pools.items()
            for r in p.replicas
            if r.process is not None
        }
        assert adopted == {key: (pid, True) for key, pid in started["tritons"].items()}
        assert stack.proxy is not None and (stack.proxy.pid, stack.proxy.adopted) == (started["proxy"], True)
    finally:
        if stack is not None:
            stack.stop()
        if first.poll() is None:
            first.kill()
            first.wait(10)
        # Whatever the first run left that the second did not adopt (a failed assertion above).
        for pid_file in state_dir.glob("**/*.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError, OSError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
