"""A kill -9 of the control plane fails no request: the next start adopts Triton and HAProxy.

The control plane here is ``adoption_stack.py`` run as a subprocess (a
two-pool ``LocalStack``, blue serving ``mlp``, green at weight 0), so the test
can kill it for real. Clients are plain tritonclient gRPC threads talking to
the proxy port the whole time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from controlplane.procfs import read_cmdline, read_pid_file, read_stat
from controlplane.runtime.ports import free_ports

pytestmark = pytest.mark.integration

HELPER = Path(__file__).with_name("adoption_stack.py")
DATA = np.ones((1, 16), dtype=np.float32)
STUB = "triton_python_backend_stub"


@dataclass
class ControlPlane:
    """One run of ``adoption_stack.py``."""

    process: subprocess.Popen[bytes]
    info: dict[str, Any]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a service manager would; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@dataclass
class Runs:
    """Every control plane a test launched on one state directory; cleaned up whatever happens."""

    tmp_path: Path
    state_dir: Path
    grpc_port: int
    http_port: int
    launched: list[ControlPlane] = field(default_factory=list)
    prefixes: set[str] = field(default_factory=set)

    @property
    def proxy_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def launch(self, weights: str = "blue=1,green=0", timeout: float = 60) -> ControlPlane:
        """Start a control plane and wait until it reports its processes."""
        label = f"run{len(self.launched) + 1}"
        info_file = self.tmp_path / f"{label}.json"
        log_path = self.tmp_path / f"{label}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, str(HELPER), str(self.state_dir), str(self.grpc_port), str(self.http_port),
                 str(info_file), weights],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=HELPER.parent,
            )  # fmt: skip
        run = ControlPlane(process, {}, log_path)
        self.launched.append(run)
        deadline = time.monotonic() + timeout
        while not info_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{label} did not come up:\n{run.log()[-4000:]}")
            time.sleep(0.05)
        run.info = json.loads(info_file.read_text())
        self.prefixes.update(p["shm_prefix"] for p in run.info["pools"].values())
        return run

    def leftovers(self) -> list[str]:
        """Processes and /dev/shm regions of this state directory still around."""
        markers = [str(self.state_dir), *self.prefixes]
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            argv = read_cmdline(int(entry.name))
            text = " ".join(argv or [])
            if any(marker in text for marker in markers):
                found.append(f"{entry.name}: {text[:160]}")
        found += [str(p) for prefix in self.prefixes for p in Path("/dev/shm").glob(f"{prefix}*")]
        return found

    def clean(self) -> None:
        """Stop launched control planes, then kill whatever of this state directory survived."""
        for run in self.launched:
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.stop()
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()
        markers = [str(self.state_dir), *self.prefixes]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                text = " ".join(read_cmdline(int(entry.name)) or [])
                if any(marker in text for marker in markers):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(entry.name), signal.SIGKILL)
        for prefix in self.prefixes:
            for region in Path("/dev/shm").glob(f"{prefix}*"):
                region.unlink(missing_ok=True)


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    grpc_port, http_port = free_ports(2)
    state = Runs(tmp_path, tmp_path / "state", grpc_port, http_port)
    try:
        yield state
    finally:
        state.clean()


class ClientLoad:
    """Threads doing gRPC ``infer`` of mlp through the proxy back to back, counting every outcome."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    @property
    def sent(self) -> int:
        with self._lock:
            return self.ok + len(self.failures)

    def _loop(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        tensor = grpcclient.InferInput("INPUT0", list(DATA.shape), "FP32")
        tensor.set_data_from_numpy(DATA)
        try:
            while not self._stop.is_set():
                try:
                    out = client.infer("mlp", [tensor], client_timeout=10).as_numpy("OUTPUT0")
                    assert out is not None and out.shape == (1, 4)
                except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                    with self._lock:
                        self.failures.append(f"{time.monotonic():.3f} {exc}")
                    continue
                with self._lock:
                    self.ok += 1
        finally:
            client.close()

    def __enter__(self) -> ClientLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


def _wait_until(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not reached within {timeout} s: {what}")
        time.sleep(0.02)


def _pids(run: ControlPlane) -> dict[str, int]:
    return {"haproxy": run.info["proxy"]["pid"], **{n: p["pid"] for n, p in run.info["pools"].items()}}


def _kill_9(run: ControlPlane) -> None:
    run.process.kill()
    run.process.wait(10)


def test_kill_9_of_the_control_plane_fails_no_request_and_the_next_start_adopts_everything(
    runs: Runs,
) -> None:
    first = runs.launch()
    assert first.info["loaded_model"] is True
    assert not first.info["proxy"]["adopted"]
    with ClientLoad(runs.proxy_url) as load:
        _wait_until(lambda: load.ok >= 50, 20, "clients answered through the proxy")
        before_kill = load.sent
        _kill_9(first)
        time.sleep(0.5)  # the data plane serves on its own meanwhile
        restart = time.monotonic()
        second = runs.launch()
        restart_seconds = time.monotonic() - restart
        time.sleep(3)
    sent, failures = load.sent, list(load.failures)

    assert failures == [], failures[:5]
    assert sent > before_kill > 0
    assert _pids(second) == _pids(first)
    assert second.info["proxy"]["adopted"] is True
    assert all(p["adopted"] for p in second.info["pools"].values())
    assert second.info["loaded_model"] is False, "the adopted blue still had mlp loaded"
    assert "adopting haproxy" in second.log()

    assert second.stop() == 0, second.log()[-3000:]
    assert runs.leftovers() == []
    print(
        f"\nkill -9 of the control plane under 4 gRPC clients: {sent} requests, {len(failures)} failed; "
        f"restarted control plane adopted everything in {restart_seconds:.1f} s "
        f"(process start to report, stack.start() itself {second.info['started_seconds']:.2f} s)"
    )


def test_a_killed_adopted_triton_is_restarted_as_a_child_and_serves_again(runs: Runs) -> None:
    first = runs.launch()
    _kill_9(first)
    # Other initial weights: runtime state only, so the proxy is still adopted (same pid).
    second = runs.launch(weights="blue=2,green=0")
    assert second.info["proxy"] == {"pid": first.info["proxy"]["pid"], "adopted": True}
    assert "differs only in initial server weights" in second.log()
    blue = second.info["pools"]["blue"]
    assert blue["adopted"] is True and blue["pid"] == first.info["pools"]["blue"]["pid"]
    pid_file = runs.state_dir / "pools" / "blue" / "tritonserver.pid"
    adopted_pid = blue["pid"]

    def blue_serves_mlp_again() -> bool:
        pid = read_pid_file(pid_file)
        stat = read_stat(pid) if pid else None
        if stat is None or pid == adopted_pid or stat.ppid != second.process.pid:
            return False
        client = grpcclient.InferenceServerClient(blue["grpc_url"])
        try:
            return bool(client.is_model_ready("mlp"))
        finally:
            client.close()

    before = read_stat(adopted_pid)
    assert before is not None
    os.kill(adopted_pid, signal.SIGKILL)
    recovered = _wait_until(blue_serves_mlp_again, 30, "blue restarted as a child with mlp READY")
    after = read_stat(adopted_pid)
    assert after is None or after.exited or after.start_time != before.start_time
    new_pid = read_pid_file(pid_file)
    stubs = [
        pid
        for pid in (int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit())
        if (argv := read_cmdline(pid)) and argv[0].endswith(STUB) and argv[2].startswith(blue["shm_prefix"])
    ]
    assert [read_stat(pid).ppid for pid in stubs] == [new_pid], "the dead server's stub was removed"  # type: ignore[union-attr]
    through_proxy = _wait_until(lambda: _infer(runs.proxy_url), 15, "mlp answers through the proxy")
    assert second.stop() == 0, second.log()[-3000:]
    assert runs.leftovers() == []
    print(
        f"\nkill -9 of an adopted tritonserver: restarted as a child, mlp READY again after {recovered:.1f} s"
        f" (through the proxy {through_proxy:.1f} s later)"
    )


def _infer(url: str) -> bool:
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("INPUT0", list(DATA.shape), "FP32")
    tensor.set_data_from_numpy(DATA)
    try:
        return client.infer("mlp", [tensor], client_timeout=2).as_numpy("OUTPUT0") is not None
    finally:
        client.close()
