"""A real HAProxy, rendered by ``render_config``, in front of two real tritonservers.

The module starts two Triton pools ("blue" and "green", each a tritonserver
from the nvidia-pytriton wheel with a tiny Python-backend identity model
available in explicit model-control mode) and one haproxy in the foreground,
then drives them through tritonclient and the admin socket. The tests share
that stack and run in file order: the last two kill blue and stop haproxy.
Every process started here is stopped at module teardown, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytriton
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from controlplane.errors import ProxyError
from controlplane.runtime.ports import free_ports
from controlplane.traffic.haproxy import (
    GRPC_BACKEND,
    HTTP_BACKEND,
    HAProxyRuntime,
    PoolEndpoint,
    ProxyConfig,
    describe_exit,
    haproxy_binary,
    haproxy_check_command,
    haproxy_command,
    render_config,
)

pytestmark = pytest.mark.integration

SITE_PACKAGES = Path(pytriton.__file__).resolve().parent.parent
TRITON_BIN = SITE_PACKAGES / "pytriton" / "tritonserver" / "bin" / "tritonserver"
TRITON_LIBS = SITE_PACKAGES / "nvidia_pytriton.libs"
PYTHON_BACKEND = SITE_PACKAGES / "pytriton" / "tritonserver" / "backends" / "python"
PYTHON_STUB = (
    SITE_PACKAGES
    / "pytriton"
    / "tritonserver"
    / "python_backend_stubs"
    / f"{sys.version_info.major}.{sys.version_info.minor}"
    / "triton_python_backend_stub"
)
MODEL = "identity"
MODEL_CONFIG = f"""\
name: "{MODEL}"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""
MODEL_PY = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            out = pb_utils.Tensor("OUTPUT0", tensor.as_numpy())
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
"""
POOLS = ("blue", "green")


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; return the seconds it took or fail the test."""
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except (OSError, ProxyError):  # the thing polled is still starting
            pass
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _descendants(pid: int) -> list[int]:
    """Pids of every live descendant of ``pid`` (Python backend stubs, for example)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass
class Triton:
    name: str
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log: Path
    children: list[int]

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)


def _start_triton(
    name: str, workdir: Path, repo: Path, backends: Path, shm_prefix: str, ports: list[int]
) -> Triton:
    http_port, grpc_port, metrics_port = ports
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(TRITON_LIBS), *filter(None, [env.get("LD_LIBRARY_PATH")])])
    # The Python backend stub runs on the system libpython and finds numpy only
    # through the virtual environment first on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = sys.prefix
    log = workdir / f"triton-{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(TRITON_BIN),
                f"--model-repository={repo}",
                f"--backend-directory={backends}",
                f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
                "--model-control-mode=explicit",
                "--http-port",
                str(http_port),
                "--grpc-port",
                str(grpc_port),
                "--metrics-port",
                str(metrics_port),
                "--exit-timeout-secs",
                "2",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Triton(name, proc, http_port, grpc_port, metrics_port, log, [])


@dataclass
class Stack:
    tritons: dict[str, Triton]
    haproxy: subprocess.Popen[bytes]
    haproxy_log: Path
    config_path: Path
    runtime: HAProxyRuntime
    grpc_url: str
    http_url: str


def _build_backend_dir(path: Path) -> Path:
    python_dir = path / "python"
    python_dir.mkdir(parents=True)
    # Copies, not symlinks: Triton refuses a backend library that escapes its directory.
    shutil.copy2(PYTHON_BACKEND / "libtriton_python.so", python_dir)
    shutil.copy2(PYTHON_BACKEND / "triton_python_backend_utils.py", python_dir)
    shutil.copy2(PYTHON_STUB, python_dir)
    return path


def _build_repo(path: Path) -> Path:
    model_dir = path / MODEL
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(MODEL_CONFIG)
    (model_dir / "1" / "model.py").write_text(MODEL_PY)
    return path


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not TRITON_BIN.exists() or not PYTHON_STUB.exists():
        pytest.fail(f"tritonserver or its Python stub missing under {SITE_PACKAGES}")
    haproxy_binary()  # fails with an install hint if haproxy is missing
    workdir = tmp_path_factory.mktemp("haproxy_stack")
    # A short directory for the admin socket: sun_path holds 107 bytes.
    sockdir = Path(tempfile.mkdtemp(prefix="cphx", dir="/tmp"))
    shm_prefix = f"cphx{os.getpid()}_"
    repo = _build_repo(workdir / "repo")
    backends = _build_backend_dir(workdir / "backends")
    ports = free_ports(8)
    tritons: dict[str, Triton] = {}
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        for index, name in enumerate(POOLS):
            tritons[name] = _start_triton(
                name,
                workdir,
                repo,
                backends,
                f"{shm_prefix}{name}_",
                ports[index * 3 : index * 3 + 3],
            )
        for triton in tritons.values():
            _wait_for(triton.ready, 30, f"tritonserver {triton.name}\n{_log_tail(triton.log)}")

        grpc_port, http_port = ports[6], ports[7]
        cfg = ProxyConfig(
            grpc_bind=("127.0.0.1", grpc_port),
            http_bind=("127.0.0.1", http_port),
            admin_socket=sockdir / "admin.sock",
            pools=tuple(
                PoolEndpoint(
                    name=t.name,
                    host="127.0.0.1",
                    grpc_port=t.grpc_port,
                    http_port=t.http_port,
                    weight=1,
                )
                for t in tritons.values()
            ),
            pid_file=workdir / "haproxy.pid",
        )
        config_path = workdir / "haproxy.cfg"
        config_path.write_text(render_config(cfg))
        check = subprocess.run(haproxy_check_command(config_path), capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr

        haproxy_log = workdir / "haproxy.log"
        with haproxy_log.open("wb") as out:
            haproxy = subprocess.Popen(
                haproxy_command(config_path),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
            )
        runtime = HAProxyRuntime(cfg.admin_socket)

        _wait_for(lambda: _all_serving(runtime), 10, f"haproxy servers UP\n{_log_tail(haproxy_log)}")
        yield Stack(
            tritons=tritons,
            haproxy=haproxy,
            haproxy_log=haproxy_log,
            config_path=config_path,
            runtime=runtime,
            grpc_url=f"127.0.0.1:{grpc_port}",
            http_url=f"127.0.0.1:{http_port}",
        )
    finally:
        if haproxy is not None:
            _stop(haproxy)
        for triton in tritons.values():
            stubs = _descendants(triton.proc.pid) if triton.proc.poll() is None else []
            _stop(triton.proc)
            _kill_pids(stubs + triton.children)
        for leftover in Path("/dev/shm").glob(f"{shm_prefix}*"):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(sockdir, ignore_errors=True)


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


def _all_serving(runtime: HAProxyRuntime) -> bool:
    states = runtime.servers_state()
    return len(states) == 4 and all(s.serving and s.check_result == "passed" for s in states)


def _stot(runtime: HAProxyRuntime) -> dict[tuple[str, str], int]:
    return {(r.pxname, r.svname): r.stot for r in runtime.server_stats() if r.kind == "server"}


def _delta(after: dict[tuple[str, str], int], before: dict[tuple[str, str], int]) -> dict:
    return {key: after[key] - before.get(key, 0) for key in after}


def _grpc_input(values: list[float]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT0", [len(values)], "FP32")
    tensor.set_data_from_numpy(np.array(values, dtype=np.float32))
    return tensor


def _http_input(values: list[float]) -> httpclient.InferInput:
    tensor = httpclient.InferInput("INPUT0", [len(values)], "FP32")
    tensor.set_data_from_numpy(np.array(values, dtype=np.float32))
    return tensor


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
        _wait_for(lambda: bool(runtime.servers_state()), 10, "haproxy admin socket")
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == returncode, log.read_text()
        assert output in log.read_text()
        assert describe_exit(returncode)
    finally:
        _stop(proc, signal.SIGKILL)
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


def test_model_control_is_denied_through_proxy_but_works_direct(
    stack: Stack,
    grpc_proxy: grpcclient.InferenceServerClient,
    http_proxy: httpclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as grpc_denied:
        grpc_proxy.load_model(MODEL)
    assert grpc_denied.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "model control is not available" in str(grpc_denied.value.message())
    with pytest.raises(InferenceServerException) as grpc_index:
        grpc_proxy.get_model_repository_index()
    assert grpc_index.value.status() == "StatusCode.PERMISSION_DENIED"
    with pytest.raises(InferenceServerException) as http_denied:
        http_proxy.load_model(MODEL)
    assert http_denied.value.status() == "403"
    assert "model control is not available" in str(http_denied.value.message())
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
    _wait_for(lambda: _all_serving(stack.runtime), 5, "pools UP again after the loads")

    # Inference goes through on both protocols, to both pools.
    for i in range(4):
        result = grpc_proxy.infer(MODEL, [_grpc_input([float(i), 2.0])])
        assert result.as_numpy("OUTPUT0").tolist() == [float(i), 2.0]
        http_result = http_proxy.infer(MODEL, [_http_input([float(i), 3.0])])
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
            grpc_proxy.infer("no_such_model", [_grpc_input([1.0])])
        assert unknown.value.status() == "StatusCode.NOT_FOUND"
    # Successful calls are not counted.
    grpc_proxy.infer(MODEL, [_grpc_input([1.0])])
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
            grpc_proxy.infer("no_such_model", [_grpc_input([1.0])])
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
    assert weights == {
        (GRPC_BACKEND, "blue"): 0,
        (GRPC_BACKEND, "green"): 1,
        (HTTP_BACKEND, "blue"): 0,
        (HTTP_BACKEND, "green"): 1,
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


def test_drain_takes_pool_out_until_ready_again(
    stack: Stack, grpc_proxy: grpcclient.InferenceServerClient, restore_pools: None
) -> None:
    stack.runtime.set_pool_state("blue", "drain")
    states = {(s.backend, s.name): s for s in stack.runtime.servers_state()}
    assert states[(GRPC_BACKEND, "blue")].admin == "drain"
    assert states[(HTTP_BACKEND, "blue")].admin == "drain"
    # Drain keeps the configured weight; it only stops new requests.
    assert states[(GRPC_BACKEND, "blue")].weight == 1
    before = _stot(stack.runtime)
    for _ in range(10):
        grpc_proxy.infer(MODEL, [_grpc_input([1.0])])
    delta = _delta(_stot(stack.runtime), before)
    assert delta[(GRPC_BACKEND, "blue")] == 0
    assert delta[(GRPC_BACKEND, "green")] == 10
    stack.runtime.wait_pool_idle("blue", timeout=2)

    stack.runtime.set_pool_state("blue", "ready")
    before = _stot(stack.runtime)
    for _ in range(10):
        grpc_proxy.infer(MODEL, [_grpc_input([1.0])])
    assert _delta(_stot(stack.runtime), before)[(GRPC_BACKEND, "blue")] > 0


def test_kill_9_marks_pool_down_and_requests_still_succeed(
    stack: Stack,
    grpc_proxy: grpcclient.InferenceServerClient,
    http_proxy: httpclient.InferenceServerClient,
) -> None:
    blue = stack.tritons["blue"]
    # Stubs outlive a SIGKILLed tritonserver: remember them for teardown.
    blue.children = _descendants(blue.proc.pid)
    blue.proc.kill()
    blue.proc.wait(timeout=5)
    killed_at = time.monotonic()
    calls = 0
    while True:
        # Every call must succeed, including those HAProxy first sends to blue.
        result = grpc_proxy.infer(MODEL, [_grpc_input([5.0])])
        assert result.as_numpy("OUTPUT0").tolist() == [5.0]
        assert http_proxy.is_server_ready()
        calls += 1
        states = [s for s in stack.runtime.servers_state() if s.name == "blue"]
        if all(s.operational == "stopped" for s in states):
            break
        assert time.monotonic() - killed_at < 2.5, f"blue still {states}"
    stats = {(r.pxname, r.svname): r for r in stack.runtime.server_stats()}
    for backend in (GRPC_BACKEND, HTTP_BACKEND):
        assert stats[(backend, "blue")].status == "DOWN"
        assert stats[(backend, "blue")].check_status == "L4CON"
        assert stats[(backend, "green")].status == "UP"
    for _ in range(10):
        assert grpc_proxy.infer(MODEL, [_grpc_input([6.0])]).as_numpy("OUTPUT0").tolist() == [6.0]
    assert calls > 0


def test_haproxy_soft_stops_on_sigusr1_after_serving(stack: Stack) -> None:
    stack.haproxy.send_signal(signal.SIGUSR1)
    assert stack.haproxy.wait(timeout=10) == 0
    assert "gracefully" in describe_exit(0)
    log = stack.haproxy_log.read_text()
    # The supervisor's copy of stderr tells what happened to the pools.
    assert "Server triton_grpc/blue is DOWN" in log, log
    assert "Proxy grpc_in stopped" in log, log
