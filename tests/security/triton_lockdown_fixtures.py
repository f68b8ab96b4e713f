"""Fixtures of the Triton lockdown tests: one real ``controlplane up`` with mlp serving on blue.

The state directory lives in its own folder under the system temp directory,
not under pytest's: pytest resets its own root folder to mode 0700 whenever a
session starts, which would cut Triton's unprivileged user off from the
repositories of a stack that is running meanwhile.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from stack import REPO_ROOT, Stack, start_stack

from controlplane.procfs import read_pid_file
from controlplane.triton.server_command import admin_headers

MLP_INPUT = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)


@dataclass
class TritonPool:
    """One pool's Triton as ``runtime.json`` and its pid file describe it."""

    name: str
    root: Path
    http_port: int
    grpc_port: int
    metrics_port: int
    admin_key: str

    @property
    def headers(self) -> dict[str, str]:
        return admin_headers(self.admin_key)

    @property
    def pid(self) -> int | None:
        return read_pid_file(self.root / "tritonserver.pid")


@dataclass
class LockedStack:
    """The running stack and what a test needs to attack it."""

    stack: Stack
    state_dir: Path
    pools: dict[str, TritonPool]

    def reload_pools(self) -> None:
        """Re-read ``runtime.json`` (a restarted Triton keeps its key, a fresh start gets a new one)."""
        self.pools = read_pools(self.state_dir)


def read_pools(state_dir: Path) -> dict[str, TritonPool]:
    doc = json.loads((state_dir / "runtime.json").read_text())
    return {
        name: TritonPool(
            name=name,
            root=state_dir / "pools" / name,
            http_port=entry["http_port"],
            grpc_port=entry["grpc_port"],
            metrics_port=entry["metrics_port"],
            admin_key=entry["admin_key"],
        )
        for name, entry in doc["pools"].items()
    }


def infer_mlp(url: str) -> np.ndarray:
    """One plain gRPC inference of mlp, with no header at all."""
    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("INPUT0", list(MLP_INPUT.shape), "FP32")
        tensor.set_data_from_numpy(MLP_INPUT)
        out = client.infer("mlp", [tensor], client_timeout=10).as_numpy("OUTPUT0")
        assert out is not None
        return out
    finally:
        client.close()


@pytest.fixture(scope="module")
def locked_stack() -> Iterator[LockedStack]:
    """``controlplane up`` (as whoever runs the tests) with mlp version 1 deployed on blue."""
    base = Path(tempfile.mkdtemp(prefix="cp-triton-lockdown-"))
    state_dir = base / "state"
    stack = start_stack(state_dir)
    try:
        pushed = stack.push(REPO_ROOT / "model_repository" / "mlp", "mlp")
        assert pushed.status_code == 201, pushed.text
        with stack.client() as client:
            deployed = client.post("/v1/models/mlp/versions/1/deploy")
        assert deployed.status_code == 200, deployed.text
        yield LockedStack(stack=stack, state_dir=state_dir, pools=read_pools(state_dir))
    finally:
        code = stack.stop()
        log = stack.log()
        shutil.rmtree(base, ignore_errors=True)
        assert code == 0, log[-3000:]


def process_ids(pid: int) -> tuple[int, int, list[int]]:
    """(effective uid, effective gid, supplementary groups) of ``pid`` from ``/proc/<pid>/status``."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    uid = int(fields["Uid"].split()[1])
    gid = int(fields["Gid"].split()[1])
    groups = [int(g) for g in fields["Groups"].split()]
    return uid, gid, groups


def running_as_root() -> bool:
    return os.geteuid() == 0
