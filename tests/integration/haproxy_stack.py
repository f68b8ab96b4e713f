"""Two real tritonservers ("blue", "green") behind a real haproxy rendered by ``render_config``.

Import as ``from haproxy_stack import ...`` (pytest puts this folder on
``sys.path``). ``running_stack`` starts the processes and stops every one of
them on exit, whatever happened; each Triton serves a tiny Python-backend
identity model (``MODEL``) from its own repository, in explicit
model-control mode, loaded at start or not.
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import pytriton
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from controlplane.errors import ProxyError
from controlplane.runtime.ports import free_ports
from controlplane.traffic.haproxy import (
    HAProxyRuntime,
    PoolEndpoint,
    ProxyConfig,
    haproxy_binary,
    haproxy_check_command,
    haproxy_command,
    render_config,
)

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


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
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


def descendants(pid: int) -> list[int]:
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


def kill_pids(pids: list[int]) -> None:
    """SIGKILL each pid that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Send ``sig`` and wait; SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float = 10) -> None:
    """SIGTERM to every process first, then wait for each; SIGKILL what is still there after ``timeout``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for failure messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


@dataclass
class Triton:
    name: str
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log: Path
    shm_prefix: str
    children: list[int] = field(default_factory=list)
    """Pids to kill at teardown besides ``proc``'s own descendants (stubs of a killed server)."""

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def ports(self) -> list[int]:
        return [self.http_port, self.grpc_port, self.metrics_port]

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)


@dataclass
class Stack:
    tritons: dict[str, Triton]
    haproxy: subprocess.Popen[bytes]
    haproxy_log: Path
    config_path: Path
    config: ProxyConfig
    runtime: HAProxyRuntime
    grpc_url: str
    http_url: str
    workdir: Path
    repo: Path
    backends: Path
    load_model: bool


def start_triton(
    name: str,
    workdir: Path,
    repo: Path,
    backends: Path,
    shm_prefix: str,
    ports: list[int],
    *,
    load_model: bool,
) -> Triton:
    """Start one tritonserver on ``ports`` (http, grpc, metrics); it is ready once ``ready()``."""
    http_port, grpc_port, metrics_port = ports
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(TRITON_LIBS), *filter(None, [env.get("LD_LIBRARY_PATH")])])
    # The Python backend stub runs on the system libpython and finds numpy only
    # through the virtual environment first on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = sys.prefix
    log = workdir / f"triton-{name}-{int(time.monotonic() * 1000)}.log"
    argv = [
        str(TRITON_BIN),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        "--model-control-mode=explicit",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
        "--exit-timeout-secs",
        "2",
    ]
    if load_model:
        # Loaded before the ports open: the server is never ready without it.
        argv.append(f"--load-model={MODEL}")
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Triton(name, proc, http_port, grpc_port, metrics_port, log, shm_prefix)


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


def primaries_serving(runtime: HAProxyRuntime, weighted: tuple[str, ...] = POOLS) -> bool:
    """Every pool's own server UP with a passed check; those in ``weighted`` also at weight > 0."""
    states = [s for s in runtime.servers_state() if not s.standby]
    return len(states) == 2 * len(POOLS) and all(
        s.operational == "running"
        and s.admin == "ready"
        and s.check_result == "passed"
        and (s.weight > 0 or s.name not in weighted)
        for s in states
    )


def clean_up_killed(triton: Triton) -> None:
    """What a supervisor does after kill -9: kill the orphaned stubs, remove the shm regions."""
    kill_pids(triton.children)
    for leftover in Path("/dev/shm").glob(f"{triton.shm_prefix}*"):
        leftover.unlink(missing_ok=True)


def restart_triton(stack: Stack, name: str, *, load_model: bool | None = None) -> Triton:
    """Start pool ``name`` again on its ports (the old process must be dead); return the new one.

    ``load_model`` defaults to what the stack started with. A Triton with no
    model loaded is "ready", so the proxy would send it traffic it cannot serve.
    """
    old = stack.tritons[name]
    assert old.proc.poll() is not None, f"{name} is still running"
    new = start_triton(
        name,
        stack.workdir,
        stack.repo,
        stack.backends,
        old.shm_prefix,
        old.ports,
        load_model=stack.load_model if load_model is None else load_model,
    )
    new.children = old.children
    stack.tritons[name] = new
    return new


@contextlib.contextmanager
def running_stack(
    workdir: Path,
    *,
    weights: Mapping[str, int] | None = None,
    load_model: bool = False,
    strip_request_headers: tuple[str, ...] = (),
) -> Iterator[Stack]:
    """Start both Tritons and haproxy in front; stop them all on exit."""
    if not TRITON_BIN.exists() or not PYTHON_STUB.exists():
        pytest.fail(f"tritonserver or its Python stub missing under {SITE_PACKAGES}")
    haproxy_binary()  # fails with an install hint if haproxy is missing
    weights = dict(weights or dict.fromkeys(POOLS, 1))
    # A short directory for the admin socket: sun_path holds 107 bytes.
    sockdir = Path(tempfile.mkdtemp(prefix="cphx", dir="/tmp"))
    shm_prefix = f"cphx{os.getpid()}_{sockdir.name[-6:]}_"
    repo = _build_repo(workdir / "repo")
    backends = _build_backend_dir(workdir / "backends")
    ports = free_ports(8)
    tritons: dict[str, Triton] = {}
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        for index, name in enumerate(POOLS):
            tritons[name] = start_triton(
                name,
                workdir,
                repo,
                backends,
                f"{shm_prefix}{name}_",
                ports[index * 3 : index * 3 + 3],
                load_model=load_model,
            )
        for triton in tritons.values():
            wait_for(triton.ready, 60, f"tritonserver {triton.name}\n{log_tail(triton.log)}")

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
                    weight=weights[t.name],
                )
                for t in tritons.values()
            ),
            pid_file=workdir / "haproxy.pid",
            strip_request_headers=strip_request_headers,
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
        weighted = tuple(name for name, weight in weights.items() if weight > 0)
        wait_for(
            lambda: primaries_serving(runtime, weighted), 10, f"haproxy servers UP\n{log_tail(haproxy_log)}"
        )
        yield Stack(
            tritons=tritons,
            haproxy=haproxy,
            haproxy_log=haproxy_log,
            config_path=config_path,
            config=cfg,
            runtime=runtime,
            grpc_url=f"127.0.0.1:{grpc_port}",
            http_url=f"127.0.0.1:{http_port}",
            workdir=workdir,
            repo=repo,
            backends=backends,
            load_model=load_model,
        )
    finally:
        if haproxy is not None:
            stop(haproxy)
        stubs = {n: descendants(t.proc.pid) if t.proc.poll() is None else [] for n, t in tritons.items()}
        # Side by side: each server takes seconds to unload its models and exit.
        stop_all([triton.proc for triton in tritons.values()])
        for name, triton in tritons.items():
            kill_pids(stubs[name] + triton.children)
        for leftover in Path("/dev/shm").glob(f"{shm_prefix}*"):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(sockdir, ignore_errors=True)


def grpc_input(values: list[float]) -> grpcclient.InferInput:
    """INPUT0 of the identity model for tritonclient.grpc."""
    tensor = grpcclient.InferInput("INPUT0", [len(values)], "FP32")
    tensor.set_data_from_numpy(np.array(values, dtype=np.float32))
    return tensor


def http_input(values: list[float]) -> httpclient.InferInput:
    """INPUT0 of the identity model for tritonclient.http."""
    tensor = httpclient.InferInput("INPUT0", [len(values)], "FP32")
    tensor.set_data_from_numpy(np.array(values, dtype=np.float32))
    return tensor
