"""tritonserver argv and environment (pure checks, no server started)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from controlplane.triton.backend_dir import pytriton_layout, tritonserver_binary
from controlplane.triton.server_command import (
    ADMIN_KEY_HEADER,
    GRPC_ADMIN_KEY_HEADER,
    RESTRICTED_APIS,
    admin_headers,
    new_admin_key,
    tritonserver_argv,
    tritonserver_command,
    tritonserver_env,
    validate_admin_key,
    validate_shm_prefix,
)


def _argv(**overrides: object) -> list[str]:
    kwargs: dict[str, object] = {
        "binary": Path("/opt/triton/bin/tritonserver"),
        "model_repository": Path("/models"),
        "backend_directory": Path("/backends"),
        "http_port": 8000,
        "grpc_port": 8001,
        "metrics_port": 8002,
        "shm_prefix": "cp_blue_",
    }
    kwargs.update(overrides)
    return tritonserver_argv(**kwargs)  # type: ignore[arg-type]


def test_argv_has_the_required_options() -> None:
    argv = _argv(exit_timeout_secs=7)
    assert argv[0] == "/opt/triton/bin/tritonserver"
    assert "--model-repository=/models" in argv
    assert "--backend-directory=/backends" in argv
    assert "--model-control-mode=explicit" in argv
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"} <= set(argv)
    assert "--backend-config=python,shm-region-prefix-name=cp_blue_" in argv
    assert "--exit-timeout-secs=7" in argv
    assert "--strict-readiness=false" in argv
    assert "--metrics-config=summary_latencies=true" in argv
    assert "--metrics-config=summary_quantiles=0.5:0.05,0.9:0.01,0.99:0.001" in argv


def test_default_exit_timeout_is_short() -> None:
    assert "--exit-timeout-secs=5" in _argv()


def test_extra_args_come_last() -> None:
    argv = _argv(extra_args=["--log-verbose=1", "--allow-gpu-metrics=false"])
    assert argv[-2:] == ["--log-verbose=1", "--allow-gpu-metrics=false"]


@pytest.mark.parametrize("prefix", ["", "a,b", "a/b", "a b", ".hidden", "x" * 65])
def test_unsafe_shm_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError):
        validate_shm_prefix(prefix)
    with pytest.raises(ValueError):
        _argv(shm_prefix=prefix)


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_bad_port_is_refused(port: int) -> None:
    with pytest.raises(ValueError):
        _argv(grpc_port=port)


def test_env_puts_libs_and_venv_bin_first() -> None:
    base = {
        "PATH": "/usr/bin:/venv/bin:/bin",
        "LD_LIBRARY_PATH": "/usr/local/lib",
        "PYTHONHOME": "/somewhere",
        "KEEP": "me",
    }
    env = tritonserver_env(
        base_env=base, libs_dir=Path("/wheel/libs"), venv=Path("/venv"), bin_dir=Path("/venv/bin")
    )
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == ["/wheel/libs", "/usr/local/lib"]
    # Moved to the front, not duplicated.
    assert env["PATH"].split(os.pathsep) == ["/venv/bin", "/usr/bin", "/bin"]
    assert env["VIRTUAL_ENV"] == "/venv"
    assert "PYTHONHOME" not in env
    assert env["KEEP"] == "me"
    assert "PYTHONHOME" in base, "the base mapping must not be modified"


def test_env_without_venv_or_existing_variables() -> None:
    env = tritonserver_env(base_env={}, libs_dir=Path("/l"), venv=None, bin_dir=Path("/usr/bin"))
    assert env["LD_LIBRARY_PATH"] == "/l"
    assert env["PATH"] == "/usr/bin"
    assert "VIRTUAL_ENV" not in env


def test_command_uses_the_wheel_and_this_interpreter(tmp_path: Path) -> None:
    argv, env = tritonserver_command(
        model_repository=tmp_path / "repo",
        backend_directory=tmp_path / "backends",
        http_port=1,
        grpc_port=2,
        metrics_port=3,
        shm_prefix="cp_",
    )
    assert Path(argv[0]) == tritonserver_binary()
    assert f"--model-repository={tmp_path / 'repo'}" in argv
    libs_dir = pytriton_layout().libs_dir
    assert libs_dir.is_dir()
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(libs_dir)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.prefix) / "bin")
    if sys.prefix != sys.base_prefix:
        assert env["VIRTUAL_ENV"] == sys.prefix


def test_binary_is_executable() -> None:
    binary = tritonserver_binary()
    assert binary.is_file()
    assert os.access(binary, os.X_OK)


def test_every_listener_binds_to_the_given_address_and_loopback_by_default() -> None:
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"} <= set(
        _argv()
    )
    chosen = _argv(address="10.1.2.3")
    assert {"--http-address=10.1.2.3", "--grpc-address=10.1.2.3", "--metrics-address=10.1.2.3"} <= set(chosen)
    assert not any(a.endswith("0.0.0.0") for a in chosen)


@pytest.mark.parametrize("address", ["", "localhost", "0.0.0.0:80", "10.0.0.1 --load-model=*"])
def test_an_address_that_is_not_an_ip_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="IP address"):
        _argv(address=address)


def test_an_admin_key_restricts_every_admin_api_on_http_and_grpc() -> None:
    key = new_admin_key()
    argv = _argv(admin_key=key)
    restriction = (
        "model-repository,model-config,shared-memory,statistics,trace,logging:x-controlplane-admin-key=" + key
    )
    assert f"--http-restricted-api={restriction}" in argv
    assert f"--grpc-restricted-protocol={restriction}" in argv
    assert not {"health", "metadata", "inference"} & set(RESTRICTED_APIS)


def test_without_an_admin_key_nothing_is_restricted() -> None:
    assert not any("restricted" in arg for arg in _argv())


@pytest.mark.parametrize("key", ["short", "has,comma" * 3, "has=equals-and-more-chars", "x" * 129, "a b" * 8])
def test_an_unsafe_admin_key_is_refused_without_being_echoed(key: str) -> None:
    with pytest.raises(ValueError) as refused:
        _argv(admin_key=key)
    assert key not in str(refused.value)


def test_new_admin_keys_are_random_and_valid() -> None:
    first, second = new_admin_key(), new_admin_key()
    assert first != second
    assert validate_admin_key(first) == first and len(first) >= 40


def test_admin_headers_open_both_protocols() -> None:
    assert admin_headers("k" * 20) == {
        "x-controlplane-admin-key": "k" * 20,
        "triton-grpc-protocol-x-controlplane-admin-key": "k" * 20,
    }
    assert ADMIN_KEY_HEADER.islower(), "gRPC metadata keys must be lowercase"
    assert GRPC_ADMIN_KEY_HEADER == "triton-grpc-protocol-" + ADMIN_KEY_HEADER


def test_loading_all_models_at_start_keeps_the_server_up_when_one_fails() -> None:
    argv = _argv(load_all_models=True)
    assert argv[-2:] == ["--load-model=*", "--exit-on-error=false"]
    assert "--load-model=*" not in _argv()


def test_env_drops_the_control_planes_own_variables() -> None:
    base = {"PATH": "/bin", "CONTROLPLANE_DATABASE_URL": "postgresql://u:pw@db/x", "CONTROLPLANE_TOKEN": "t"}
    env = tritonserver_env(base_env=base, libs_dir=Path("/l"), venv=None, bin_dir=Path("/v"))
    assert not [k for k in env if k.startswith("CONTROLPLANE_")]
    assert env["PATH"] == "/v:/bin"
