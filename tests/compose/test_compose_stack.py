"""The compose stack on a real container engine, two Triton replicas per pool: `docker compose up`, push,
roll out, roll back, survive a killed control plane, recycle a pool, `down -v`, with 8 client streams on
the published gRPC port.

The module starts the engine it needs (``scripts/ensure-docker``: on a Debian
machine as root without one, it installs and starts one and makes the local
base image) and stops it at the end (``scripts/stop-docker`` stops only an
engine that ensure-docker started, and undoes its network changes), so the
rest of the suite runs without it. Images are built from the local Debian
base (no registry is reachable on the project's machines;
``scripts/build-images --local-base``, cached between runs). Where no engine
can run, these tests are skipped with the reason ensure-docker gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from rollout_load import FIXED_INPUT, Load
from triton_helpers import load_examples_module

from controlplane.registry import rollout_store
from controlplane.registry.db import Database
from controlplane.runtime.ports import free_ports

pytestmark = pytest.mark.integration

examples = load_examples_module()

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
BASE = COMPOSE_DIR / "docker-compose.yml"
LOCAL = COMPOSE_DIR / "docker-compose.local.yml"
GPU = COMPOSE_DIR / "docker-compose.gpu.yml"
DOCKER_API = COMPOSE_DIR / "docker-compose.docker-api.yml"
REPLICAS = COMPOSE_DIR / "docker-compose.replicas.yml"


def _run(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.fixture(scope="module")
def engine() -> Iterator[None]:
    """A container engine that answers, with `docker compose`; stopped afterwards if this started it."""
    ensured = _run(str(REPO / "scripts" / "ensure-docker"), timeout=900)
    if ensured.returncode != 0:
        reason = (ensured.stderr.strip().splitlines() or ["ensure-docker failed"])[-1]
        pytest.skip(f"no container engine: {reason}")
    try:
        yield
    finally:
        stopped = _run(str(REPO / "scripts" / "stop-docker"), timeout=120)
        assert stopped.returncode == 0, stopped.stderr


@pytest.mark.parametrize(
    "files",
    [(BASE,), (BASE, GPU), (BASE, LOCAL), (BASE, LOCAL, DOCKER_API, REPLICAS)],
    ids=["cpu", "gpu", "offline", "offline+docker-api+replicas"],
)
def test_every_form_of_the_compose_file_is_valid(engine: None, files: tuple[Path, ...]) -> None:
    argv = (
        ["docker", "compose"]
        + [arg for f in files for arg in ("-f", str(f))]
        + ["config", "--format", "json"]
    )

    answer = _run(*argv, env={**os.environ, "DOCKER_GID": "999"})

    assert answer.returncode == 0, answer.stderr
    config = json.loads(answer.stdout)
    services = config["services"]
    tritons = {"triton-blue", "triton-green"} | (
        {"triton-blue-2", "triton-green-2"} if REPLICAS in files else set()
    )
    assert set(services) == {"postgres", "controlplane", "haproxy"} | tritons
    published = {s: [p.get("host_ip") for p in services[s].get("ports", [])] for s in services}
    # Only the API and the proxy publish ports, and only on loopback by default.
    assert {s for s, ports in published.items() if ports} == {"controlplane", "haproxy"}
    assert all(ip == "127.0.0.1" for ports in published.values() for ip in ports)
    assert config["networks"]["private"]["internal"] is True
    for name in (*tritons, "postgres"):
        assert list(services[name]["networks"]) == ["private"], name
    # The images pip installs into take the CA bundle as a build secret, empty unless one is named.
    pip_builds = {
        s
        for s, service in services.items()
        if service.get("build", {})
        .get("dockerfile", "")
        .endswith(("controlplane.Dockerfile", "triton-cpu.Dockerfile"))
    }
    assert "controlplane" in pip_builds
    for name in pip_builds:
        assert [secret["source"] for secret in services[name]["build"]["secrets"]] == ["pipca"], name
    assert config["secrets"]["pipca"]["file"] == "/dev/null"
    if GPU in files:
        triton = services["triton-blue"]
        assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:25.07")
        devices = triton["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


# -- the running stack ---------------------------------------------------------------------------


@dataclass
class ComposeStack:
    project: str
    files: tuple[Path, ...]
    env: dict[str, str]
    api: str
    grpc: str
    token: str = ""

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose", "-p", self.project]
        for f in self.files:
            argv += ["-f", str(f)]
        return _run(*argv, *args, env=self.env, timeout=timeout)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=300, headers={"Authorization": f"Bearer {self.token}"})

    def push(self, folder: Path, model: str) -> httpx.Response:
        archive = folder.parent / f"{model}-{uuid.uuid4().hex[:8]}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(folder.rglob("*")):
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
        with self.client() as client:
            return client.post(
                f"/v1/models/{model}/versions",
                content=archive.read_bytes(),
                headers={"content-type": "application/gzip"},
            )

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {
            kind: _run("docker", kind, "ls", "-q", "--filter", label, *extra).stdout.split()
            for kind, extra in (("container", ["-a"]), ("volume", []), ("network", []))
        }


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def images(engine: None) -> None:
    """The stack's images, built from the local base (layers cached between runs)."""
    started = time.monotonic()
    built = _run(str(REPO / "scripts" / "build-images"), "--local-base", timeout=1800)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    print(f"images built in {time.monotonic() - started:.1f} s")


