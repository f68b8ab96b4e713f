"""Run ``controlplane up`` as a real process for end-to-end tests.

The stack is the product's own command with free ports and a temporary state
directory; tests talk to it the way users do (REST API, CLI, tritonclient
through the proxy).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import tritonclient.grpc as grpcclient

from controlplane.domain.auth import Role
from controlplane.registry import token_store
from controlplane.registry.db import Database
from controlplane.runtime.ports import free_ports
from controlplane.runtime.state import FILE_NAME, load_state, state_tag
from controlplane.traffic.haproxy import HAProxyRuntime
from controlplane.triton.server_command import admin_headers

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTROLPLANE = Path(sys.executable).parent / "controlplane"


@dataclass
class Stack:
    """A running ``controlplane up``."""

    state_dir: Path
    api_port: int
    grpc_port: int
    http_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    token: str = ""

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def client(self, *, token: str | None = None) -> httpx.Client:
        """An API client carrying the stack's admin token (or ``token``; "" for none)."""
        chosen = self.token if token is None else token
        headers = {"Authorization": f"Bearer {chosen}"} if chosen else {}
        return httpx.Client(base_url=self.api, timeout=120, headers=headers)

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the ``controlplane`` CLI against this stack."""
        env = {**self.env, "CONTROLPLANE_API_URL": self.api, "CONTROLPLANE_TOKEN": self.token}
        return subprocess.run(
            [str(CONTROLPLANE), *args], env=env, capture_output=True, text=True, timeout=300, check=check
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def push(self, folder: Path, model: str, **params: str) -> httpx.Response:
        """Pack ``folder`` and push it through the API."""
        archive = self.state_dir.parent / f"{model}-{time.monotonic_ns()}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(folder.rglob("*")):
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
        with self.client() as client:
            return client.post(
                f"/v1/models/{model}/versions",
                content=archive.read_bytes(),
                params=params,
                headers={"content-type": "application/gzip"},
            )

    @property
    def ports(self) -> tuple[int, int, int]:
        return (self.api_port, self.grpc_port, self.http_port)

    def model_ready_on(self, pool: str, model: str) -> bool:
        """Whether ``pool``'s own Triton has ``model`` READY (asked with the pool's admin key)."""
        state = load_state(self.state_dir / FILE_NAME)
        assert state is not None
        entry = state.pools[pool]
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{entry.grpc_port}")
        try:
            return bool(client.is_model_ready(model, headers=admin_headers(entry.admin_key)))
        finally:
            client.close()

    def wait_standby(self, model: str, pool: str = "green", timeout: float = 60) -> None:
        """Wait until the standby ``pool`` has loaded ``model`` (the reconciler does it after a deploy)."""
        deadline = time.monotonic() + timeout
        while not self.model_ready_on(pool, model):
            if time.monotonic() > deadline:
                raise TimeoutError(f"standby {pool} did not load {model} in {timeout} s")
            time.sleep(0.1)

    def live_state(self) -> dict[str, object]:
        """Everything live that a refused request must not change.

        Files of the artifact store and pool folders, each Triton's repository
        index, HAProxy's weights, and the registry as the API shows it.
        """
        state = load_state(self.state_dir / FILE_NAME)
        assert state is not None
        files = sorted(
            str(p.relative_to(self.state_dir))
            for sub in ("artifacts", "pools")
            for p in (self.state_dir / sub).rglob("*")
            if p.is_file() and not p.name.endswith((".log", ".pid"))
        )
        indexes = {}
        for name, pool in state.pools.items():
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{pool.grpc_port}")
            indexes[name] = sorted(
                (m["name"], m.get("version", ""), m.get("state", ""))
                for m in client.get_model_repository_index(
                    as_json=True, headers=admin_headers(pool.admin_key) if pool.admin_key else None
                ).get("models", [])
            )
            client.close()
        weights = {s.name: s.weight for s in HAProxyRuntime(self._admin_socket()).servers_state()}
        with self.client() as client:
            models = client.get("/v1/models").json()
            names = [m["name"] for m in models]
            registry = {
                "models": models,
                "versions": {name: client.get(f"/v1/models/{name}/versions").json() for name in names},
                "rollouts": client.get("/v1/rollouts").json(),
            }
        return {"files": files, "triton": indexes, "weights": weights, "registry": registry}

    def _admin_socket(self) -> Path:
        path = self.state_dir / "proxy" / "admin.sock"
        if len(str(path)) <= 100:
            return path
        return Path(tempfile.gettempdir()) / f"controlplane-{state_tag(self.state_dir)}" / "admin.sock"

    def kill(self) -> None:
        """kill -9 of the control plane alone, as a crash would (its children live in their own sessions)."""
        self.process.kill()
        self.process.wait()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as a service manager would; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def start_stack(
    state_dir: Path,
    *,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
    ports: tuple[int, int, int] | None = None,
    timeout: float = 90,
) -> Stack:
    """Start ``controlplane up`` (API, gRPC and HTTP ports: ``ports`` or free ones); wait for ``/readyz``."""
    api_port, grpc_port, http_port = ports or free_ports(3)
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir.parent / f"{state_dir.name}-up.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    environment.update(env or {})
    if database_url:
        environment["CONTROLPLANE_DATABASE_URL"] = database_url
    argv = [
        str(CONTROLPLANE),
        "up",
        "--state-dir",
        str(state_dir),
        "--api-port",
        str(api_port),
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=REPO_ROOT)
    stack = Stack(state_dir, api_port, grpc_port, http_port, process, log_path, environment)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"controlplane up exited with {process.returncode}:\n{stack.log()}")
        with contextlib.suppress(httpx.HTTPError), httpx.Client(timeout=2) as client:
            if client.get(f"{stack.api}/readyz").status_code == 200:
                stack.token = _admin_token(stack)
                return stack
        if time.monotonic() > deadline:
            stack.stop()
            raise RuntimeError(f"controlplane up not ready after {timeout} s:\n{stack.log()}")
        time.sleep(0.2)


def _admin_token(stack: Stack) -> str:
    """The stack's own admin token, written straight into its registry.

    Spares every stack start a CLI process (about a second); ``create_token``
    below makes the tokens tests use through ``controlplane token create``.
    """
    url = stack.env.get("CONTROLPLANE_DATABASE_URL") or f"sqlite:///{stack.state_dir / 'registry.db'}"
    db = Database(url)
    try:
        with db.transaction() as session:
            secret, _info = token_store.create_token(
                session, name=f"tests-{time.monotonic_ns()}", role=Role.ADMIN, created_by="tests"
            )
    finally:
        db.dispose()
    return secret


def create_token(stack: Stack, name: str, role: str) -> str:
    """A new API token of ``role`` for the stack's database, made with the CLI."""
    made = subprocess.run(
        [str(CONTROLPLANE), "token", "create", name, "--role", role, "--state-dir", str(stack.state_dir)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return made.stdout.strip()
