"""Supervision of child and adopted processes, adoption decisions, runtime.json, orphan cleanup."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from controlplane.errors import TritonUnavailable
from controlplane.procfs import ProcStat, parse_stat, read_cmdline, read_pid_file, read_stat
from controlplane.runtime.adoption import (
    Action,
    TritonArgs,
    decide_haproxy,
    decide_triton,
    parse_tritonserver_argv,
)
from controlplane.runtime.cleanup import orphaned_stubs
from controlplane.runtime.local import LocalStack, StartupFailed
from controlplane.runtime.ports import free_ports
from controlplane.runtime.process import AdoptedProcess, SupervisedProcess
from controlplane.runtime.state import (
    PoolState,
    ProxyState,
    RuntimeState,
    RuntimeStateError,
    load_state,
    plan_runtime,
    save_state,
    shm_prefix_for,
)
from controlplane.traffic.haproxy import PoolEndpoint, ProxyConfig, render_config
from controlplane.triton.client import ModelStatus

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


def test_a_requested_restart_replaces_the_process_at_once_with_cleanup_and_the_restart_hook(
    tmp_path: Path,
) -> None:
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
        started = time.monotonic()

        proc.restart()

        assert proc.pid != first and proc.is_running()
        # No crash backoff: the new process is there within a fraction of a second.
        assert time.monotonic() - started < 2
        _wait_for(lambda: restarted == [True])
        assert cleanups == [1]
        assert (tmp_path / "pid").read_text().strip() == str(proc.pid)
        assert "stopped for a restart" not in (tmp_path / "log").read_text(), "our log, not the child's"
    finally:
        proc.stop()


def test_restarting_a_process_that_never_started_is_refused(tmp_path: Path) -> None:
    proc = SupervisedProcess("sleeper", SLEEPER, log_path=tmp_path / "log")

    with pytest.raises(StartupFailed, match="not running"):
        proc.restart()


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


# --- adoption of processes a killed control plane left running --------------------------------------


def _orphan_sleeper() -> int:
    """A sleeper that is not our child (its parent shell exits at once), in its own session."""
    script = f"setsid {sys.executable} -c 'import time; time.sleep(60)' >/dev/null 2>&1 & echo $!"
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, timeout=10)
    pid = int(out.stdout.strip())
    _wait_for(lambda: "time.sleep(60)" in " ".join(read_cmdline(pid) or []))
    return pid


def _kill_if_sleeper(pid: int) -> None:
    # Only if the pid still names that sleeper: never signal a reused pid.
    if "time.sleep(60)" in " ".join(read_cmdline(pid) or []):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("use_pidfd", [True, False], ids=["pidfd", "proc-polling"])
def test_an_adopted_process_that_dies_is_cleaned_up_and_restarted_as_our_child(
    tmp_path: Path, use_pidfd: bool
) -> None:
    orphan = _orphan_sleeper()
    events: list[str] = []
    proc = SupervisedProcess(
        "adoptee",
        SLEEPER,
        log_path=tmp_path / "log",
        cleanup=lambda: events.append("cleanup"),
        on_restart=lambda: events.append("restarted"),
        pid_file=tmp_path / "pid",
    )
    try:
        handle = AdoptedProcess.open(orphan, use_pidfd=use_pidfd)
        assert handle is not None and (handle.pidfd is not None) == use_pidfd
        assert read_stat(orphan) is not None and read_stat(orphan).ppid != os.getpid()  # type: ignore[union-attr]
        proc.adopt(handle)
        assert proc.adopted and proc.pid == orphan and proc.is_running()
        assert (tmp_path / "pid").read_text().strip() == str(orphan)
        os.kill(orphan, signal.SIGKILL)
        _wait_for(lambda: proc.pid != orphan and proc.is_running())
        _wait_for(lambda: "restarted" in events)
        assert events[0] == "cleanup", "leftovers are removed before the restart"
        assert not proc.adopted and proc.restarts == 1
        child = proc.pid
        assert child is not None and read_stat(child).ppid == os.getpid()  # type: ignore[union-attr]
        assert (tmp_path / "pid").read_text().strip() == str(child)
    finally:
        proc.stop()
        _kill_if_sleeper(orphan)
    assert not proc.is_running() and not (tmp_path / "pid").exists()


def test_stop_stops_an_adopted_process_with_the_stop_signal(tmp_path: Path) -> None:
    orphan = _orphan_sleeper()
    cleanups: list[int] = []
    proc = SupervisedProcess(
        "adoptee", SLEEPER, log_path=tmp_path / "log", cleanup=lambda: cleanups.append(1), stop_timeout=5
    )
    try:
        handle = AdoptedProcess.open(orphan)
        assert handle is not None
        proc.adopt(handle)
        started = time.monotonic()
        assert proc.stop() is None, "the exit status of a process that is not our child is unknown"
        assert time.monotonic() - started < 4, "SIGTERM ended it; no SIGKILL after the timeout was needed"
        assert not handle.running() and cleanups
        assert proc.restarts == 0
    finally:
        _kill_if_sleeper(orphan)


def test_a_handle_never_signals_a_process_that_reused_the_pid(tmp_path: Path) -> None:
    other = subprocess.Popen(SLEEPER)
    try:
        real = read_stat(other.pid)
        assert real is not None
        # What a handle on an earlier process with the same pid looks like (pidfd unavailable).
        stale = AdoptedProcess(other.pid, start_time=real.start_time - 1, pidfd=None)
        assert not stale.running() and stale.cmdline() is None
        stale.send(signal.SIGKILL)
        time.sleep(0.1)
        assert other.poll() is None, "the newer process with that pid was not touched"
    finally:
        other.kill()
        other.wait()


def test_a_pidfd_handle_reports_exit_and_ignores_signals_afterwards() -> None:
    child = subprocess.Popen(SLEEPER)
    handle = AdoptedProcess.open(child.pid)
    assert handle is not None and handle.running()
    # On a loaded machine /proc may show the argv a moment after Popen returns.
    deadline = time.monotonic() + 5
    while handle.cmdline() != SLEEPER and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handle.cmdline() == SLEEPER
    assert not handle.wait(0.05)
    child.kill()
    assert handle.wait(5) and not handle.running()
    handle.send(signal.SIGKILL)  # no error, no effect
    child.wait()
    handle.close()
    handle.close()
    assert AdoptedProcess.open(child.pid) is None


# --- /proc reading on a fake /proc ---------------------------------------------------------------------


def _fake_proc(root: Path, pid: int, argv: list[str], *, state: str = "S", start_time: int = 1000) -> None:
    entry = root / str(pid)
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    rest = " ".join(["0"] * 13)  # fields 9..21
    (entry / "stat").write_text(f"{pid} (tritonserver) {state} 1 {pid} {pid} 0 -1 {rest} {start_time} 0 0\n")


def test_stat_lines_are_parsed_from_the_last_parenthesis() -> None:
    fields = " ".join(str(i) for i in range(6, 22))  # fields 6..21
    stat = parse_stat(f"42 (odd) name (x)) Z 7 42 {fields} 99999 5 6\n")
    assert (stat.pid, stat.state, stat.ppid, stat.pgrp, stat.start_time) == (42, "Z", 7, 42, 99999)
    assert stat.exited
    with pytest.raises(ValueError):
        parse_stat("garbage")


def test_cmdline_stat_and_pid_files_read_from_a_fake_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _fake_proc(proc, 10, ["/bin/tritonserver", "--model-repository=/r"], start_time=123)
    _fake_proc(proc, 11, [], state="Z")
    assert read_cmdline(10, proc) == ["/bin/tritonserver", "--model-repository=/r"]
    assert read_cmdline(11, proc) is None, "a zombie has no cmdline"
    assert read_cmdline(12, proc) is None
    assert read_stat(10, proc) == ProcStat(pid=10, state="S", ppid=1, pgrp=10, start_time=123)
    assert read_stat(11, proc).exited  # type: ignore[union-attr]
    (tmp_path / "ok.pid").write_text("10\n")
    (tmp_path / "bad.pid").write_text("ten")
    (tmp_path / "zero.pid").write_text("0")
    assert read_pid_file(tmp_path / "ok.pid") == 10
    assert read_pid_file(tmp_path / "bad.pid") is None
    assert read_pid_file(tmp_path / "zero.pid") is None
    assert read_pid_file(tmp_path / "missing.pid") is None


def _triton_argv(
    repository: str = "/state/pools/blue/repository",
    *,
    http: int = 40001,
    grpc: int = 40002,
    metrics: int = 40003,
    shm: str = "cpabc_blue_",
    binary: str = "/venv/pytriton/tritonserver/bin/tritonserver",
    extra: tuple[str, ...] = (),
) -> list[str]:
    return [
        binary,
        f"--model-repository={repository}",
        "--backend-directory=/state/backends",
        "--model-control-mode=explicit",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        f"--backend-config=python,shm-region-prefix-name={shm}",
        *extra,
    ]


def test_a_pid_is_ours_only_while_it_runs_our_tritonserver_on_our_repository(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    wanted = _triton_argv()
    _fake_proc(proc, 20, wanted, start_time=500)
    handle = AdoptedProcess.open(20, proc=proc, use_pidfd=False)
    assert handle is not None
    assert decide_triton(handle.cmdline(), wanted).action is Action.ADOPT

    # The server died and its pid went to an unrelated process: the handle no longer vouches for it.
    _fake_proc(proc, 20, ["/usr/bin/python3", "-m", "http.server"], start_time=900)
    assert not handle.running() and handle.cmdline() is None
    fresh = AdoptedProcess.open(20, proc=proc, use_pidfd=False)
    assert fresh is not None
    decision = decide_triton(fresh.cmdline(), wanted)
    assert decision.action is Action.START and "another program" in decision.reason

    _fake_proc(proc, 21, wanted, state="Z")
    assert AdoptedProcess.open(21, proc=proc, use_pidfd=False) is None, "a zombie is not adoptable"


@pytest.mark.parametrize(
    ("running", "action"),
    [
        (None, Action.START),
        (_triton_argv(), Action.ADOPT),
        (_triton_argv(binary="/other/venv/bin/tritonserver"), Action.ADOPT),
        (_triton_argv(extra=("--exit-timeout-secs=5",)), Action.ADOPT),
        (_triton_argv(grpc=49999), Action.REPLACE),
        (_triton_argv(shm="cpabc_green_"), Action.REPLACE),
        (_triton_argv("/state/pools/green/repository"), Action.START),
        (_triton_argv(binary="/usr/bin/haproxy"), Action.START),
        (["/usr/bin/sleep", "60"], Action.START),
    ],
    ids=[
        "no-process",
        "same",
        "other-binary-path",
        "other-flags",
        "other-port",
        "other-shm-prefix",
        "other-pool",
        "not-triton",
        "unrelated",
    ],
)
def test_triton_adoption_decisions(running: list[str] | None, action: Action) -> None:
    assert decide_triton(running, _triton_argv()).action is action


def test_parse_tritonserver_argv_extracts_identity() -> None:
    found = parse_tritonserver_argv(_triton_argv())
    assert found == TritonArgs("/state/pools/blue/repository", 40001, 40002, 40003, "cpabc_blue_")
    assert parse_tritonserver_argv(["/bin/tritonserver", "--http-port=1"]) is None


HAPROXY = ["/usr/sbin/haproxy", "-db", "-f", "/state/proxy/haproxy.cfg"]


@pytest.mark.parametrize(
    ("running", "running_config", "action"),
    [
        (None, b"cfg", Action.START),
        (HAPROXY, b"cfg", Action.ADOPT),
        (HAPROXY, b"cfg with other weights", Action.REPLACE),
        (HAPROXY, None, Action.REPLACE),
        (["/usr/sbin/haproxy", "-f", "/state/proxy/haproxy.cfg"], b"cfg", Action.REPLACE),
        (["/usr/sbin/haproxy", "-db", "-f", "/other/haproxy.cfg"], b"cfg", Action.START),
        (["/usr/bin/python3", "x"], b"cfg", Action.START),
    ],
    ids=[
        "no-process",
        "same",
        "config-changed",
        "config-missing",
        "other-flags",
        "other-config",
        "unrelated",
    ],
)
def test_haproxy_adoption_decisions(
    running: list[str] | None, running_config: bytes | None, action: Action
) -> None:
    decision = decide_haproxy(running, HAPROXY, running_config=running_config, wanted_config=b"cfg")
    assert decision.action is action


# --- runtime.json ------------------------------------------------------------------------------------


def _state() -> RuntimeState:
    return RuntimeState(
        pools={
            "blue": PoolState(40001, 40002, 40003, "cpabc_blue_", 1),
            "green": PoolState(40004, 40005, 40006, "cpabc_green_", 0),
        },
        proxy=ProxyState("127.0.0.1", 8001, 8002),
    )


def test_runtime_json_round_trips_and_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "state" / "runtime.json"
    assert load_state(path) is None
    save_state(path, _state())
    first = path.read_bytes()
    assert load_state(path) == _state()
    save_state(path, _state())
    assert path.read_bytes() == first, "an unchanged state writes identical bytes"
    assert sorted(p.name for p in path.parent.iterdir()) == ["runtime.json"], "no temporary file left"
    doc = json.loads(first)
    assert doc["format"] == 1 and doc["proxy"] == {"host": "127.0.0.1", "grpc_port": 8001, "http_port": 8002}
    assert doc["pools"]["green"] == {
        "http_port": 40004,
        "grpc_port": 40005,
        "metrics_port": 40006,
        "shm_prefix": "cpabc_green_",
        "initial_weight": 0,
    }


def _two_pools(*, b_ports: tuple[int, int, int], b_prefix: str) -> str:
    a = {"http_port": 1, "grpc_port": 2, "metrics_port": 3, "shm_prefix": "p_"}
    b = dict(zip(("http_port", "grpc_port", "metrics_port"), b_ports, strict=True), shm_prefix=b_prefix)
    return json.dumps({"format": 1, "pools": {"a": a, "b": b}})


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"format": 2, "pools": {}}',
        '{"format": 1, "pools": {"blue": {"http_port": 1}}}',
        '{"format": 1, "pools": {"blue": {"http_port": 1, "grpc_port": 2, "metrics_port": 70000,'
        ' "shm_prefix": "p_"}}}',
        _two_pools(b_ports=(3, 4, 5), b_prefix="q_"),
        _two_pools(b_ports=(4, 5, 6), b_prefix="p_b_"),
    ],
    ids=["not-json", "unknown-format", "missing-field", "bad-port", "shared-port", "prefix-of-another"],
)
def test_an_unusable_runtime_json_is_refused_with_the_reason(tmp_path: Path, text: str) -> None:
    path = tmp_path / "runtime.json"
    path.write_text(text)
    with pytest.raises(RuntimeStateError, match=r"runtime\.json"):
        load_state(path)


def _no_free_ports(count: int, exclude: frozenset[int]) -> list[int]:
    raise AssertionError("no new ports should be needed")


def _counting_ports(start: int = 50000) -> Any:
    calls: list[tuple[int, frozenset[int]]] = []

    def free(count: int, exclude: frozenset[int]) -> list[int]:
        calls.append((count, exclude))
        return [p for p in range(start, start + count + len(exclude)) if p not in exclude][:count]

    free.calls = calls  # type: ignore[attr-defined]
    return free


PROXY = ProxyState("127.0.0.1", 8001, 8002)


def test_a_first_start_picks_free_ports_prefixes_and_default_weights() -> None:
    free = _counting_ports()
    state = plan_runtime(
        None, pool_names=("blue", "green"), tag="abc", proxy=PROXY, free_ports=free, initial_weights=None
    )
    assert state.pools["blue"] == PoolState(50000, 50001, 50002, "cpabc_blue_", 1)
    assert state.pools["green"] == PoolState(50003, 50004, 50005, "cpabc_green_", 1)
    assert free.calls == [(6, frozenset())]
    assert state.proxy == PROXY


def test_later_starts_reuse_ports_prefixes_and_weights() -> None:
    previous = _state()
    again = plan_runtime(
        previous, pool_names=("blue", "green"), tag="xyz", proxy=PROXY, free_ports=_no_free_ports
    )
    assert again.pools == previous.pools
    changed = plan_runtime(
        previous,
        pool_names=("blue", "green"),
        tag="xyz",
        proxy=PROXY,
        free_ports=_no_free_ports,
        initial_weights={"green": 5},
    )
    assert changed.pools["green"].initial_weight == 5 and changed.pools["blue"].initial_weight == 1


def test_ports_base_wins_over_remembered_ports_and_keeps_the_prefix() -> None:
    state = plan_runtime(
        _state(),
        pool_names=("blue", "green"),
        tag="abc",
        proxy=PROXY,
        ports_base=30000,
        free_ports=_no_free_ports,
    )
    assert state.pools["blue"] == PoolState(30000, 30001, 30002, "cpabc_blue_", 1)
    assert state.pools["green"] == PoolState(30003, 30004, 30005, "cpabc_green_", 0)


def test_pools_not_requested_keep_their_entry_and_their_ports_stay_reserved() -> None:
    free = _counting_ports(start=40004)
    state = plan_runtime(_state(), pool_names=("blue", "red"), tag="abc", proxy=PROXY, free_ports=free)
    assert state.pools["green"] == _state().pools["green"]
    assert set(state.pools["red"].ports).isdisjoint({40001, 40002, 40003, 40004, 40005, 40006})
    assert free.calls[0][1] == frozenset({40001, 40002, 40003, 40004, 40005, 40006})


def test_a_running_servers_ports_are_recovered_when_its_entry_was_lost() -> None:
    lost = PoolState(41001, 41002, 41003, "cpold_blue_")
    state = plan_runtime(
        None,
        pool_names=("blue",),
        tag="abc",
        proxy=PROXY,
        recovered={"blue": lost},
        free_ports=_no_free_ports,
    )
    assert state.pools["blue"] == lost


def test_initial_weights_must_name_known_pools_and_be_in_range() -> None:
    with pytest.raises(ValueError, match="unknown pools"):
        plan_runtime(
            None,
            pool_names=("blue",),
            tag="a",
            proxy=PROXY,
            initial_weights={"red": 1},
            free_ports=_counting_ports(),
        )
    with pytest.raises(ValueError, match="weight"):
        plan_runtime(
            None,
            pool_names=("blue",),
            tag="a",
            proxy=PROXY,
            initial_weights={"blue": 300},
            free_ports=_counting_ports(),
        )


def test_shm_prefixes_never_start_one_another() -> None:
    state = plan_runtime(None, pool_names=("a", "a_b"), tag="t", proxy=PROXY, free_ports=_counting_ports())
    first, second = state.pools["a"].shm_prefix, state.pools["a_b"].shm_prefix
    assert first == "cpt_a_"
    assert not second.startswith(first) and not first.startswith(second)
    assert shm_prefix_for("t", "a_b", []) == "cpt_a_b_"


def _rendered(blue: int, green: int, *, green_port: int = 40005) -> bytes:
    pools = (
        PoolEndpoint(name="blue", host="127.0.0.1", grpc_port=40002, http_port=40001, weight=blue),
        PoolEndpoint(name="green", host="127.0.0.1", grpc_port=green_port, http_port=40004, weight=green),
    )
    config = ProxyConfig(
        grpc_bind=("127.0.0.1", 8001),
        http_bind=("127.0.0.1", 8002),
        admin_socket=Path("/s/a.sock"),
        pools=pools,
    )
    return render_config(config).encode()


def test_a_proxy_whose_config_differs_only_in_weights_is_adopted_and_its_file_refreshed() -> None:
    decision = decide_haproxy(HAPROXY, HAPROXY, running_config=_rendered(1, 0), wanted_config=_rendered(0, 1))
    assert decision.action is Action.ADOPT and decision.refresh_config
    assert "weight 0" in decision.reason and "weight 1" in decision.reason
    same = decide_haproxy(HAPROXY, HAPROXY, running_config=_rendered(1, 0), wanted_config=_rendered(1, 0))
    assert same.action is Action.ADOPT and not same.refresh_config


def test_a_replaced_proxy_is_logged_with_what_changed_in_its_config() -> None:
    old, new = _rendered(1, 0), _rendered(1, 0, green_port=40099)
    decision = decide_haproxy(HAPROXY, HAPROXY, running_config=old, wanted_config=new)
    assert decision.action is Action.REPLACE
    assert "-server green 127.0.0.1:40005 proto h2 weight 0" in decision.reason
    assert "+server green 127.0.0.1:40099 proto h2 weight 0" in decision.reason


# --- LocalStack start-up refusals (no process is started) --------------------------------------------


def test_a_remembered_triton_port_taken_by_another_process_fails_the_start_clearly(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        grpc, metrics, proxy_grpc, proxy_http = free_ports(4, exclude={taken})
        save_state(
            state_dir / "runtime.json",
            RuntimeState(pools={"blue": PoolState(taken, grpc, metrics, "cpunit_blue_")}),
        )
        stack = LocalStack(state_dir, host="127.0.0.1", grpc_port=proxy_grpc, http_port=proxy_http)
        assert (stack.pools["blue"].http_port, stack.pools["blue"].grpc_port) == (taken, grpc)
        try:
            with pytest.raises(
                StartupFailed, match=rf"port {taken} \(http port of Triton pool blue, kept in"
            ):
                stack.start(timeout=5)
            assert stack.pools["blue"].process is not None and stack.pools["blue"].process.pid is None
        finally:
            stack.stop()
    assert load_state(state_dir / "runtime.json").pools["blue"].http_port == taken  # type: ignore[union-attr]


def test_a_second_stack_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    holder = os.open(state_dir / "runtime.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        stack = LocalStack(state_dir, host="127.0.0.1", grpc_port=1, http_port=2)
        with pytest.raises(StartupFailed, match="another control plane"):
            stack.start(timeout=5)
        stack.stop()
    finally:
        os.close(holder)


def test_triton_ports_are_never_the_proxys_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The proxy binds its ports only after the Tritons have started: until then the kernel offers them too.
    candidates = [7001, 7002, *range(7100, 7120)]

    def lowest_free(count: int, host: str = "127.0.0.1", *, exclude: Any = ()) -> list[int]:
        return [port for port in candidates if port not in exclude][:count]

    monkeypatch.setattr("controlplane.runtime.local.free_ports", lowest_free)
    stack = LocalStack(
        tmp_path / "state", host="127.0.0.1", grpc_port=7001, http_port=7002, pool_names=("blue", "green")
    )
    chosen = [port for p in stack.pools.values() for port in (p.http_port, p.grpc_port, p.metrics_port)]
    assert sorted(chosen) == list(range(7100, 7106))


class _UnloadingTriton:
    """A Triton's repository index over time: unload requests move READY models to UNLOADING, then gone."""

    def __init__(self, states: dict[str, list[str]]) -> None:
        self.states = states  # model -> the states its next index reads return, the last one repeated
        self.unloaded: list[str] = []
        self.closed = False

    def repository_index(self) -> list[ModelStatus]:
        index = []
        for name, states in self.states.items():
            state = states.pop(0) if len(states) > 1 else states[0]
            index.append(ModelStatus(name=name, version="1", state=state, reason=""))
        return index

    def unload(self, model: str) -> None:
        self.unloaded.append(model)
        self.states[model] = ["UNLOADING", "UNAVAILABLE"]

    def close(self) -> None:
        self.closed = True


