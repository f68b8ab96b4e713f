"""compose/triton/entrypoint.sh starts tritonserver with the embedded runtime's flags.

The entrypoint runs for real (/bin/sh, as in the images) with a stand-in ``tritonserver``
first on PATH that records its argv and PID; the expected flags come from
``tritonserver_command``, the code that starts the embedded pools. Only the binary's path
differs between the two.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from controlplane.triton.server_command import new_admin_key, tritonserver_command

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO_ROOT / "compose" / "triton" / "entrypoint.sh"
CPU_DOCKERFILE = REPO_ROOT / "compose" / "images" / "triton-cpu.Dockerfile"
GPU_OVERRIDE = REPO_ROOT / "compose" / "docker-compose.gpu.yml"
DEFAULT_KEY_FILE = "/run/controlplane-secrets/triton-admin-key"
DEFAULT_SHM_PREFIX = "cp_triton_"
CPU_BACKENDS = Path("/opt/tritonserver/backends")

FAKE_TRITONSERVER = """#!/bin/sh
printf '%s\\0' "$@" > "$FAKE_ARGV_FILE"
echo $$ > "$FAKE_PID_FILE"
"""


class Pool:
    """A key file, a repository and a fake tritonserver in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = new_admin_key()
        self.key_file = root / "secrets" / "triton-admin-key"
        self.repository = root / "pool" / "repository"
        self.repository.mkdir(parents=True)
        bin_dir = root / "bin"
        bin_dir.mkdir()
        fake = bin_dir / "tritonserver"
        fake.write_text(FAKE_TRITONSERVER)
        fake.chmod(0o755)
        self.argv_file = root / "argv"
        self.pid_file = root / "pid"
        self.env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_ARGV_FILE": str(self.argv_file),
            "FAKE_PID_FILE": str(self.pid_file),
            "TRITON_ADMIN_KEY_FILE": str(self.key_file),
            "TRITON_MODEL_REPOSITORY": str(self.repository),
            "TRITON_BACKEND_DIRECTORY": str(CPU_BACKENDS),
        }

    def write_key(self, key: str | None = None) -> None:
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        self.key_file.write_text((self.key if key is None else key) + "\n")

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        # The working directory holds a file the unquoted glob `--load-model=*` would expand to.
        (self.root / "--load-model=model-in-cwd").touch()
        return subprocess.Popen(
            [str(ENTRYPOINT), *args],
            cwd=self.root,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        process = self.start(*args, **env)
        stdout, stderr = process.communicate(timeout=30)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def tritonserver_argv(self) -> list[str]:
        return self.argv_file.read_bytes().decode().split("\0")[:-1]

    def expected_flags(
        self,
        *,
        backend_directory: Path = CPU_BACKENDS,
        address: str = "0.0.0.0",
        ports: tuple[int, int, int] = (8000, 8001, 8002),
        shm_prefix: str = DEFAULT_SHM_PREFIX,
        exit_timeout_secs: int = 5,
        extra_args: tuple[str, ...] = (),
    ) -> list[str]:
        """What the embedded runtime passes to tritonserver for the same inputs, without argv[0]."""
        argv, _env = tritonserver_command(
            model_repository=self.repository,
            backend_directory=backend_directory,
            http_port=ports[0],
            grpc_port=ports[1],
            metrics_port=ports[2],
            shm_prefix=shm_prefix,
            address=address,
            admin_key=self.key,
            load_all_models=True,
            exit_timeout_secs=exit_timeout_secs,
            extra_args=extra_args,
        )
        return argv[1:]


class _ComposeLoader(yaml.SafeLoader):
    """YAML with compose's merge tags: ``!reset`` reads as None, ``!override`` as its plain value."""


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_ComposeLoader.add_constructor("!reset", lambda _loader, _node: None)
_ComposeLoader.add_constructor("!override", _override)


@pytest.fixture
def pool(tmp_path: Path) -> Pool:
    return Pool(tmp_path)


def test_cpu_image_flags_equal_the_embedded_runtime_flags(pool: Pool) -> None:
    pool.write_key()

    result = pool.run()

    assert result.returncode == 0, result.stderr
    assert pool.tritonserver_argv() == pool.expected_flags()


def test_gpu_form_without_backend_directory_leaves_tritons_default(pool: Pool) -> None:
    pool.write_key()

    result = pool.run(TRITON_BACKEND_DIRECTORY="")

    assert result.returncode == 0, result.stderr
    expected = [flag for flag in pool.expected_flags() if not flag.startswith("--backend-directory=")]
    assert pool.tritonserver_argv() == expected


def test_ports_address_prefix_and_exit_timeout_map_to_the_same_flags(pool: Pool) -> None:
    pool.write_key()

    result = pool.run(
        TRITON_ADDRESS="10.1.2.3",
        TRITON_HTTP_PORT="9000",
        TRITON_GRPC_PORT="9001",
        TRITON_METRICS_PORT="9002",
        TRITON_SHM_PREFIX="cp_green_",
        TRITON_EXIT_TIMEOUT_SECS="9",
    )

    assert result.returncode == 0, result.stderr
    assert pool.tritonserver_argv() == pool.expected_flags(
        address="10.1.2.3", ports=(9000, 9001, 9002), shm_prefix="cp_green_", exit_timeout_secs=9
    )


def test_arguments_come_after_every_flag(pool: Pool) -> None:
    pool.write_key()

    result = pool.run("--log-verbose=1", "--allow-gpu-metrics=false")

    assert result.returncode == 0, result.stderr
    assert pool.tritonserver_argv() == pool.expected_flags(
        extra_args=("--log-verbose=1", "--allow-gpu-metrics=false")
    )


def test_tritonserver_replaces_the_entrypoint_process(pool: Pool) -> None:
    # exec: signals from the engine (or the init process) reach tritonserver itself.
    pool.write_key()

    process = pool.start()
    process.communicate(timeout=30)

    assert process.returncode == 0
    assert int(pool.pid_file.read_text()) == process.pid


def test_waits_for_the_key_file_the_control_plane_writes(pool: Pool) -> None:
    started = time.monotonic()
    process = pool.start()
    time.sleep(1.5)
    assert process.poll() is None, "gave up before the key file appeared"
    assert not pool.argv_file.exists()

    pool.write_key()
    _stdout, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    assert f"waiting for {pool.key_file}" in stderr
    assert time.monotonic() - started >= 1.5
    assert pool.tritonserver_argv() == pool.expected_flags()


def test_gives_up_naming_the_default_key_file_after_the_wait(pool: Pool) -> None:
    env = {key: value for key, value in pool.env.items() if key != "TRITON_ADMIN_KEY_FILE"}
    pool.env = env

    result = pool.run(TRITON_WAIT_SECS="1")

    assert result.returncode == 1
    assert f"no admin key in {DEFAULT_KEY_FILE} after 1 s" in result.stderr
    assert not pool.argv_file.exists()


def test_waits_for_the_repository_too(pool: Pool) -> None:
    pool.write_key()
    pool.repository.rmdir()

    result = pool.run(TRITON_WAIT_SECS="1")

    assert result.returncode == 1
    assert f"no model repository {pool.repository} after 1 s" in result.stderr
    assert not pool.argv_file.exists()


@pytest.mark.parametrize(
    "key",
    ["short", "a" * 20 + ";touch /tmp/x", "a" * 129, "k" * 20 + " " + "k" * 20, "k" * 20 + "\n" + "k" * 20],
)
def test_refuses_a_key_that_is_not_an_admin_key_without_echoing_it(pool: Pool, key: str) -> None:
    pool.write_key(key)

    result = pool.run(TRITON_WAIT_SECS="0")

    assert result.returncode == 1
    assert "does not hold a valid admin key" in result.stderr
    assert key not in result.stderr.replace(str(pool.key_file), "")
    assert not pool.argv_file.exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TRITON_HTTP_PORT", "0"),
        ("TRITON_GRPC_PORT", "65536"),
        ("TRITON_METRICS_PORT", "80a"),
        ("TRITON_SHM_PREFIX", "a,b"),
        ("TRITON_SHM_PREFIX", ".hidden"),
        ("TRITON_SHM_PREFIX", "../x"),
        ("TRITON_EXIT_TIMEOUT_SECS", "-1"),
    ],
)
def test_refuses_settings_the_embedded_runtime_refuses(pool: Pool, variable: str, value: str) -> None:
    pool.write_key()

    result = pool.run(**{variable: value})

    assert result.returncode == 1
    assert result.stderr.startswith("triton-entrypoint: ")
    assert not pool.argv_file.exists()


