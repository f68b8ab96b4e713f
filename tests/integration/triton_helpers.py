"""Start and stop a real tritonserver for integration tests; reusable by other tests.

Import as ``from triton_helpers import ...`` (pytest puts this folder on
``sys.path`` for test modules here). Typical use::

    with running_triton(repository, tmp_path) as server:
        client = server.grpc_client()
        client.load_model("mlp")

Each server gets its own Python-backend shm prefix, so its stub processes and
``/dev/shm`` regions can be found and removed even after a crash.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import tritonclient.grpc as grpcclient

from controlplane.runtime.ports import free_ports
from controlplane.triton.backend_dir import PYTHON_BACKEND_STUB, build_backend_directory
from controlplane.triton.server_command import tritonserver_command

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_SCRIPT = REPO_ROOT / "model_repository" / "build_examples.py"
SHM_DIR = Path("/dev/shm")


def load_examples_module() -> ModuleType:
    """Import ``model_repository/build_examples.py`` (a script, not a package)."""
    spec = importlib.util.spec_from_file_location("build_examples", EXAMPLES_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unique_shm_prefix(tag: str = "cptest") -> str:
    """A shm prefix no other server on this machine uses."""
    return f"{tag}_{os.getpid()}_{secrets.token_hex(3)}_"


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str = ""
) -> float:
    """Poll ``predicate`` until true; return the seconds it took, raise TimeoutError after ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what or predicate}")
        time.sleep(interval)


def stub_processes(shm_prefix: str) -> list[int]:
    """PIDs of ``triton_python_backend_stub`` processes whose shm region uses ``shm_prefix``.

    The stub's argv[2] is ``<shm_prefix><uuid>`` (see ``controlplane.triton.server_command``).
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile, or not ours to read
        if not argv or Path(os.fsdecode(argv[0])).name != PYTHON_BACKEND_STUB:
            continue
        if len(argv) > 2 and os.fsdecode(argv[2]).startswith(shm_prefix):
            pids.append(int(entry.name))
    return pids


def shm_files(shm_prefix: str) -> list[Path]:
    """``/dev/shm`` entries created for ``shm_prefix``."""
    return sorted(SHM_DIR.glob(f"{shm_prefix}*"))


def cleanup_orphans(shm_prefix: str) -> tuple[list[int], list[Path]]:
    """SIGKILL leftover stubs and delete leftover shm regions of ``shm_prefix``; return both."""
    pids = stub_processes(shm_prefix)
    for pid in pids:
        # Orphaned stubs ignore SIGTERM, so go straight to SIGKILL.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(TimeoutError):
            wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), timeout=2.0)
    files = shm_files(shm_prefix)
    for path in files:
        path.unlink(missing_ok=True)
    return pids, files


@dataclass
class TritonServer:
    """A tritonserver process started by :func:`start_triton`."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    shm_prefix: str
    log_path: Path
    repository: Path
    backend_directory: Path
    startup_seconds: float = 0.0
    orphans: tuple[list[int], list[Path]] = field(default_factory=lambda: ([], []))

    @property
    def grpc_url(self) -> str:
        """``host:port`` for tritonclient.grpc."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """``host:port`` for tritonclient.http."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def grpc_client(self) -> grpcclient.InferenceServerClient:
        """A new gRPC client for this server."""
        return grpcclient.InferenceServerClient(self.grpc_url)

    def log(self) -> str:
        """The server's combined stdout/stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, *, grace: float = 5.0) -> None:
        """SIGTERM, SIGKILL after ``grace`` seconds, then remove this server's orphans."""
        stop_process(self.process, grace=grace)
        self.orphans = cleanup_orphans(self.shm_prefix)


def stop_process(process: subprocess.Popen[bytes], *, grace: float = 5.0) -> None:
    """Terminate ``process``; kill it if it has not exited after ``grace`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _ready_now(server: TritonServer) -> bool:
    # A fresh channel per attempt: a channel that was refused before the server
    # listened sits in gRPC's reconnect backoff (about 1 s) and would report late.
    client = server.grpc_client()
    try:
        return bool(client.is_server_ready(client_timeout=1.0))
    finally:
        client.close()


def _wait_ready_or_exited(server: TritonServer, timeout: float) -> None:
    wait_until(
        lambda: server.process.poll() is not None or _ready_now(server),
        timeout=timeout,
        interval=0.02,
        what="tritonserver readiness",
    )


def start_triton(
    repository: Path,
    work_dir: Path,
    *,
    backend_directory: Path | None = None,
    shm_prefix: str | None = None,
    ready_timeout: float = 20.0,
    extra_args: Sequence[str] = (),
    attempts: int = 3,
) -> TritonServer:
    """Start tritonserver on free ports and wait until gRPC says it is ready.

    ``work_dir`` receives the log (``tritonserver.log``) and, unless
    ``backend_directory`` is given, a freshly built backend directory. Retries
    on new ports if a chosen port was taken in the meantime.
    """
    backend_directory = backend_directory or build_backend_directory(work_dir / "backends")
    shm_prefix = shm_prefix or unique_shm_prefix()
    log_path = work_dir / "tritonserver.log"
    for attempt in range(1, attempts + 1):
        http_port, grpc_port, metrics_port = free_ports(3)
        argv, env = tritonserver_command(
            model_repository=repository,
            backend_directory=backend_directory,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            shm_prefix=shm_prefix,
            extra_args=extra_args,
        )
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        started = time.monotonic()
        with log_path.open("ab") as log:
            # Own session: a Ctrl-C in the test terminal must not hit the server
            # before the fixture's orderly stop.
            process = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = TritonServer(
            process=process,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            shm_prefix=shm_prefix,
            log_path=log_path,
            repository=repository,
            backend_directory=backend_directory,
        )
        try:
            _wait_ready_or_exited(server, ready_timeout)
        except TimeoutError:
            server.stop()
            raise
        if process.poll() is None:
            server.startup_seconds = time.monotonic() - started
            return server
        server.stop()
        attempt_log = log_path.read_bytes()[log_offset:].decode(errors="replace")
        # Triton says "Socket '0.0.0.0:P' already in use" for HTTP and gRPC alike.
        if "already in use" not in attempt_log or attempt == attempts:
            raise RuntimeError(f"tritonserver exited with {process.returncode}:\n{attempt_log}")
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running_triton(repository: Path, work_dir: Path, **kwargs: object) -> Iterator[TritonServer]:
    """Context manager around :func:`start_triton` that always stops the server."""
    server = start_triton(repository, work_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