@pytest.fixture(scope="module")
def compose_stack(images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    api_port, grpc_port, http_port = free_ports(3)
    socket = Path("/var/run/docker.sock")
    # The group that may use the engine's socket, for the recycle test (an engine elsewhere: root's).
    socket_gid = socket.stat().st_gid if socket.exists() else 0
    stack = ComposeStack(
        project=f"cp-e2e-{uuid.uuid4().hex[:8]}",
        files=(BASE, LOCAL, DOCKER_API, REPLICAS),
        env={
            **os.environ,
            "CONTROLPLANE_API_PORT": str(api_port),
            "CONTROLPLANE_GRPC_PORT": str(grpc_port),
            "CONTROLPLANE_HTTP_PORT": str(http_port),
            "DOCKER_GID": str(socket_gid),
        },
        api=f"http://127.0.0.1:{api_port}",
        grpc=f"127.0.0.1:{grpc_port}",
    )
    started = time.monotonic()
    up = stack.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "240")
    try:
        assert up.returncode == 0, up.stderr[-3000:] + stack.compose("logs", "--tail", "80").stdout[-6000:]
        print(f"compose up (images built): {time.monotonic() - started:.1f} s")
        token = stack.compose(
            "exec", "-T", "controlplane", "controlplane", "token", "create", "e2e", "--role", "admin"
        )
        assert token.returncode == 0, token.stderr
        stack.token = token.stdout.strip()
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", "--tail", "200").stdout
        (tmp_path_factory.getbasetemp() / f"{stack.project}.log").write_text(logs)
        down = stack.compose("down", "-v", "--timeout", "5")
        assert down.returncode == 0, down.stderr
        assert stack.leftovers() == {"container": [], "volume": [], "network": []}


def _rollout(stack: ComposeStack, body: dict[str, object]) -> dict[str, Any]:
    with stack.client() as client:
        created = client.post("/v1/rollouts", json=body)
        assert created.status_code == 202, created.text
        rollout_id = created.json()["id"]

        def ended() -> bool:
            return not client.get(f"/v1/rollouts/{rollout_id}").json()["active"]

        _wait(ended, 180, f"rollout {rollout_id}")
        return client.get(f"/v1/rollouts/{rollout_id}").json()


