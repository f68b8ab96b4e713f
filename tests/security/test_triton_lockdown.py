"""Attacks on the Triton processes of ``controlplane up``, replayed against a real stack.

Each test replays one attack (a call from the network without the admin key,
model code probing the state directory, a restart racing the proxy) and
asserts the refusal, its shape, and that mlp version 1 still serves the same
answer on blue.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pwd
import random
import secrets
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from controlplane.errors import TritonAccessDenied
from controlplane.runtime.local import DEFAULT_TRITON_USER
from controlplane.triton.client import TritonClient
from controlplane.triton.server_command import ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER

from .triton_lockdown_fixtures import LockedStack, infer_mlp, locked_stack, process_ids, running_as_root

pytestmark = pytest.mark.integration
__all__ = ["locked_stack"]  # the module-scoped fixture, imported so pytest finds it

EVIL_MODEL_PY = b"import os\nos.system('touch /tmp/pwned')\n"
EVIL_CONFIG = json.dumps({"name": "mlp", "backend": "python", "max_batch_size": 0})


def _refused(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def _admin_attacks(
    client: httpclient.InferenceServerClient | grpcclient.InferenceServerClient,
    headers: dict[str, str] | None,
) -> dict[str, Callable[[], object]]:
    return {
        "load with uploaded code": lambda: client.load_model(
            "mlp", headers=headers, config=EVIL_CONFIG, files={"file:1/model.py": EVIL_MODEL_PY}
        ),
        "unload": lambda: client.unload_model("mlp", headers=headers),
        "register shared memory": lambda: client.register_system_shared_memory(
            "steal", "/cp_steal", 64, headers=headers
        ),
        "statistics": lambda: client.get_inference_statistics(headers=headers),
        "model config": lambda: client.get_model_config("mlp", headers=headers),
        "log settings": lambda: client.update_log_settings({"log_verbose_level": 3}, headers=headers),
        "repository index": lambda: client.get_model_repository_index(headers=headers),
    }


def _assert_mlp_unchanged(env: LockedStack, expected: np.ndarray) -> None:
    blue = env.pools["blue"]
    admin = TritonClient(f"127.0.0.1:{blue.http_port}", headers=blue.headers)
    try:
        assert [(s.version, s.state) for s in admin.model_status("mlp")] == [("1", "READY")]
        assert admin.model_config("mlp")["backend"] == "onnxruntime"
    finally:
        admin.close()
    http = httpclient.InferenceServerClient(f"127.0.0.1:{blue.http_port}")
    try:
        assert http.get_log_settings(headers=blue.headers)["log_verbose_level"] == 0
        assert http.get_system_shared_memory_status(headers=blue.headers) == []
    finally:
        http.close()
    np.testing.assert_allclose(infer_mlp(env.stack.grpc_url), expected, rtol=1e-6)
    assert not Path("/tmp/pwned").exists()


def _proc_net_address(hex_address: str) -> str:
    """``/proc/net/tcp[6]`` address (little-endian 32-bit words) as text; IPv4-mapped IPv6 as IPv4."""
    raw = b"".join(bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, len(hex_address), 8))
    address = ipaddress.ip_address(raw)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def test_triton_listens_on_loopback_only(locked_stack: LockedStack) -> None:
    ports = {port for p in locked_stack.pools.values() for port in (p.http_port, p.grpc_port, p.metrics_port)}
    listening: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) in ports:  # 0A: LISTEN
                listening.setdefault(int(port_hex, 16), set()).add(_proc_net_address(address))
    # gRPC listens through an IPv6 socket bound to ::ffff:127.0.0.1: loopback all the same.
    assert listening == {port: {"127.0.0.1"} for port in ports}


@contextlib.contextmanager
def _network_namespace() -> Iterator[tuple[str, str]]:
    """A namespace joined to this one by a veth pair; yields (namespace, host-side address)."""
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"cpl{tag}", f"cpl{tag}h", f"cpl{tag}n"
    # A random /30 of 198.18.0.0/15, the range set aside for network tests.
    subnet = f"198.{18 + random.randrange(2)}.{random.randrange(256)}.{4 * random.randrange(64)}"
    base = subnet.rsplit(".", 1)
    host_ip, ns_ip = f"{base[0]}.{int(base[1]) + 1}", f"{base[0]}.{int(base[1]) + 2}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    try:
        for cmd in (
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
            ["ip", "link", "set", ns_if, "netns", ns],
            ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            ["ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if],
            ["ip", "-n", ns, "link", "set", ns_if, "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True)
        yield ns, host_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


_PROBE = textwrap.dedent(
    """
    import json, socket, sys
    host, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
    seen = {}
    for port in ports:
        try:
            socket.create_connection((host, port), timeout=3).close()
            seen[port] = "open"
        except ConnectionRefusedError:
            seen[port] = "refused"
        except OSError as exc:
            seen[port] = type(exc).__name__
    print(json.dumps(seen))
    """
)


def test_triton_ports_are_unreachable_from_another_network_namespace(locked_stack: LockedStack) -> None:
    if not running_as_root():
        pytest.skip("network namespaces need root")
    with _network_namespace() as (ns, host_ip):
        control = socket.create_server((host_ip, 0))
        try:
            control_port = control.getsockname()[1]
            triton_ports = [
                port
                for p in locked_stack.pools.values()
                for port in (p.http_port, p.grpc_port, p.metrics_port)
            ]
            probe = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-c", _PROBE, host_ip,
                 str(control_port), *map(str, triton_ports)],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
        finally:
            control.close()
    seen = {int(port): result for port, result in json.loads(probe.stdout).items()}
    assert seen.pop(control_port) == "open", "the namespace reaches this host's address"
    assert seen == dict.fromkeys(triton_ports, "refused")


def test_admin_calls_without_the_key_are_refused_over_http(locked_stack: LockedStack) -> None:
    before = infer_mlp(locked_stack.stack.grpc_url)
    blue = locked_stack.pools["blue"]
    client = httpclient.InferenceServerClient(f"127.0.0.1:{blue.http_port}")
    try:
        for headers in (None, {ADMIN_KEY_HEADER: "a-guessed-key-of-the-right-shape-0123456789abc"}):
            for what, attack in _admin_attacks(client, headers).items():
                error = _refused(attack)
                assert error.status() == "403", what
                assert f"restricted, expecting header '{ADMIN_KEY_HEADER}'" in error.message(), what
    finally:
        client.close()
    _assert_mlp_unchanged(locked_stack, before)


def test_admin_calls_without_the_key_are_refused_over_grpc(locked_stack: LockedStack) -> None:
    before = infer_mlp(locked_stack.stack.grpc_url)
    blue = locked_stack.pools["blue"]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{blue.grpc_port}")
    try:
        for headers in (None, {GRPC_ADMIN_KEY_HEADER: "a-guessed-key-of-the-right-shape-0123456789abc"}):
            for what, attack in _admin_attacks(client, headers).items():
                error = _refused(attack)
                assert error.status() == "StatusCode.UNAVAILABLE", what
                assert f"restricted, expecting header '{GRPC_ADMIN_KEY_HEADER}'" in error.message(), what
    finally:
        client.close()
    _assert_mlp_unchanged(locked_stack, before)


def test_the_control_plane_client_holds_the_key_and_clients_need_none_for_inference(
    locked_stack: LockedStack,
) -> None:
    blue = locked_stack.pools["blue"]
    url = f"127.0.0.1:{blue.grpc_port}"
    admin = TritonClient(f"http://127.0.0.1:{blue.http_port}", headers=blue.headers)
    keyless = TritonClient(f"http://127.0.0.1:{blue.http_port}")
    try:
        assert admin.model_config("mlp")["name"] == "mlp"
        assert any(s.name == "mlp" and s.state == "READY" for s in admin.repository_index())
        with pytest.raises(TritonAccessDenied, match="admin key is missing or wrong"):
            keyless.repository_index()
        assert keyless.is_ready() and keyless.is_model_ready("mlp", 1), "health needs no key"
    finally:
        admin.close()
        keyless.close()
    direct = infer_mlp(url)
    assert direct.shape == (1, 4)
    np.testing.assert_allclose(infer_mlp(locked_stack.stack.grpc_url), direct, rtol=1e-6)


SPY_MODEL = textwrap.dedent(
    '''
    import json, os, socket

    def _try(action):
        try:
            action()
            return "allowed"
        except Exception as exc:
            return type(exc).__name__

    def _connect(path):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)

    def _observe():
        with open(os.path.join(os.path.dirname(__file__), "paths.json")) as handle:
            p = json.load(handle)
        seen = {
            "uid": os.geteuid(),
            "write registry": _try(lambda: open(p["db"], "r+b").close()),
            "read runtime.json": _try(lambda: open(p["runtime"], "rb").read()),
            "list state dir": _try(lambda: os.listdir(p["state"])),
            "list artifacts": _try(lambda: os.listdir(p["artifacts"])),
            "read triton.log": _try(lambda: open(p["log"], "rb").read(1)),
            "connect admin socket": _try(lambda: _connect(p["socket"])),
            "controlplane env": sorted(k for k in os.environ if k.startswith("CONTROLPLANE_")),
        }
        print("SPY-OBSERVED " + json.dumps(seen, sort_keys=True), flush=True)

    _observe()

    class TritonPythonModel:
        def execute(self, requests):
            return []
    '''
)
SPY_CONFIG = """name: "spy"
backend: "python"
max_batch_size: 0
input [{ name: "IN" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "OUT" data_type: TYPE_FP32 dims: [1] }]
"""


def _observed(log: Path, offset: int) -> dict[str, object] | None:
    for line in log.read_bytes()[offset:].decode(errors="replace").splitlines():
        if line.startswith("SPY-OBSERVED "):
            return json.loads(line.removeprefix("SPY-OBSERVED "))
    return None


def test_model_code_cannot_reach_the_control_planes_state(locked_stack: LockedStack) -> None:
    if not running_as_root():
        pytest.skip("Triton runs as its own user only when the control plane is root")
    before = infer_mlp(locked_stack.stack.grpc_url)
    state = locked_stack.state_dir
    green = locked_stack.pools["green"]
    folder = green.root / "repository" / "spy"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(SPY_CONFIG)
    (folder / "1" / "model.py").write_text(SPY_MODEL)
    paths = {
        "db": str(state / "registry.db"),
        "runtime": str(state / "runtime.json"),
        "state": str(state),
        "artifacts": str(state / "artifacts"),
        "log": str(locked_stack.pools["blue"].root / "triton.log"),
        "socket": str(state / "proxy" / "admin.sock"),
    }
    (folder / "1" / "paths.json").write_text(json.dumps(paths))
    log = green.root / "triton.log"
    offset = log.stat().st_size
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{green.grpc_port}")
    try:
        # The reconciler may remove this unregistered folder at any time: the module observes on import.
        with contextlib.suppress(InferenceServerException):
            client.load_model("spy", headers=green.headers)
    finally:
        client.close()
    deadline = time.monotonic() + 30
    while (seen := _observed(log, offset)) is None:
        assert time.monotonic() < deadline, "the planted model never ran"
        time.sleep(0.1)
    assert Path(paths["socket"]).is_socket(), "the admin socket is where the model looked"
    assert seen == {
        "uid": pwd.getpwnam(DEFAULT_TRITON_USER).pw_uid,
        "write registry": "PermissionError",
        "read runtime.json": "PermissionError",
        "list state dir": "PermissionError",
        "list artifacts": "PermissionError",
        "read triton.log": "PermissionError",
        "connect admin socket": "PermissionError",
        "controlplane env": [],
    }
    np.testing.assert_allclose(infer_mlp(locked_stack.stack.grpc_url), before, rtol=1e-6)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_files_are_private_and_triton_runs_unprivileged(locked_stack: LockedStack) -> None:
    state = locked_stack.state_dir
    expected = {
        state: 0o711,
        state / "runtime.json": 0o600,
        state / "runtime.lock": 0o600,
        state / "registry.db": 0o600,
        state / "artifacts": 0o700,
        state / "uploads": 0o700,
        state / "proxy": 0o700,
        state / "pools": 0o711,
        state / "backends": 0o755,
    }
    for suffix in ("-wal", "-shm"):
        if (state / f"registry.db{suffix}").exists():
            expected[state / f"registry.db{suffix}"] = 0o600
    for pool in locked_stack.pools.values():
        expected |= {
            pool.root: 0o711,
            pool.root / "triton.log": 0o600,
            pool.root / "repository": 0o755,
            pool.root / "staging": 0o700,
        }
    assert {str(p): oct(_mode(p)) for p in expected} == {str(p): oct(m) for p, m in expected.items()}
    blobs = [p for p in (state / "artifacts" / "sha256").rglob("*") if p.is_file()]
    assert blobs and all(_mode(b) == 0o444 for b in blobs), "hard-linked into repositories: read-only"
    served = locked_stack.pools["blue"].root / "repository" / "mlp" / "1" / "model.onnx"
    assert any(os.path.samefile(served, b) for b in blobs), "the repository links the blob"
    if running_as_root():
        user = pwd.getpwnam(DEFAULT_TRITON_USER)
        for pool in locked_stack.pools.values():
            assert pool.pid is not None
            assert process_ids(pool.pid) == (user.pw_uid, user.pw_gid, []), pool.name


def test_a_restarted_triton_answers_only_once_its_models_are_loaded(locked_stack: LockedStack) -> None:
    before = infer_mlp(locked_stack.stack.grpc_url)
    blue = locked_stack.pools["blue"]
    old_pid = blue.pid
    assert old_pid is not None
    os.kill(old_pid, 9)
    deadline = time.monotonic() + 60
    while blue.pid in (None, old_pid):
        assert time.monotonic() < deadline, "blue's Triton was not restarted"
        time.sleep(0.02)
    url = f"127.0.0.1:{blue.http_port}"
    while True:
        assert time.monotonic() < deadline, "the restarted Triton never became ready"
        client = httpclient.InferenceServerClient(url, connection_timeout=1, network_timeout=1)
        try:
            # The first answer at all: Triton opens its ports only after loading its repository.
            ready = client.is_server_ready()
            model_ready = client.is_model_ready("mlp")
            break
        except Exception:  # noqa: BLE001 - refused while the restarted server loads
            time.sleep(0.01)
        finally:
            client.close()
    assert ready and model_ready, "ports open only with mlp already READY"
    np.testing.assert_allclose(infer_mlp(f"127.0.0.1:{blue.grpc_port}"), before, rtol=1e-6)
    locked_stack.reload_pools()
    assert locked_stack.pools["blue"].admin_key == blue.admin_key, "a supervised restart keeps its key"
