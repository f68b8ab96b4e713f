"""Supervision of child processes and removal of a dead Triton's leftovers."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from controlplane.runtime.cleanup import orphaned_stubs
from controlplane.runtime.process import SupervisedProcess

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_a_child_that_dies_is_restarted_and_cleanup_runs_in_between(tmp_path: Path) -> None:
    cleanups: list[int] = []
    restarted: list[bool] = []
    proc = SupervisedProcess(
        "sleeper",
        SLEEPER,
        log_path=tmp_path / "log",
        cleanup=lambda: cleanups.append(1),
        on_restart=lambda: restarted.append(True),
        pid_file=tmp_path / "pid",
    )
    proc.start()
    try:
        first = proc.pid
        assert first is not None and (tmp_path / "pid").read_text().strip() == str(first)
        os.kill(first, signal.SIGKILL)
        _wait_for(lambda: proc.pid != first and proc.is_running())
        _wait_for(lambda: restarted == [True])
        assert proc.restarts == 1 and cleanups
        assert (tmp_path / "pid").read_text().strip() == str(proc.pid)
    finally:
        proc.stop()
    assert not proc.is_running()
    assert not (tmp_path / "pid").exists()


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)",
    ]
    proc = SupervisedProcess("stubborn", stubborn, log_path=tmp_path / "log", stop_timeout=0.5)
    proc.start()
    _wait_for(lambda: "up" in (tmp_path / "log").read_text())
    started = time.monotonic()
    code = proc.stop()
    assert code == -signal.SIGKILL
    assert time.monotonic() - started < 5
    assert proc.restarts == 0


def test_only_stubs_of_the_given_server_count_as_its_orphans(tmp_path: Path) -> None:
    def fake_process(pid: int, *argv: str) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")

    stub = "/state/backends/python/triton_python_backend_stub"
    fake_process(10, stub, "/repo/mlp/1/model.onnx", "cpabc_blue_1234-uuid", "1048576")
    fake_process(11, stub, "/repo/mlp/1/model.onnx", "cpabc_green_99-uuid", "1048576")
    fake_process(12, "/usr/bin/python3", "x", "cpabc_blue_not-a-stub")
    (tmp_path / "self").mkdir()
    assert orphaned_stubs("cpabc_blue_", proc=tmp_path) == [10]