def _promote_overhead(stack: ComposeStack, rollout: dict[str, Any]) -> tuple[float, list[float]]:
    """Seconds from the rollout's creation to its first weight move, and Triton's own load time per replica.

    Triton's load times are read from the target pool's logs ("loading: M:V" to "successfully loaded
    'M'", with the engine's timestamps). Replicas load one after the other (so that a pool that serves
    keeps serving), so the control plane's overhead is what their sum leaves.
    """
    created = datetime.fromisoformat(rollout["created_at"])
    shifting = min(datetime.fromisoformat(e["at"]) for e in rollout["events"] if e["to_state"] == "shifting")
    model, version = rollout["model"], rollout["version"]
    services = [f"triton-{rollout['target_pool']}", f"triton-{rollout['target_pool']}-2"]
    loads: list[float] = []
    for service in services:
        lines = stack.compose(
            "logs", "--no-color", "--no-log-prefix", "--timestamps", service
        ).stdout.splitlines()
        started = [_log_time(line) for line in lines if f"loading: {model}:{version}" in line]
        loaded = [_log_time(line) for line in lines if f"successfully loaded '{model}'" in line]
        assert started and loaded, f"no load of {model}:{version} in {service}'s log:\n" + "\n".join(
            lines[-20:]
        )
        end = min(t for t in loaded if t >= started[-1])
        loads.append((end - started[-1]).total_seconds())
    return (shifting - created).total_seconds(), loads


def _log_time(line: str) -> datetime:
    """The engine's timestamp that starts a `docker compose logs --timestamps` line."""
    stamp = line.split(" ", 1)[0]
    # Nanoseconds: fromisoformat takes at most microseconds.
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{whole}.{fraction[:6].ljust(6, '0')}+00:00")


