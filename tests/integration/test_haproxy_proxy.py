"""A real HAProxy, rendered by ``render_config``, in front of two real tritonservers.

The module starts two Triton pools ("blue" and "green", each a tritonserver
from the nvidia-pytriton wheel with a tiny Python-backend identity model
available in explicit model-control mode) and one haproxy in the foreground,
then drives them through tritonclient and the admin socket. The tests share
that stack and run in file order: the last two kill blue and stop haproxy.
Every process started here is stopped at module teardown, whatever happened.
One test runs a stack of its own: two pools of two replicas each.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from haproxy_stack import (
    MODEL,
    POOLS,
    Stack,
    Triton,
    _build_backend_dir,
    _build_repo,
    clean_up_killed,
    descendants,
    grpc_input,
    http_input,
    kill_pids,
    log_tail,
    primaries_serving,
    restart_triton,
    running_stack,
    start_triton,
    stop,
    stop_all,
    wait_for,
)
from tritonclient.utils import InferenceServerException

from controlplane.runtime.ports import free_ports
from controlplane.traffic.haproxy import (
    GRPC_BACKEND,
    HTTP_BACKEND,
    HAProxyRuntime,
    PoolEndpoint,
    ProxyConfig,
    describe_exit,
    haproxy_check_command,
    haproxy_command,
    render_config,
    standby_name,
)
from controlplane.traffic.haproxy_config import ReplicaEndpoint
from controlplane.traffic.router import HAProxyRouter

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("haproxy_stack")) as running:
        yield running


@pytest.fixture
def grpc_proxy(stack: Stack) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(stack.grpc_url)
    yield client
    client.close()


@pytest.fixture
def http_proxy(stack: Stack) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(stack.http_url)
    yield client
    client.close()


@pytest.fixture
def restore_pools(stack: Stack) -> Iterator[None]:
    yield
    for name, triton in stack.tritons.items():
        if triton.proc.poll() is None:
            stack.runtime.set_pool_state(name, "ready")
            stack.runtime.set_pool_weight(name, 1)


def _stot(runtime: HAProxyRuntime) -> dict[tuple[str, str], int]:
    return {(r.pxname, r.svname): r.stot for r in runtime.server_stats() if r.kind == "server"}


def _delta(after: dict[tuple[str, str], int], before: dict[tuple[str, str], int]) -> dict:
    return {key: after[key] - before.get(key, 0) for key in after}


# --------------------------------------------------------------------------
# Without Triton: the binary accepts what we render and stops as documented


def test_rendered_config_variants_pass_haproxy_check(tmp_path: Path) -> None:
    sockdir = Path(tempfile.mkdtemp(prefix="cphx", dir="/tmp"))
    try:
        variants = [
            ProxyConfig(
                grpc_bind=("127.0.0.1", 18001),
                http_bind=("127.0.0.1", 18000),
                admin_socket=sockdir / "a.sock",
                pools=(PoolEndpoint("blue", "127.0.0.1", 8001, 8000, 0),),
                strip_request_headers=("Triton-Admin-Key",),
            ),
            ProxyConfig(
                grpc_bind=("127.0.0.1", 18003),
                http_bind=("127.0.0.1", 18004),
                admin_socket=sockdir / "c.sock",
                pools=(
                    PoolEndpoint.of_hosts("blue", ("127.0.0.1", "localhost"), 8001, 8000, 100),
                    PoolEndpoint.of_hosts("green", ("127.0.0.2", "::1"), 8001, 8000, 0),
                ),
            ),
            ProxyConfig(
                grpc_bind=("::1", 18001),
                http_bind=("0.0.0.0", 18000),
                admin_socket=sockdir / "b.sock",
                pools=(
                    PoolEndpoint("blue", "::1", 8001, 8000, 256),
                    PoolEndpoint("green", "localhost", 9001, 9000, 1),
                    PoolEndpoint("canary-3_x", "10.1.2.3", 10001, 10000, 7),
                ),
                pid_file=tmp_path / "haproxy.pid",
                stats_bind=("127.0.0.1", 18002),
            ),
        ]
        for index, cfg in enumerate(variants):
            path = tmp_path / f"haproxy-{index}.cfg"
            path.write_text(render_config(cfg))
            result = subprocess.run(haproxy_check_command(path), capture_output=True, text=True, timeout=30)
            output = result.stdout + result.stderr
            assert result.returncode == 0, output
            # Warnings mean a directive was ignored: the config must not rely on one.
            assert "WARNING" not in output, output
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.parametrize(
    ("sig", "returncode", "output"),
    [
        (signal.SIGUSR1, 0, "Proxy grpc_in stopped"),
        (signal.SIGTERM, -signal.SIGTERM, ""),
    ],
)
def test_haproxy_command_stops_on_signal_with_a_telling_status(
    tmp_path: Path, sig: signal.Signals, returncode: int, output: str
) -> None:
    sockdir = Path(tempfile.mkdtemp(prefix="cphx", dir="/tmp"))
    grpc_port, http_port, dead_grpc, dead_http = free_ports(4)
    cfg = ProxyConfig(
        grpc_bind=("127.0.0.1", grpc_port),
        http_bind=("127.0.0.1", http_port),
        admin_socket=sockdir / "admin.sock",
        pools=(PoolEndpoint("blue", "127.0.0.1", dead_grpc, dead_http, 1),),
    )
    path = tmp_path / "haproxy.cfg"
    path.write_text(render_config(cfg))
    log = tmp_path / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(haproxy_command(path), stdout=out, stderr=subprocess.STDOUT)
    try:
        runtime = HAProxyRuntime(cfg.admin_socket)
        wait_for(lambda: bool(runtime.servers_state()), 10, "haproxy admin socket")
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == returncode, log.read_text()
        assert output in log.read_text()
        assert describe_exit(returncode)
    finally:
        stop(proc, signal.SIGKILL)
        shutil.rmtree(sockdir, ignore_errors=True)


# --------------------------------------------------------------------------
# Through the proxy


def test_triton_clients_reach_both_pools_through_proxy(
    stack: Stack,
    grpc_proxy: grpcclient.InferenceServerClient,
    http_proxy: httpclient.InferenceServerClient,
) -> None:
    before = _stot(stack.runtime)
    for _ in range(10):
        assert grpc_proxy.is_server_ready()
        assert http_proxy.is_server_ready()
    assert grpc_proxy.get_server_metadata().name == "triton"
    delta = _delta(_stot(stack.runtime), before)
    for backend in (GRPC_BACKEND, HTTP_BACKEND):
        assert delta[(backend, "blue")] > 0
        assert delta[(backend, "green")] > 0


def test_model_control_is_refused_through_proxy_but_works_direct(
    stack: Stack,
    grpc_proxy: grpcclient.InferenceServerClient,
    http_proxy: httpclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as grpc_denied:
        grpc_proxy.load_model(MODEL)
    assert grpc_denied.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "not available through the proxy" in str(grpc_denied.value.message())
    with pytest.raises(InferenceServerException) as grpc_index:
        grpc_proxy.get_model_repository_index()
    assert grpc_index.value.status() == "StatusCode.PERMISSION_DENIED"
    with pytest.raises(InferenceServerException) as http_denied:
        http_proxy.load_model(MODEL)
    assert http_denied.value.status() == "403"
    assert "not available through the proxy" in str(http_denied.value.message())
    with pytest.raises(InferenceServerException) as http_index:
        http_proxy.get_model_repository_index()
    assert http_index.value.status() == "403"

    # Nothing got through to Triton: the model is loaded nowhere yet.
    directs = {name: grpcclient.InferenceServerClient(t.grpc_url) for name, t in stack.tritons.items()}
    try:
        for client in directs.values():
            assert not client.is_model_ready(MODEL)
        with ThreadPoolExecutor(len(directs)) as pool:
            list(pool.map(lambda c: c.load_model(MODEL), directs.values()))
        for client in directs.values():
            assert client.is_model_ready(MODEL)
            assert [m.name for m in client.get_model_repository_index().models] == [MODEL]
    finally:
        for client in directs.values():
            client.close()
    # Triton answers /v2/health/ready with 400 while it loads a model, so the
    # health checks may have taken the pools out; they come back once ready.
    wait_for(lambda: primaries_serving(stack.runtime), 5, "pools UP again after the loads")

    # Inference goes through on both protocols, to both pools.
    for i in range(4):
        result = grpc_proxy.infer(MODEL, [grpc_input([float(i), 2.0])])
        assert result.as_numpy("OUTPUT0").tolist() == [float(i), 2.0]
        http_result = http_proxy.infer(MODEL, [http_input([float(i), 3.0])])
        assert http_result.as_numpy("OUTPUT0").tolist() == [float(i), 3.0]

    with pytest.raises(InferenceServerException) as unload_denied:
        grpc_proxy.unload_model(MODEL)
    assert unload_denied.value.status() == "StatusCode.PERMISSION_DENIED"
    with pytest.raises(InferenceServerException):
        http_proxy.unload_model(MODEL)
    assert grpc_proxy.is_model_ready(MODEL)


def test_grpc_errors_are_counted_per_pool(
    stack: Stack, grpc_proxy: grpcclient.InferenceServerClient, restore_pools: None
) -> None:
    before = stack.runtime.grpc_error_counts()
    before_stats = {(r.pxname, r.svname): r for r in stack.runtime.server_stats()}
    for _ in range(10):
        with pytest.raises(InferenceServerException) as unknown:
            grpc_proxy.infer("no_such_model", [grpc_input([1.0])])
        assert unknown.value.status() == "StatusCode.NOT_FOUND"
    # Successful calls are not counted.
    grpc_proxy.infer(MODEL, [grpc_input([1.0])])
    after = stack.runtime.grpc_error_counts()
    delta = {pool: after.get(pool, 0) - before.get(pool, 0) for pool in POOLS}
    assert sum(delta.values()) == 10
    assert delta["blue"] > 0 and delta["green"] > 0
    # HAProxy's own status counters cannot see them: a gRPC error is an HTTP 200.
    after_stats = {(r.pxname, r.svname): r for r in stack.runtime.server_stats()}
    key = (GRPC_BACKEND, "BACKEND")
    assert after_stats[key].hrsp_5xx == before_stats[key].hrsp_5xx

    stack.runtime.set_pool_weight("blue", 0)
    before = stack.runtime.grpc_error_counts()
    for _ in range(4):
        with pytest.raises(InferenceServerException):
            grpc_proxy.infer("no_such_model", [grpc_input([1.0])])
    after = stack.runtime.grpc_error_counts()
    assert after["green"] - before.get("green", 0) == 4
    assert after.get("blue", 0) == before.get("blue", 0)


def test_pool_weight_is_reported_and_routes_all_traffic(
    stack: Stack,
    grpc_proxy: grpcclient.InferenceServerClient,
    http_proxy: httpclient.InferenceServerClient,
    restore_pools: None,
) -> None:
    stack.runtime.set_pool_weight("blue", 0)
    stack.runtime.set_pool_weight("green", 1)
    weights = {(s.backend, s.name): s.weight for s in stack.runtime.servers_state()}
    # A standby keeps its fixed backup weight: it is not a pool's weight.
    assert weights == {
        (GRPC_BACKEND, "blue"): 0,
        (GRPC_BACKEND, "green"): 1,
        (HTTP_BACKEND, "blue"): 0,
        (HTTP_BACKEND, "green"): 1,
        (GRPC_BACKEND, "blue_standby"): 1,
        (GRPC_BACKEND, "green_standby"): 1,
        (HTTP_BACKEND, "blue_standby"): 1,
        (HTTP_BACKEND, "green_standby"): 1,
    }
    before = _stot(stack.runtime)
    for _ in range(20):
        assert grpc_proxy.is_server_ready()
        assert http_proxy.is_server_ready()
    delta = _delta(_stot(stack.runtime), before)
    assert delta[(GRPC_BACKEND, "blue")] == 0
    assert delta[(HTTP_BACKEND, "blue")] == 0
    assert delta[(GRPC_BACKEND, "green")] == 20
    assert delta[(HTTP_BACKEND, "green")] == 20
    # Green is usable, so no standby took anything.
    assert all(count == 0 for (_b, server), count in delta.items() if server.endswith("_standby"))


def test_drain_takes_pool_out_until_ready_again(
    stack: Stack, grpc_proxy: grpcclient.InferenceServerClient, restore_pools: None
) -> None:
    stack.runtime.set_pool_state("blue", "drain")
    states = {(s.backend, s.name): s for s in stack.runtime.servers_state()}
    for backend in (GRPC_BACKEND, HTTP_BACKEND):
        assert states[(backend, "blue")].admin == "drain"
        # The standby tracks its pool: drained with it, so it cannot take over.
        assert states[(backend, standby_name("blue"))].admin == "drain"
        assert states[(backend, standby_name("green"))].admin == "ready"
    # Drain keeps the configured weight; it only stops new requests.
    assert states[(GRPC_BACKEND, "blue")].weight == 1
    before = _stot(stack.runtime)
    for _ in range(10):
        grpc_proxy.infer(MODEL, [grpc_input([1.0])])
    delta = _delta(_stot(stack.runtime), before)
    assert delta[(GRPC_BACKEND, "blue")] == 0
    assert delta[(GRPC_BACKEND, "green")] == 10
    stack.runtime.wait_pool_idle("blue", timeout=2)

    stack.runtime.set_pool_state("blue", "ready")
    states = {(s.backend, s.name): s for s in stack.runtime.servers_state()}
    assert states[(GRPC_BACKEND, standby_name("blue"))].admin == "ready"
    before = _stot(stack.runtime)
    for _ in range(10):
        grpc_proxy.infer(MODEL, [grpc_input([1.0])])
    assert _delta(_stot(stack.runtime), before)[(GRPC_BACKEND, "blue")] > 0


class _Load:
    """``clients`` threads calling the identity model through the proxy until stopped."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.total = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, index: int) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        tensor = [grpc_input([float(index), 1.0])]
        done, failed = 0, []
        try:
            while not self.stop.is_set():
                try:
                    result = client.infer(MODEL, tensor, client_timeout=10)
                    if result.as_numpy("OUTPUT0").tolist() != [float(index), 1.0]:
                        failed.append("wrong answer")
                except InferenceServerException as exc:
                    failed.append(f"{exc.status()}: {exc.message()}")
                done += 1
        finally:
            client.close()
            with self.lock:
                self.total += done
                self.failures += failed

    def __enter__(self) -> _Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def _blue_rows(runtime: HAProxyRuntime) -> dict[str, tuple[str, int]]:
    """(status, requests so far) of blue's own server per backend, from one ``show stat``."""
    rows = runtime.server_stats()
    return {r.pxname: (r.status, r.stot) for r in rows if r.kind == "server" and r.svname == "blue"}


