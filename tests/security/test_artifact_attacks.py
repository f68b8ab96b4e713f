"""Attacks through what a model folder contains, and what pushes leave behind, against a running stack.

Each test replays the attack through the REST API or the CLI with the role an
attacker would hold, and asserts the refusal, its error shape, and that
nothing live changed: artifact store, pool folders, registry, what Triton serves.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from stack import Stack, create_token, start_stack
from triton_helpers import load_examples_module

from controlplane.artifacts.blobs import BlobStore

pytestmark = pytest.mark.integration

examples = load_examples_module()
STALE = ("0f0f0f0f.upload", "extract-killed1", "verify-killed2")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Not under pytest's base temp: a concurrent pytest session resets that to 0700, and Triton's
    # own user must keep reaching the pool folders.
    root = Path(tempfile.mkdtemp(prefix="cp-artifact-attacks-"))
    state = root / "state"
    # What a push killed with -9 leaves: the raw upload, a half-extracted folder, a verification folder.
    uploads = state / "uploads"
    (uploads / "extract-killed1" / "mlp" / "1").mkdir(parents=True)
    (uploads / "extract-killed1" / "mlp" / "1" / "model.onnx").write_bytes(b"\0" * 4096)
    (uploads / "verify-killed2").mkdir()
    (uploads / "0f0f0f0f.upload").write_bytes(b"\0" * 8192)
    old = time.time() - 600
    for name in STALE:
        os.utime(uploads / name, (old, old))
    running = start_stack(state)
    try:
        assert running.push(examples.build_mlp(root / "mlp", seed=1), "mlp").status_code == 201
        with running.client() as client:
            deployed = client.post("/v1/models/mlp/versions/1/deploy")
            assert deployed.status_code == 200, deployed.text
        yield running
    finally:
        assert running.stop() == 0
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def roles(stack: Stack) -> dict[str, str]:
    return {role: create_token(stack, f"attacker-{role}", role) for role in ("publisher", "deployer")}


def push_as(stack: Stack, token: str, folder: Path, model: str) -> dict:
    saved, stack.token = stack.token, token
    try:
        answer = stack.push(folder, model)
    finally:
        stack.token = saved
    return {"status": answer.status_code, **answer.json()}


def test_a_config_whose_model_file_climbs_to_etc_passwd_is_refused_at_push(
    stack: Stack, roles: dict[str, str], tmp_path: Path
) -> None:
    folder = examples.build_mlp(tmp_path / "evil", seed=3)
    config = folder / "config.pbtxt"
    config.write_text(config.read_text() + 'default_model_filename: "../../../../etc/passwd"\n')
    before = stack.live_state()

    answer = push_as(stack, roles["publisher"], folder, "mlp")

    assert answer["status"] == 422
    error = answer["error"]
    assert error["code"] == "invalid_model_config"
    assert "default_model_filename '../../../../etc/passwd'" in error["message"]
    assert error["details"] == {"field": "default_model_filename", "value": "../../../../etc/passwd"}
    assert stack.live_state() == before


def test_a_publisher_cannot_push_python_backend_code(
    stack: Stack, roles: dict[str, str], tmp_path: Path
) -> None:
    before = stack.live_state()

    folder = examples.build_flaky(tmp_path / "py", name="pycode")
    answer = push_as(stack, roles["publisher"], folder, "pycode")

    assert answer["status"] == 422
    error = answer["error"]
    assert error["code"] == "policy_violation"
    assert "backend 'python'" in error["message"] and "allow_code_backends" in error["message"]
    assert error["details"] == {"rule": "allow_code_backends", "code": ["backend 'python'"]}
    assert stack.live_state() == before, "no blob of the refused folder is stored"


def test_an_allowed_code_backend_still_needs_a_signature_to_deploy(
    stack: Stack, roles: dict[str, str], tmp_path: Path
) -> None:
    allowed = stack.cli("policy", "set", "signedcode", "--allow-code-backends")
    assert allowed.returncode == 0, allowed.stderr
    assert '"allow_code_backends": true' in allowed.stdout
    folder = examples.build_flaky(tmp_path / "py", name="signedcode")
    pushed = push_as(stack, roles["publisher"], folder, "signedcode")
    assert pushed["status"] == 201
    before = stack.live_state()

    with stack.client(token=roles["deployer"]) as client:
        refused = client.post("/v1/models/signedcode/versions/1/deploy")

    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "policy_violation"
    assert error["details"]["rule"] == "code_backends_require_signature"
    assert "no verified signature" in error["message"]
    assert stack.live_state() == before


def test_a_failed_deploy_shows_tritons_reason_without_server_paths_or_stack(
    stack: Stack, tmp_path: Path
) -> None:
    assert stack.push(examples.build_faulty(tmp_path / "bad", "broken"), "broken").status_code == 201

    with stack.client() as client:
        refused = client.post("/v1/models/broken/versions/1/deploy")
        stored = client.get("/v1/models/broken/versions/1").json()["last_error"]
        events = client.get("/v1/events", params={"limit": 1000}).json()

    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "deploy_failed"
    assert "INVALID_GRAPH" in error["message"] and "broken/1/model.onnx" in error["message"]
    deploy_event = next(e for e in reversed(events) if e["action"] == "deploy" and e["target"] == "broken/1")
    for shown in (error["message"], stored, deploy_event["details"]["error"]):
        assert str(stack.state_dir) not in shown
        for leak in ("site-packages", "At:", "model.py(", "Traceback", "/pools/", "/backends/", "/work/"):
            assert leak not in shown, f"{leak!r} leaks in {shown!r}"


def test_start_up_removed_the_upload_leftovers_of_a_killed_push(stack: Stack) -> None:
    remaining = {p.name for p in (stack.state_dir / "uploads").iterdir()}
    assert remaining.isdisjoint(STALE)
    log = stack.log()
    for name in STALE:
        assert f"removed stale upload leftover {stack.state_dir / 'uploads' / name}" in log


def _plant_blob(store: BlobStore, data: bytes, tmp_path: Path, *, age: float) -> Path:
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / sha).write_bytes(data)
    path = store.put(tmp_path / sha, sha)
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_gc_removes_orphan_blobs_only_and_never_those_of_a_push_in_progress(
    stack: Stack, tmp_path: Path
) -> None:
    store = BlobStore(stack.state_dir / "artifacts")
    referenced = sorted(p for p in (store.root / "sha256").rglob("*") if p.is_file())
    orphan = _plant_blob(store, b"left by a push that never committed", tmp_path, age=7200)

    dry = stack.cli("gc", "--dry-run", "--state-dir", str(stack.state_dir))
    assert dry.returncode == 0, dry.stderr
    assert f"{orphan.stat().st_size:>12}  {orphan}" in dry.stdout
    assert f"would remove 1 blobs, {orphan.stat().st_size} bytes" in dry.stdout
    assert orphan.exists()

    with store.writing():  # a push storing its blobs, its version not committed yet
        in_progress = _plant_blob(store, b"blob of a push in progress", tmp_path, age=7200)
        busy = stack.cli(
            "gc", "--grace-seconds", "0", "--lock-timeout", "1", "--state-dir", str(stack.state_dir)
        )
        assert busy.returncode == 1 and "pushes kept the artifact store busy" in busy.stderr
        assert in_progress.exists() and orphan.exists()

    # Once committed it would be referenced; here it stays an orphan, taken on the next pass.
    young = _plant_blob(store, b"stored a moment ago", tmp_path, age=0)
    real = stack.cli("gc", "--state-dir", str(stack.state_dir), "--grace-seconds", "3600")
    assert real.returncode == 0, real.stderr
    assert "removed 2 blobs" in real.stdout
    assert not orphan.exists() and not in_progress.exists()
    assert young.exists(), "a blob younger than the grace age is kept"
    assert all(p.exists() for p in referenced), "every blob a version references is kept"
    with stack.client() as client:
        events = client.get("/v1/events", params={"limit": 1000}).json()
        gc_events = [e for e in events if e["action"] == "gc"]
        assert gc_events[-1]["details"]["removed"] == 2
        assert client.get("/healthz", params={"model": "mlp"}).status_code == 200
