"""Signed model folders end to end: the standard model-signing CLI signs, the control plane enforces.

The stack trusts one EC public key and requires a signature for every version.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from stack import Stack, start_stack
from triton_helpers import load_examples_module

from controlplane.artifacts.signatures import public_key_id

pytestmark = pytest.mark.integration

examples = load_examples_module()


def _key(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = directory / f"{name}.key"
    public = directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def sign(folder: Path, private_key: Path) -> Path:
    """Sign with the standard CLI, the way a publisher's pipeline would."""
    signature = folder.parent / f"{folder.name}.sig"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "model_signing",
            "sign",
            "key",
            "--private_key",
            str(private_key),
            "--signature",
            str(signature),
            str(folder),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return signature


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("keys")
    return {"trusted": _key(root, "trusted"), "stranger": _key(root, "stranger")}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, tuple[Path, Path]]) -> Iterator[Stack]:
    env = {
        "CONTROLPLANE_TRUSTED_PUBLIC_KEYS": str(keys["trusted"][1]),
        "CONTROLPLANE_REQUIRE_SIGNATURE": "true",
    }
    running = start_stack(tmp_path_factory.mktemp("signed") / "state", env=env)
    try:
        yield running
    finally:
        assert running.stop() == 0


def _versions(stack: Stack) -> dict[int, str]:
    with stack.client() as client:
        return {v["version"]: v["state"] for v in client.get("/v1/models/mlp/versions").json()}


def test_an_unsigned_version_cannot_serve_until_a_trusted_signature_is_attached(
    stack: Stack, keys: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    folder = examples.build_mlp(tmp_path / "v1", seed=1)
    signature = sign(folder, keys["trusted"][0])
    assert stack.push(folder, "mlp").status_code == 201
    with stack.client() as client:
        refused = client.post("/v1/models/mlp/versions/1/deploy")
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "policy_violation"
        assert "requires a signature" in refused.json()["error"]["message"]
        assert client.post("/v1/rollouts", json={"model": "mlp", "version": 1}).status_code == 422
        attached = client.put(
            "/v1/models/mlp/versions/1/signature",
            content=signature.read_bytes(),
            headers={"content-type": "application/json"},
        )
        assert attached.status_code == 200, attached.text
        assert attached.json()["identity"]["key_id"] == public_key_id(keys["trusted"][1].read_bytes())
        assert set(attached.json()["files"]) == {"config.pbtxt", "1/model.onnx"}
        assert client.post("/v1/models/mlp/versions/1/deploy").status_code == 200


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("byte", "1/model.onnx"),
        ("added", "1/extra.bin"),
        ("removed", "labels.txt"),
        ("config", "config.pbtxt"),
    ],
)
def test_a_folder_changed_after_signing_is_rejected_naming_the_file(
    stack: Stack, keys: dict[str, tuple[Path, Path]], tmp_path: Path, change: str, named: str
) -> None:
    folder = examples.build_mlp(tmp_path / "m", seed=7)
    (folder / "labels.txt").write_text("a\nb\nc\nd\n")
    signature = sign(folder, keys["trusted"][0])
    if change == "byte":
        data = bytearray((folder / "1" / "model.onnx").read_bytes())
        data[-1] ^= 0x01
        (folder / "1" / "model.onnx").write_bytes(bytes(data))
    elif change == "added":
        (folder / "1" / "extra.bin").write_bytes(b"unsigned")
    elif change == "removed":
        (folder / "labels.txt").unlink()
    else:
        (folder / "config.pbtxt").write_text((folder / "config.pbtxt").read_text() + "\n# changed\n")
    pushed = stack.push(folder, "mlp")
    assert pushed.status_code in (200, 201), pushed.text
    number = pushed.json()["version"]
    with stack.client() as client:
        refused = client.put(
            f"/v1/models/mlp/versions/{number}/signature",
            content=signature.read_bytes(),
            headers={"content-type": "application/json"},
        )
        assert client.get(f"/v1/models/mlp/versions/{number}/signature").status_code == 404
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "signature_invalid"
    assert named in refused.json()["error"]["message"]


def test_a_signature_by_an_untrusted_key_is_refused(
    stack: Stack, keys: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    folder = examples.build_mlp(tmp_path / "s", seed=8)
    signature = sign(folder, keys["stranger"][0])
    number = stack.push(folder, "mlp").json()["version"]
    with stack.client() as client:
        refused = client.put(
            f"/v1/models/mlp/versions/{number}/signature",
            content=signature.read_bytes(),
            headers={"content-type": "application/json"},
        )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "signature_invalid"
    assert "not trusted" in refused.json()["error"]["message"]


def test_the_cli_pushes_with_a_signature_and_a_model_policy_pins_the_signer(
    stack: Stack, keys: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    folder = examples.build_mlp(tmp_path / "c", seed=9)
    signature = sign(folder, keys["trusted"][0])
    pushed = stack.cli("push", str(folder), "--model", "mlp", "--signature", str(signature))
    assert pushed.returncode == 0, pushed.stderr
    assert "signature verified (key, signer " in pushed.stdout
    number = int(pushed.stdout.split(" version ")[1].split()[0])

    pinned = stack.cli("policy", "set", "mlp", "--allow-signer", "key:" + "0" * 64)
    assert pinned.returncode == 0, pinned.stderr
    refused = stack.cli("deploy", "mlp", str(number))
    assert refused.returncode == 1
    assert "not by an allowed signer" in refused.stderr and "(policy_violation)" in refused.stderr
    trusted_id = public_key_id(keys["trusted"][1].read_bytes())
    assert stack.cli("policy", "set", "mlp", "--allow-signer", f"key:{trusted_id}").returncode == 0
    deployed = stack.cli("deploy", "mlp", str(number))
    assert deployed.returncode == 0, deployed.stderr
    shutil.rmtree(folder)