def _replica_rows(runtime: HAProxyRuntime) -> dict[tuple[str, str], tuple[str, int]]:
    """(status, requests so far) of every replica server (standbys left out), from one ``show stat``."""
    return {
        (r.pxname, r.svname): (r.status, r.stot)
        for r in runtime.server_stats()
        if r.kind == "server" and not r.svname.endswith("_standby")
    }


def test_two_replicas_per_pool_move_together_and_a_dead_replica_leaves_its_sibling_serving(
    tmp_path: Path,
) -> None:
    repo = _build_repo(tmp_path / "repo")
    backends = _build_backend_dir(tmp_path / "backends")
    sockdir = Path(tempfile.mkdtemp(prefix="cphx", dir="/tmp"))
    shm = f"cphr{sockdir.name[-6:]}_"
    ports = free_ports(14)
    tritons: dict[str, Triton] = {}
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        for i, name in enumerate(("blue_r1", "blue_r2", "green_r1", "green_r2")):
            tritons[name] = start_triton(
                name, tmp_path, repo, backends, f"{shm}{name}_", ports[3 * i : 3 * i + 3], load_model=True
            )
        for triton in tritons.values():
            wait_for(triton.ready, 60, f"tritonserver {triton.name}\n{log_tail(triton.log)}")

        def pool(name: str, weight: int) -> PoolEndpoint:
            replicas = [tritons[f"{name}_r{i}"] for i in (1, 2)]
            return PoolEndpoint.of_replicas(
                name, tuple(ReplicaEndpoint("127.0.0.1", t.grpc_port, t.http_port) for t in replicas), weight
            )

        cfg = ProxyConfig(
            grpc_bind=("127.0.0.1", ports[12]),
            http_bind=("127.0.0.1", ports[13]),
            admin_socket=sockdir / "admin.sock",
            pools=(pool("blue", 1), pool("green", 0)),
        )
        config_path = tmp_path / "haproxy.cfg"
        config_path.write_text(render_config(cfg))
        haproxy_log = tmp_path / "haproxy.log"
        with haproxy_log.open("wb") as out:
            haproxy = subprocess.Popen(haproxy_command(config_path), stdout=out, stderr=subprocess.STDOUT)
        runtime = HAProxyRuntime(cfg.admin_socket)
        router = HAProxyRouter(runtime)
        wait_for(lambda: router.pool_up("blue") and router.pool_up("green"), 10, "every replica UP")
        assert router.weights() == {"blue": 1, "green": 0}

        router.set_weights({"blue": 0, "green": 1})

        weights = {(s.backend, s.name): s.weight for s in runtime.servers_state() if not s.standby}
        assert weights == {
            (backend, f"{p}_r{i}"): 1 if p == "green" else 0
            for backend in (GRPC_BACKEND, HTTP_BACKEND)
            for p in ("blue", "green")
            for i in (1, 2)
        }
        assert router.weights() == {"blue": 0, "green": 1}
        grpc_proxy = grpcclient.InferenceServerClient(f"127.0.0.1:{ports[12]}")
        http_proxy = httpclient.InferenceServerClient(f"127.0.0.1:{ports[13]}")
        try:
            before = _stot(runtime)
            for i in range(20):
                grpc_answer = grpc_proxy.infer(MODEL, [grpc_input([float(i)])])
                http_answer = http_proxy.infer(MODEL, [http_input([float(i)])])
                assert grpc_answer.as_numpy("OUTPUT0").tolist() == [float(i)]
                assert http_answer.as_numpy("OUTPUT0").tolist() == [float(i)]
            delta = _delta(_stot(runtime), before)
        finally:
            grpc_proxy.close()
            http_proxy.close()
        # Round robin between green's two replicas on both sides; blue and the standbys get nothing.
        for backend in (GRPC_BACKEND, HTTP_BACKEND):
            assert delta[(backend, "green_r1")] == delta[(backend, "green_r2")] == 10
            assert sum(n for (b, _server), n in delta.items() if b == backend) == 20

        victim = tritons["green_r1"]
        with _Load(f"127.0.0.1:{ports[12]}", clients=4) as load:
            time.sleep(1.0)
            victim.children = descendants(victim.proc.pid)
            victim.proc.kill()
            victim.proc.wait(timeout=5)
            down_after = wait_for(
                lambda: all(
                    _replica_rows(runtime)[(backend, "green_r1")][0].startswith("DOWN")
                    for backend in (GRPC_BACKEND, HTTP_BACKEND)
                ),
                5,
                "green_r1 DOWN in both backends",
            )
            frozen = _replica_rows(runtime)
            time.sleep(1.5)
            after = _replica_rows(runtime)
            pool_up_while_one_is_dead = router.pool_up("green")
        # Only green_r2 took requests once its sibling was down; nothing fell back to a standby or to blue.
        assert after[(GRPC_BACKEND, "green_r2")][1] > frozen[(GRPC_BACKEND, "green_r2")][1]
        assert after[(GRPC_BACKEND, "green_r1")][1] == frozen[(GRPC_BACKEND, "green_r1")][1]
        standby_traffic = {
            (r.pxname, r.svname): r.stot for r in runtime.server_stats() if r.svname.endswith("_standby")
        }
        assert set(standby_traffic.values()) == {0}, standby_traffic
        assert not pool_up_while_one_is_dead
        assert router.weights() == {"blue": 0, "green": 1}, "a dead replica keeps its weight"
        # At most the calls in flight on the killed replica's connections (see the kill -9 test below).
        assert len(load.failures) <= 4, load.failures[:5]
        assert load.total > 200
        runtime.wait_pool_idle("blue", timeout=2)
        print(
            f"\nkill -9 of green_r1 under 4 gRPC clients: {load.total} requests, {len(load.failures)} failed;"
            f" DOWN after {down_after:.2f}s, green_r2 served the rest"
        )
    finally:
        if haproxy is not None:
            stop(haproxy)
        stubs = {n: descendants(t.proc.pid) if t.proc.poll() is None else [] for n, t in tritons.items()}
        stop_all([triton.proc for triton in tritons.values()])
        for name, triton in tritons.items():
            kill_pids(stubs[name] + triton.children)
        for leftover in Path("/dev/shm").glob(f"{shm}*"):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.mark.exclusive
