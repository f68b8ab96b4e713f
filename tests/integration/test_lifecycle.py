"""Life of the embedded stack: clean stop, restart with state, supervision of a crashed Triton.

The first two tests share one stack with mlp deployed: the first stops it
and starts it again on the same state, and the second kills a Triton of
whichever of the two is running; the fixture stops the last one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from stack import CONTROLPLANE, Stack, start_stack
from triton_helpers import load_examples_module
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration

examples = load_examples_module()
DATA = np.ones((1, 16), dtype=np.float32)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def _shm_prefix(stack: Stack) -> str:
    argv = (stack.state_dir / "pools" / "blue" / "tritonserver.pid").read_text()
    cmdline = Path(f"/proc/{argv.strip()}/cmdline").read_bytes().split(b"\0")
    option = next(a for a in cmdline if a.startswith(b"--backend-config=python,shm-region-prefix-name="))
    return option.split(b"=", 2)[2].decode()


def _infer(stack: Stack) -> np.ndarray:
    client = grpcclient.InferenceServerClient(stack.grpc_url)
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(DATA)
    try:
        return client.infer("mlp", [tensor]).as_numpy("OUTPUT0")
    finally:
        client.close()


def _wait_healthy(stack: Stack, model: str, timeout: float) -> float:
    start = time.monotonic()
    with stack.client() as client:
        while client.get("/healthz", params={"model": model}).status_code != 200:
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{model} not healthy after {timeout} s:\n{stack.log()[-3000:]}")
            time.sleep(0.2)
    return time.monotonic() - start


@dataclass
class Deployed:
    """The running stack, replaced when a test restarts it, with mlp version 1 deployed on blue."""

    stack: Stack
    state_dir: Path
    want: np.ndarray


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    root = tmp_path_factory.mktemp("lifecycle")
    folder = examples.build_mlp(root / "examples", seed=5)
    want = examples.reference_outputs(folder, {"INPUT0": DATA})["OUTPUT0"]
    running = Deployed(start_stack(root / "state"), root / "state", want)
    try:
        assert running.stack.push(folder, "mlp").status_code == 201
        with running.stack.client() as client:
            assert client.post("/v1/models/mlp/versions/1/deploy").status_code == 200
        yield running
    finally:
        code = running.stack.stop()
        assert code == 0, running.stack.log()


def test_stop_leaves_nothing_running_and_restart_serves_the_deployed_version_again(
    deployed: Deployed,
) -> None:
    stack, state = deployed.stack, deployed.state_dir
    try:
        np.testing.assert_allclose(_infer(stack), deployed.want, rtol=1e-5)
        prefix = _shm_prefix(stack)
        assert list(Path("/dev/shm").glob(f"{prefix}*")), "a loaded Python-backend model uses shm regions"
    finally:
        code = stack.stop()
    assert code == 0, stack.log()
    assert "stopped" in stack.log()
    assert _processes_mentioning(str(state)) == []
    assert _processes_mentioning(prefix) == []
    assert list(Path("/dev/shm").glob(f"{prefix}*")) == []

    again = deployed.stack = start_stack(state)
    np.testing.assert_allclose(_infer(again), deployed.want, rtol=1e-5)
    with again.client() as client:
        assert client.get("/v1/models/mlp").json()["deployments"][0]["version"] == 1


def test_a_killed_triton_is_restarted_its_stubs_cleaned_and_its_models_reloaded(deployed: Deployed) -> None:
    stack = deployed.stack
    prefix = _shm_prefix(stack)
    pid = int((stack.state_dir / "pools" / "blue" / "tritonserver.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    recovered = _wait_healthy(stack, "mlp", timeout=60)
    # The restarted Triton answers only once mlp is loaded; the proxy's health check (rise 2) takes it
    # back into rotation about a second after that.
    deadline = time.monotonic() + 10
    while True:
        try:
            assert _infer(stack).shape == (1, 4)
            break
        except InferenceServerException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    stubs = [p for p in _processes_mentioning(prefix) if "triton_python_backend_stub" in p]
    assert len(stubs) == 1, stubs  # the reloaded model's stub only: the orphan was killed
    with stack.client() as client:
        assert client.get("/readyz").status_code == 200
    print(f"Triton killed with -9: model READY again after {recovered:.1f} s")


def test_up_refuses_a_stale_schema_until_db_upgrade_has_run(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")},
        "CONTROLPLANE_STATE_DIR": str(tmp_path / "state"),
        "CONTROLPLANE_AUTO_MIGRATE": "false",
    }
    refused = subprocess.run([str(CONTROLPLANE), "up"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: database schema is at nothing, this code needs 0010: "
        "run `controlplane db upgrade` (stale_schema)"
    )
    assert _processes_mentioning(str(tmp_path / "state")) == []

    stale = subprocess.run([str(CONTROLPLANE), "db", "current"], env=env, capture_output=True, text=True)
    assert stale.returncode == 1 and stale.stdout.strip() == "empty (code needs 0010)"
    upgraded = subprocess.run([str(CONTROLPLANE), "db", "upgrade"], env=env, capture_output=True, text=True)
    assert upgraded.returncode == 0 and upgraded.stdout.strip() == "database at revision 0010"
    current = subprocess.run([str(CONTROLPLANE), "db", "current"], env=env, capture_output=True, text=True)
    assert current.returncode == 0 and current.stdout.strip() == "0010 (code needs 0010)"
