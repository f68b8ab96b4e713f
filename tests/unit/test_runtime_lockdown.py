"""Admin keys in runtime.json, adoption of locked-down Tritons, state-directory modes (no server started)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from controlplane.runtime.adoption import Action, decide_triton, parse_tritonserver_argv
from controlplane.runtime.local import LocalStack, StartupFailed
from controlplane.runtime.permissions import make_traversable, secure_state_dir
from controlplane.runtime.state import (
    PoolState,
    RuntimeState,
    RuntimeStateError,
    load_state,
    save_state,
)
from controlplane.triton.server_command import new_admin_key, tritonserver_argv

KEY = new_admin_key()


def _argv(**overrides: object) -> list[str]:
    kwargs: dict[str, object] = {
        "binary": Path("/venv/bin/tritonserver"),
        "model_repository": Path("/state/pools/blue/repository"),
        "backend_directory": Path("/state/backends"),
        "http_port": 40001,
        "grpc_port": 40002,
        "metrics_port": 40003,
        "shm_prefix": "cpabc_blue_",
        "admin_key": KEY,
        "load_all_models": True,
    }
    kwargs.update(overrides)
    return tritonserver_argv(**kwargs)  # type: ignore[arg-type]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_runtime_json_keeps_the_admin_key_in_a_0600_file(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    state = RuntimeState(pools={"blue": PoolState(1, 2, 3, "cp_blue_", admin_key=KEY)})
    save_state(path, state)
    assert _mode(path) == 0o600
    assert load_state(path) == state
    assert KEY not in repr(state), "reprs end up in logs"


def test_an_entry_without_a_key_reads_and_writes_as_before(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    save_state(path, RuntimeState(pools={"blue": PoolState(1, 2, 3, "cp_blue_")}))
    assert "admin_key" not in path.read_text()
    loaded = load_state(path)
    assert loaded is not None and loaded.pools["blue"].admin_key == ""


def test_a_malformed_admin_key_in_runtime_json_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    bad = "not a key, with spaces"
    entry = {"http_port": 1, "grpc_port": 2, "metrics_port": 3, "shm_prefix": "cp_", "admin_key": bad}
    path.write_text(json.dumps({"format": 1, "proxy": None, "pools": {"blue": entry}}))
    with pytest.raises(RuntimeStateError) as refused:
        load_state(path)
    assert "admin key" in str(refused.value) and bad not in str(refused.value)


def test_the_admin_key_and_address_are_read_back_from_a_running_argv() -> None:
    found = parse_tritonserver_argv(_argv(address="10.0.0.5"))
    assert found is not None
    assert found.admin_key == KEY and found.address == "10.0.0.5"
    assert KEY not in repr(found)
    old = parse_tritonserver_argv([a for a in _argv() if "address" not in a and "restricted" not in a])
    assert old is not None and old.admin_key is None and old.address is None


@pytest.mark.parametrize(
    ("running", "action", "said"),
    [
        (_argv(), Action.ADOPT, "same command line"),
        (_argv(admin_key=new_admin_key()), Action.REPLACE, "with another key"),
        (_argv(admin_key=None), Action.REPLACE, "open to anyone"),
        (_argv(address="0.0.0.0"), Action.REPLACE, "address 0.0.0.0, wanted 127.0.0.1"),
        (_argv(load_all_models=False), Action.ADOPT, "other arguments differ"),
    ],
    ids=["same", "other-key", "unrestricted", "every-address", "older-flags"],
)
def test_only_a_triton_with_our_address_and_key_is_adopted(
    running: list[str], action: Action, said: str
) -> None:
    decision = decide_triton(running, _argv())
    assert decision.action is action
    assert said in decision.reason
    assert KEY not in decision.reason


def test_state_directory_modes_keep_private_files_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    for name in ("registry.db", "registry.db-wal", "registry.db-shm", "runtime.json", "runtime.lock"):
        (state / name).write_text("x")
        os.chmod(state / name, 0o644)
    pool = state / "pools" / "blue"
    (pool / "repository").mkdir(parents=True)
    (pool / "triton.log").write_text("log")
    secure_state_dir(state, [pool])
    assert _mode(state) == 0o711
    for name in ("registry.db", "registry.db-wal", "registry.db-shm", "runtime.json", "runtime.lock"):
        assert _mode(state / name) == 0o600, name
    for name in ("artifacts", "uploads", "proxy"):
        assert _mode(state / name) == 0o700, name
    assert (_mode(state / "pools"), _mode(pool)) == (0o711, 0o711)
    assert (_mode(pool / "repository"), _mode(pool / "staging")) == (0o755, 0o700)
    assert _mode(pool / "triton.log") == 0o600


def test_make_traversable_adds_only_the_search_bit(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    os.chmod(outer, 0o700)
    os.chmod(inner, 0o750)
    changed = make_traversable(inner)
    assert outer in changed and inner in changed
    assert (_mode(outer), _mode(inner)) == (0o711, 0o751)
    assert make_traversable(inner) == [], "nothing left to change"


@pytest.mark.skipif(os.geteuid() != 0, reason="Triton's user is used only when the control plane is root")
def test_a_missing_triton_user_fails_the_start_with_the_command_that_creates_it(tmp_path: Path) -> None:
    stack = LocalStack(
        tmp_path / "state", host="127.0.0.1", grpc_port=1, http_port=2, triton_user="cp-no-such-user"
    )
    with pytest.raises(StartupFailed) as refused:
        stack.start()
    message = refused.value.message
    assert "'cp-no-such-user' does not exist" in message
    assert "useradd --system --no-create-home --shell /usr/sbin/nologin cp-no-such-user" in message
    assert "\n" not in message
    assert not (tmp_path / "state" / "runtime.lock").exists(), "nothing was started"