def test_a_stopping_pool_unloads_its_models_and_waits_until_they_are_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    triton = _UnloadingTriton({"mlp": ["READY"], "two_inputs": ["READY"], "faulty": ["UNAVAILABLE"]})
    monkeypatch.setattr("controlplane.runtime.local.TritonClient", lambda *_a, **_kw: triton)
    pool = type("Pool", (), {"name": "green", "http_urls": ["http://127.0.0.1:1"], "admin_headers": {}})()
    LocalStack._unload_models(pool, timeout=5)  # type: ignore[arg-type]
    assert triton.unloaded == ["mlp", "two_inputs"]
    assert triton.states == {"mlp": ["UNAVAILABLE"], "two_inputs": ["UNAVAILABLE"], "faulty": ["UNAVAILABLE"]}
    assert triton.closed


def test_a_stopping_pool_with_a_load_under_way_leaves_the_unloading_to_tritonserver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A reconcile pass that began before the stop: unloading under it would only make it load again.
    triton = _UnloadingTriton({"mlp": ["READY"], "standby": ["LOADING"]})
    monkeypatch.setattr("controlplane.runtime.local.TritonClient", lambda *_a, **_kw: triton)
    pool = type("Pool", (), {"name": "green", "http_urls": ["http://127.0.0.1:1"], "admin_headers": {}})()
    LocalStack._unload_models(pool, timeout=5)  # type: ignore[arg-type]
    assert triton.unloaded == []
    assert triton.closed


def test_a_stopping_pool_whose_triton_does_not_answer_is_stopped_all_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Silent(_UnloadingTriton):
        def repository_index(self) -> list[ModelStatus]:
            raise TritonUnavailable("Triton did not answer repository index")

    silent = Silent({})
    monkeypatch.setattr("controlplane.runtime.local.TritonClient", lambda *_a, **_kw: silent)
    pool = type("Pool", (), {"name": "blue", "http_urls": ["http://127.0.0.1:1"], "admin_headers": {}})()
    started = time.monotonic()
    LocalStack._unload_models(pool, timeout=5)  # type: ignore[arg-type]
    assert time.monotonic() - started < 1
    assert silent.unloaded == [] and silent.closed