def test_kill_9_of_the_weighted_pool_fails_no_request_and_it_returns_only_once_healthy(stack: Stack) -> None:
    # Green stays warm at weight 0 with the same model, as the rollout engine keeps it.
    for triton in stack.tritons.values():
        direct = grpcclient.InferenceServerClient(triton.grpc_url)
        try:
            if not direct.is_model_ready(MODEL):
                direct.load_model(MODEL)
        finally:
            direct.close()
    stack.runtime.set_pool_weight("blue", 100)
    stack.runtime.set_pool_weight("green", 0)
    wait_for(lambda: primaries_serving(stack.runtime, ("blue",)), 5, "both pools UP")
    blue = stack.tritons["blue"]
    with _Load(stack.grpc_url, clients=8) as load:
        time.sleep(1.5)
        # Stubs outlive a SIGKILLed tritonserver: remember them for the cleanup.
        blue.children = descendants(blue.proc.pid)
        blue.proc.kill()
        blue.proc.wait(timeout=5)
        killed_at = time.monotonic()
        # The gRPC side sees the connection errors first; the HTTP side (no
        # traffic here) follows with its health checks.
        down_after = wait_for(
            lambda: _blue_rows(stack.runtime)[GRPC_BACKEND][0] == "DOWN", 5, "blue DOWN on the gRPC side"
        )
        time.sleep(1.5)
        clean_up_killed(blue)
        # Started with the model: ready (and checked UP) only once it can serve.
        restarted = restart_triton(stack, "blue", load_model=True)
        # While blue is DOWN (also "DOWN 1/2", rising) it gets nothing, though it
        # answers again; it counts requests only from the snapshot that says UP.
        frozen = {backend: stot for backend, (_s, stot) in _blue_rows(stack.runtime).items()}
        snapshots: list[dict[str, tuple[str, int]]] = []
        deadline = time.monotonic() + 60
        while True:
            rows = _blue_rows(stack.runtime)
            snapshots.append(rows)
            status, stot = rows[GRPC_BACKEND]
            if status == "UP" and stot > frozen[GRPC_BACKEND]:
                break
            assert time.monotonic() < deadline, f"blue never came back\n{log_tail(restarted.log)}"
            time.sleep(0.02)
        back_after = time.monotonic() - killed_at
        time.sleep(1.0)
    for rows in snapshots:
        for backend, (status, stot) in rows.items():
            if status.startswith("DOWN"):
                assert stot == frozen[backend], f"{backend}/blue got traffic while {status}"
    assert any(rows[GRPC_BACKEND][0] == "DOWN" for rows in snapshots)
    print(
        f"\nkill -9 of blue under 8 gRPC clients: {load.total} requests, {len(load.failures)} failed;"
        f" blue DOWN after {down_after:.2f}s, serving again {back_after:.1f}s after the kill"
    )
    # Only the calls in flight on blue's connections when it died can fail (at
    # most one per client): HAProxy 2.6 does not retry a call on a reused
    # server connection that closed, it answers RST_STREAM(REFUSED_STREAM),
    # the HTTP/2 "never processed, safe to retry" signal, which
    # tritonclient.grpc reports as UNAVAILABLE instead of retrying.
    # Everything after the kill went to green's standby.
    assert len(load.failures) <= 8, load.failures[:5]
    assert all("RST_STREAM with error code 7" in failure for failure in load.failures), load.failures[:5]
    assert load.total > 1000
    stats = {(r.pxname, r.svname): r for r in stack.runtime.server_stats()}
    # The standby of green carried the traffic while blue was down.
    assert stats[(GRPC_BACKEND, standby_name("green"))].stot > 0
    assert stats[(GRPC_BACKEND, standby_name("blue"))].stot == 0
    assert restarted.proc.poll() is None


def test_haproxy_soft_stops_on_sigusr1_after_serving(stack: Stack) -> None:
    stack.haproxy.send_signal(signal.SIGUSR1)
    assert stack.haproxy.wait(timeout=10) == 0
    assert "gracefully" in describe_exit(0)
    log = stack.haproxy_log.read_text()
    # The supervisor's copy of stderr tells what happened to the pools.
    assert "Server triton_grpc/blue is DOWN" in log, log
    assert "Proxy grpc_in stopped" in log, log