def test_removes_only_its_own_stale_shm_regions(pool: Pool) -> None:
    prefix = f"cpentry_{secrets.token_hex(4)}_"
    own = Path("/dev/shm") / f"{prefix}stale-region"
    other = Path("/dev/shm") / f"x{prefix}other-server"
    own.write_bytes(b"left by a crashed server")
    other.write_bytes(b"not ours")
    pool.write_key()
    try:
        result = pool.run(TRITON_SHM_PREFIX=prefix)

        assert result.returncode == 0, result.stderr
        assert not own.exists()
        assert other.exists()
    finally:
        own.unlink(missing_ok=True)
        other.unlink(missing_ok=True)


def test_cpu_image_runs_this_entrypoint_where_the_gpu_override_mounts_it() -> None:
    dockerfile = CPU_DOCKERFILE.read_text()
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]$', dockerfile, re.MULTILINE)
    assert entrypoint is not None
    path = entrypoint.group(1)
    assert re.search(
        rf"^COPY \S* ?compose/triton/entrypoint\.sh {re.escape(path)}$", dockerfile, re.MULTILINE
    )
    backend_env = re.search(r"TRITON_BACKEND_DIRECTORY=(\S+)", dockerfile)
    assert backend_env is not None and backend_env.group(1) == str(CPU_BACKENDS)
    assert f'build_backend_directory(Path("{CPU_BACKENDS}"))' in dockerfile

    gpu = yaml.load(GPU_OVERRIDE.read_text(), Loader=_ComposeLoader)
    for name in ("triton-blue", "triton-green"):
        service = gpu["services"][name]
        assert service["entrypoint"] == [path]
        assert f"./triton/entrypoint.sh:{path}:ro" in service["volumes"]
        assert service["environment"]["TRITON_BACKEND_DIRECTORY"] == ""