def test_the_compose_stack_serves_rolls_out_rolls_back_survives_and_recycles_with_no_failed_request(
    compose_stack: ComposeStack, tmp_path: Path
) -> None:
    stack = compose_stack
    folders = {v: examples.build_mlp(tmp_path / f"v{v}", seed=v) for v in (1, 2)}
    outputs = {
        f"v{v}": examples.reference_outputs(folder, {"INPUT0": FIXED_INPUT})["OUTPUT0"]
        for v, folder in folders.items()
    }
    for folder in folders.values():
        pushed = stack.push(folder, "mlp")
        assert pushed.status_code == 201, pushed.text
    with stack.client() as client:
        deployed = client.post("/v1/models/mlp/versions/1/deploy")
        checks = client.get("/readyz").json()["checks"]
    assert deployed.status_code == 200, deployed.text
    # The console ships inside the image and is served without a token on the published API port.
    console = httpx.get(f"{stack.api}/ui/", timeout=30)
    assert console.status_code == 200 and '<div id="app"' in console.text
    assert "script-src 'self'" in console.headers["content-security-policy"]
    replicas = sorted(name for name in checks if name.startswith("triton:"))
    assert replicas == [
        "triton:blue:triton-blue",
        "triton:blue:triton-blue-2",
        "triton:green:triton-green",
        "triton:green:triton-green-2",
    ]
    assert all(checks[name] == "ok" for name in replicas), checks
    first_inference = time.monotonic()
    with Load(stack.grpc, outputs, threads=1) as probe:
        _wait(lambda: bool(probe.answers), 30, "a first answer through the proxy")
    print(
        f"first inference through the published port: {time.monotonic() - first_inference:.2f} s after deploy"
    )

    with Load(stack.grpc, outputs, threads=8) as load:
        canary = _rollout(
            stack,
            {
                "model": "mlp",
                "version": 2,
                "strategy": "canary",
                "steps": [20, 50, 100],
                "step_seconds": 2,
                "bake_seconds": 1,
                "gates": {"max_error_rate": 0.01},
            },
        )
        assert canary["state"] == "succeeded", canary["reason"]
        after_canary = len(load.answers)
        to_first_weight, triton_load = _promote_overhead(stack, canary)
        with stack.client() as client:
            back = client.post("/v1/models/mlp/rollback")
        assert back.status_code == 202, back.text
        _wait(
            lambda: not stack.client().get(f"/v1/rollouts/{back.json()['id']}").json()["active"],
            120,
            "rollback",
        )
    assert load.failures == [], load.failures[:3]
    print(
        f"canary + rollback under 8 streams: {len(load.answers)} requests "
        f"({after_canary} during the canary), 0 failed"
    )
    print(
        f"canary call -> first weight on v2 {to_first_weight:.2f} s; Triton's own loads of v2 "
        f"{' + '.join(f'{t:.2f}' for t in triton_load)} s (one replica after the other, from their logs); "
        f"overhead {to_first_weight - sum(triton_load):+.2f} s"
    )

    # Kill the control plane mid-rollout: the container restarts, the new process adopts and finishes.
    with Load(stack.grpc, outputs, threads=8) as load, stack.client() as client:
        created = client.post(
            "/v1/rollouts",
            json={
                "model": "mlp",
                "version": 2,
                "strategy": "canary",
                "steps": [20, 50, 100],
                "step_seconds": 3,
                "bake_seconds": 1,
            },
        )
        assert created.status_code == 202, created.text
        rollout_id = created.json()["id"]
        _wait(lambda: client.get(f"/v1/rollouts/{rollout_id}").json()["state"] == "shifting", 120, "shifting")
        killed = stack.compose(
            "exec", "-T", "controlplane", "sh", "-c", "kill -9 $(cat /proc/1/task/1/children)"
        )
        assert killed.returncode in (0, 137), killed.stderr
        _wait(
            lambda: client.get(f"/v1/rollouts/{rollout_id}").json()["state"] in ("succeeded", "rolled_back"),
            240,
            "the rollout to end after the restart",
        )
        final = client.get(f"/v1/rollouts/{rollout_id}").json()
    assert final["state"] == "succeeded", final["reason"]
    assert load.failures == [], load.failures[:3]
    restarts = stack.compose("ps", "--format", "json", "controlplane").stdout
    print(f"control plane killed mid-rollout: {len(load.answers)} requests, 0 failed; {restarts[:200]}")

    # Recycle the idle pool (blue after the last rollout) under load.
    with Load(stack.grpc, outputs, threads=8) as load, stack.client() as client:
        pools = {p["name"]: p for p in client.get("/v1/pools").json()}
        idle = next(name for name, p in pools.items() if p["weight"] == 0)
        recycled = client.post(f"/v1/pools/{idle}/recycle")
    assert recycled.status_code == 200, recycled.text
    assert load.failures == [], load.failures[:3]
    body = recycled.json()
    assert body["models"] == ["mlp"] and body["memory_before"] and body["memory_after"]
    print(
        f"recycle {idle}: {body['seconds']:.1f} s, memory {body['memory_before'] / 2**20:.0f} MiB -> "
        f"{body['memory_after'] / 2**20:.0f} MiB, {len(load.answers)} requests, 0 failed"
    )


def test_the_registry_runs_on_a_postgresql_container_that_testcontainers_starts(images: None) -> None:
    from testcontainers.community.postgres import PostgresContainer  # type: ignore[import-not-found]

    for name, value in (
        ("TESTCONTAINERS_RYUK_DISABLED", "true"),
        ("TESTCONTAINERS_CONNECTION_MODE", "docker_host"),
        ("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1"),
    ):
        os.environ.setdefault(name, value)
    with PostgresContainer("controlplane/postgres:dev", driver="psycopg") as container:
        db = Database(container.get_connection_url())
        try:
            db.upgrade()
            db.check_schema()
            with db.transaction() as session:
                rollout_store.ensure_pools(session, ("blue", "green"))
            with db.transaction() as session:
                weights = rollout_store.pool_weights(session)
            assert weights == {"blue": 100, "green": 0}
            assert db.engine.dialect.name == "postgresql"
        finally:
            db.dispose()
