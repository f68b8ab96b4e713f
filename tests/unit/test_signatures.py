"""Unit tests for controlplane.artifacts.signatures (model-signing 1.1.1, offline).

Signatures are made here with EC P-256 keys and a self-made CA; nothing goes
to the network. Keyless Sigstore signing needs network, so the keyless case
verifies a real bundle published by the model-signing project (see
``PUBLISHED_KEYLESS_BUNDLE``) against the Sigstore trusted root that
sigstore-python ships, which runs offline.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.artifacts.signatures import (
    SignatureMethod,
    SignatureRejected,
    SignerIdentity,
    TrustedSigners,
    detect_method,
    identity_allowed,
    public_key_id,
    verify_folder,
)
from controlplane.errors import InvalidInput

CI_URI = "https://ci.example/build"
CI_EMAIL = "ci@example.com"
ONNX_BYTES = b"\x08\x07\x12\x04test" + bytes(range(256)) * 4
CONFIG = 'name: "demo"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'


# --- key material -------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    public_pem: bytes


@dataclass(frozen=True)
class CertificateSigner:
    key_path: Path
    leaf_path: Path
    root_path: Path
    root_pem: bytes
    leaf: x509.Certificate


def _write_key(key: Any, directory: Path, name: str) -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / f"{name}.key"
    public_path = directory / f"{name}.pub"
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path.write_bytes(public_pem)
    return KeyPair(private_path, public_path, public_pem)


def _make_ca(directory: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    root = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name.replace(' ', '-')}.pem"
    path.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    return key, root, path


def _make_leaf(
    directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, sans: list[x509.GeneralName]
) -> tuple[KeyPair, x509.Certificate, Path]:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    pair = _write_key(key, directory, "leaf")
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ci signer")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_path = directory / "leaf.pem"
    leaf_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return pair, leaf, leaf_path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    directory = tmp_path_factory.mktemp("keys")
    return {
        "signer": _write_key(ec.generate_private_key(ec.SECP256R1()), directory, "signer"),
        "other": _write_key(ec.generate_private_key(ec.SECP256R1()), directory, "other"),
    }


@pytest.fixture(scope="module")
def cert_signer(tmp_path_factory: pytest.TempPathFactory) -> CertificateSigner:
    directory = tmp_path_factory.mktemp("pki")
    ca_key, ca, root_path = _make_ca(directory, "Test Root CA")
    pair, leaf, leaf_path = _make_leaf(
        directory, ca_key, ca, [x509.UniformResourceIdentifier(CI_URI), x509.RFC822Name(CI_EMAIL)]
    )
    return CertificateSigner(pair.private_path, leaf_path, root_path, root_path.read_bytes(), leaf)


@pytest.fixture(scope="module")
def other_root_pem(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    _, _, path = _make_ca(tmp_path_factory.mktemp("other-pki"), "Other Root CA")
    return path.read_bytes()


# --- model folders and signing ------------------------------------------------------


def _model_folder(parent: Path, name: str = "demo") -> Path:
    folder = parent / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(CONFIG)
    (folder / "1" / "model.onnx").write_bytes(ONNX_BYTES)
    return folder


def _sign_with_key(folder: Path, signature: Path, key: KeyPair) -> None:
    from model_signing import signing

    signing.Config().use_elliptic_key_signer(private_key=key.private_path).sign(folder, signature)


def _sign_with_certificate(folder: Path, signature: Path, signer: CertificateSigner) -> None:
    from model_signing import signing

    signing.Config().use_certificate_signer(
        private_key=signer.key_path,
        signing_certificate=signer.leaf_path,
        certificate_chain=[signer.root_path],
    ).sign(folder, signature)


@pytest.fixture(scope="module")
def key_signed(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, KeyPair]) -> tuple[Path, Path]:
    """A pristine model folder and its key signature; tests copy, never modify."""
    directory = tmp_path_factory.mktemp("key-signed")
    folder = _model_folder(directory)
    signature = directory / "model.sig"
    _sign_with_key(folder, signature, keys["signer"])
    return folder, signature


@pytest.fixture(scope="module")
def cert_signed(
    tmp_path_factory: pytest.TempPathFactory, cert_signer: CertificateSigner
) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("cert-signed")
    folder = _model_folder(directory)
    signature = directory / "model.sig"
    _sign_with_certificate(folder, signature, cert_signer)
    return folder, signature


def _trust_key(key: KeyPair) -> TrustedSigners:
    return TrustedSigners(public_keys=(key.public_pem,))


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _bundle(signature: Path) -> dict[str, Any]:
    return json.loads(signature.read_text())


# --- key signatures ---------------------------------------------------------------


def test_key_signature_from_python_api_verifies(
    key_signed: tuple[Path, Path], keys: dict[str, KeyPair]
) -> None:
    folder, signature = key_signed

    verified = verify_folder(folder, signature, _trust_key(keys["signer"]))

    assert verified.method is SignatureMethod.KEY
    assert verified.identity.method is SignatureMethod.KEY
    assert verified.identity.key_id == public_key_id(keys["signer"].public_pem)
    assert verified.identity.cert_fingerprint is None
    assert verified.files == {
        "1/model.onnx": hashlib.sha256(ONNX_BYTES).hexdigest(),
        "config.pbtxt": hashlib.sha256(CONFIG.encode()).hexdigest(),
    }
    assert verified.bundle_bytes == signature.read_bytes()
    assert verified.statement_sha256 == hashlib.sha256(verified.statement_bytes).hexdigest()
    statement = json.loads(verified.statement_bytes)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert [r["name"] for r in statement["predicate"]["resources"]] == ["1/model.onnx", "config.pbtxt"]


def test_key_signature_from_cli_verifies(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    folder = _model_folder(tmp_path)
    signature = tmp_path / "cli.sig"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "model_signing",
            "sign",
            "key",
            "--private_key",
            str(keys["signer"].private_path),
            "--signature",
            str(signature),
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    verified = verify_folder(folder, signature, _trust_key(keys["signer"]))

    assert verified.identity.key_id == public_key_id(keys["signer"].public_pem)
    assert set(verified.files) == {"1/model.onnx", "config.pbtxt"}


def test_signature_inside_folder_needs_the_signer_to_have_ignored_it(
    tmp_path: Path, keys: dict[str, KeyPair]
) -> None:
    # The CLI records its own signature path in ignore_paths: accepted.
    folder = _model_folder(tmp_path, "cli")
    subprocess.run(
        [
            *(sys.executable, "-m", "model_signing", "sign", "key"),
            *("--private_key", str(keys["signer"].private_path)),
            *("--signature", str(folder / "model.sig"), str(folder)),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    verified = verify_folder(folder, folder / "model.sig", _trust_key(keys["signer"]))
    assert set(verified.files) == {"1/model.onnx", "config.pbtxt"}

    # The Python API does not: the signature is then an unsigned file.
    api_folder = _model_folder(tmp_path, "api")
    _sign_with_key(api_folder, api_folder / "model.sig", keys["signer"])
    with pytest.raises(SignatureRejected, match=r"file model\.sig is not covered by the signature"):
        verify_folder(api_folder, api_folder / "model.sig", _trust_key(keys["signer"]))


def test_key_id_is_stable_and_is_the_der_spki_hash(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    signer = keys["signer"]
    ids = []
    for name in ("a", "b"):
        folder = _model_folder(tmp_path / name)
        (folder / "config.pbtxt").write_text(CONFIG + f"# {name}\n")
        _sign_with_key(folder, tmp_path / f"{name}.sig", signer)
        ids.append(verify_folder(folder, tmp_path / f"{name}.sig", _trust_key(signer)).identity.key_id)

    der = serialization.load_pem_public_key(signer.public_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert ids[0] == ids[1] == hashlib.sha256(der).hexdigest()
    # model-signing's own hint hashes the PEM text instead, so it differs.
    hint = _bundle(tmp_path / "a.sig")["verificationMaterial"]["publicKey"]["hint"]
    assert hint == hashlib.sha256(signer.public_pem).hexdigest() != ids[0]


def test_wrong_key_is_rejected(key_signed: tuple[Path, Path], keys: dict[str, KeyPair]) -> None:
    folder, signature = key_signed
    with pytest.raises(SignatureRejected, match="made with a key that is not trusted") as caught:
        verify_folder(folder, signature, _trust_key(keys["other"]))
    assert caught.value.code == "signature_invalid"
    assert isinstance(caught.value, InvalidInput)
    assert caught.value.details["reason"] == "untrusted_signer"


def test_wrong_key_without_hint_fails_in_the_library(
    tmp_path: Path, key_signed: tuple[Path, Path], keys: dict[str, KeyPair]
) -> None:
    # Bundles from before model-signing 1.0 carry no hint: the library decides.
    folder, signature = key_signed
    bundle = _bundle(signature)
    del bundle["verificationMaterial"]["publicKey"]["hint"]
    stripped = tmp_path / "nohint.sig"
    stripped.write_text(json.dumps(bundle))

    with pytest.raises(SignatureRejected, match=r"signature verification failed \(key\): InvalidSignature"):
        verify_folder(folder, stripped, _trust_key(keys["other"]))
    trusted_both = TrustedSigners(public_keys=(keys["other"].public_pem, keys["signer"].public_pem))
    assert verify_folder(folder, stripped, trusted_both).identity.key_id == public_key_id(
        keys["signer"].public_pem
    )


def test_tampered_signature_value_is_rejected(
    tmp_path: Path, key_signed: tuple[Path, Path], keys: dict[str, KeyPair]
) -> None:
    folder, signature = key_signed
    bundle = _bundle(signature)
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(b"\x30" * 70).decode()
    forged = tmp_path / "forged.sig"
    forged.write_text(json.dumps(bundle))
    with pytest.raises(SignatureRejected, match=r"signature verification failed \(key\)"):
        verify_folder(folder, forged, _trust_key(keys["signer"]))


# --- folder changes after signing ----------------------------------------------------------


def _flip_first_byte(folder: Path) -> None:
    path = folder / "1" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


def _add_version(folder: Path) -> None:
    (folder / "2").mkdir()
    (folder / "2" / "model.onnx").write_bytes(ONNX_BYTES)


@pytest.mark.parametrize(
    ("change", "expected", "detail"),
    [
        (_flip_first_byte, "file 1/model.onnx has changed", ("changed", ["1/model.onnx"])),
        (_add_version, "file 2/model.onnx is not covered by the signature", ("extra", ["2/model.onnx"])),
        (
            lambda f: (f / "1" / "model.onnx").unlink(),
            "file 1/model.onnx is missing",
            ("missing", ["1/model.onnx"]),
        ),
        (
            lambda f: (f / "config.pbtxt").write_text(CONFIG.replace("8", "64")),
            "file config.pbtxt has changed",
            ("changed", ["config.pbtxt"]),
        ),
        # The library skips .git* files; they are refused here all the same.
        (
            lambda f: (f / ".gitignore").write_text("*\n"),
            "file .gitignore is not covered",
            ("extra", [".gitignore"]),
        ),
    ],
    ids=["byte-changed", "file-added", "file-removed", "config-changed", "gitignore-added"],
)
def test_changed_folder_is_rejected_naming_the_file(
    tmp_path: Path,
    key_signed: tuple[Path, Path],
    keys: dict[str, KeyPair],
    change: Callable[[Path], object],
    expected: str,
    detail: tuple[str, list[str]],
) -> None:
    folder, signature = key_signed
    copy = _copy(folder, tmp_path)
    change(copy)

    with pytest.raises(SignatureRejected) as caught:
        verify_folder(copy, signature, _trust_key(keys["signer"]))

    message = caught.value.message
    assert message.startswith("signature does not match the model folder: ")
    assert expected in message
    key, names = detail
    assert caught.value.details["reason"] == "folder_mismatch"
    assert caught.value.details[key] == names


def test_byte_change_message_keeps_library_text(
    tmp_path: Path, key_signed: tuple[Path, Path], keys: dict[str, KeyPair]
) -> None:
    folder, signature = key_signed
    copy = _copy(folder, tmp_path)
    _flip_first_byte(copy)
    with pytest.raises(SignatureRejected) as caught:
        verify_folder(copy, signature, _trust_key(keys["signer"]))
    assert caught.value.message == (
        "signature does not match the model folder: file 1/model.onnx has changed "
        "[model-signing: Signature mismatch: Hash mismatch for '1/model.onnx']"
    )
    library_error = caught.value.details["library_error"]
    assert library_error.startswith("Signature mismatch: [")
    assert "Hash mismatch for" in library_error


def test_symlink_in_folder_is_rejected(
    tmp_path: Path, key_signed: tuple[Path, Path], keys: dict[str, KeyPair]
) -> None:
    folder, signature = key_signed
    copy = _copy(folder, tmp_path)
    (copy / "1" / "model.onnx").unlink()
    (copy / "1" / "model.onnx").symlink_to(folder / "1" / "model.onnx")
    with pytest.raises(SignatureRejected, match=r"file 1/model\.onnx is a symbolic link"):
        verify_folder(copy, signature, _trust_key(keys["signer"]))


# --- unreadable or foreign signature files --------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x00\xffnot json at all", "is not a JSON Sigstore bundle"),
        (b"this is not a signature", "is not a JSON Sigstore bundle: Expecting value"),
        (b"[1, 2]", "top level is not an object"),
        (b"{}", "no verificationMaterial object"),
        (b'{"verificationMaterial": {"tlogEntries": []}}', "unknown signing method"),
        (b'{"verificationMaterial": {}, "verificationMaterial": {}}', "duplicate key"),
    ],
)
def test_garbage_signature_is_rejected(
    tmp_path: Path, key_signed: tuple[Path, Path], keys: dict[str, KeyPair], content: bytes, expected: str
) -> None:
    folder, _ = key_signed
    garbage = tmp_path / "garbage.sig"
    garbage.write_bytes(content)
    with pytest.raises(SignatureRejected, match=expected):
        verify_folder(folder, garbage, _trust_key(keys["signer"]))


def test_missing_signature_file_is_rejected(key_signed: tuple[Path, Path], keys: dict[str, KeyPair]) -> None:
    folder, signature = key_signed
    with pytest.raises(SignatureRejected, match=r"cannot read signature file absent\.sig: No such file"):
        verify_folder(folder, signature.with_name("absent.sig"), _trust_key(keys["signer"]))


def test_fifo_signature_is_rejected_without_blocking(
    tmp_path: Path, key_signed: tuple[Path, Path], keys: dict[str, KeyPair]
) -> None:
    folder, _ = key_signed
    fifo = tmp_path / "fifo.sig"
    os.mkfifo(fifo)
    with pytest.raises(SignatureRejected, match="is not a regular file"):
        verify_folder(folder, fifo, _trust_key(keys["signer"]))


def test_no_trusted_signer_for_the_method(
    key_signed: tuple[Path, Path], cert_signed: tuple[Path, Path], cert_signer: CertificateSigner
) -> None:
    folder, signature = key_signed
    only_certs = TrustedSigners(
        certificate_roots=(cert_signer.root_pem,), allowed_cert_identities=(f"san:{CI_URI}",)
    )
    with pytest.raises(SignatureRejected, match="key-signed but no trusted public key is configured"):
        verify_folder(folder, signature, only_certs)

    cert_folder, cert_signature = cert_signed
    with pytest.raises(SignatureRejected, match="certificate-signed but no trusted certificate root"):
        verify_folder(cert_folder, cert_signature, TrustedSigners())


# --- certificate signatures -----------------------------------------------------------------


@pytest.mark.parametrize("allowed", [f"san:{CI_URI}", f"san:{CI_EMAIL}", "fingerprint"])
def test_certificate_signature_verifies_for_an_allowed_identity(
    cert_signed: tuple[Path, Path], cert_signer: CertificateSigner, allowed: str
) -> None:
    folder, signature = cert_signed
    fingerprint = cert_signer.leaf.fingerprint(hashes.SHA256()).hex()
    if allowed == "fingerprint":
        # Upper case with colons, as openssl prints it.
        allowed = "sha256:" + ":".join(f"{b:02X}" for b in bytes.fromhex(fingerprint))
    trusted = TrustedSigners(certificate_roots=(cert_signer.root_pem,), allowed_cert_identities=(allowed,))

    verified = verify_folder(folder, signature, trusted)

    assert verified.method is SignatureMethod.CERTIFICATE
    assert verified.identity.cert_fingerprint == fingerprint
    assert verified.identity.cert_san == (CI_EMAIL, CI_URI)
    assert verified.identity.key_id == public_key_id(
        cert_signer.leaf.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert set(verified.files) == {"1/model.onnx", "config.pbtxt"}


@pytest.mark.parametrize(
    "allowed", [(), ("san:https://ci.example/other",), ("sha256:" + "00" * 32,), ("san:ci signer",)]
)
def test_certificate_signature_rejected_when_identity_not_allowed(
    cert_signed: tuple[Path, Path], cert_signer: CertificateSigner, allowed: tuple[str, ...]
) -> None:
    folder, signature = cert_signed
    trusted = TrustedSigners(certificate_roots=(cert_signer.root_pem,), allowed_cert_identities=allowed)
    with pytest.raises(SignatureRejected, match="signing certificate identity is not allowed") as caught:
        verify_folder(folder, signature, trusted)
    assert caught.value.details["reason"] == "identity_not_allowed"
    assert caught.value.details["cert_san"] == [CI_EMAIL, CI_URI]


def test_certificate_signature_rejected_under_another_root(
    cert_signed: tuple[Path, Path], other_root_pem: bytes
) -> None:
    folder, signature = cert_signed
    trusted = TrustedSigners(certificate_roots=(other_root_pem,), allowed_cert_identities=(f"san:{CI_URI}",))
    with pytest.raises(
        SignatureRejected, match=r"signature verification failed \(certificate\): X509StoreContextError"
    ):
        verify_folder(folder, signature, trusted)


def test_certificate_signature_verifies_when_one_of_several_roots_matches(
    cert_signed: tuple[Path, Path], cert_signer: CertificateSigner, other_root_pem: bytes
) -> None:
    folder, signature = cert_signed
    trusted = TrustedSigners(
        certificate_roots=(other_root_pem, cert_signer.root_pem), allowed_cert_identities=(f"san:{CI_URI}",)
    )
    assert verify_folder(folder, signature, trusted).method is SignatureMethod.CERTIFICATE


def test_certificate_signed_folder_change_names_the_file(
    tmp_path: Path, cert_signed: tuple[Path, Path], cert_signer: CertificateSigner
) -> None:
    folder, signature = cert_signed
    copy = _copy(folder, tmp_path)
    (copy / "config.pbtxt").write_text(CONFIG + "instance_group [{ kind: KIND_CPU }]\n")
    trusted = TrustedSigners(
        certificate_roots=(cert_signer.root_pem,), allowed_cert_identities=(f"san:{CI_URI}",)
    )
    with pytest.raises(SignatureRejected, match=r"file config\.pbtxt has changed"):
        verify_folder(copy, signature, trusted)


def test_certificate_bundle_given_only_to_key_trust_is_not_confused(
    cert_signed: tuple[Path, Path], cert_signer: CertificateSigner, keys: dict[str, KeyPair]
) -> None:
    # Trusting the leaf's bare key does not accept a certificate signature.
    folder, signature = cert_signed
    leaf_pem = cert_signer.leaf.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(SignatureRejected, match="no trusted certificate root"):
        verify_folder(folder, signature, TrustedSigners(public_keys=(leaf_pem,)))


# --- method detection (pure) ---------------------------------------------------------------


def test_detect_method_on_bundles_written_here(
    key_signed: tuple[Path, Path], cert_signed: tuple[Path, Path]
) -> None:
    assert detect_method(_bundle(key_signed[1])) is SignatureMethod.KEY
    assert detect_method(_bundle(cert_signed[1])) is SignatureMethod.CERTIFICATE
    assert detect_method(PUBLISHED_KEYLESS_BUNDLE) is SignatureMethod.SIGSTORE


@pytest.mark.parametrize(
    ("material", "method"),
    [
        ({"publicKey": {"hint": "ab"}, "tlogEntries": []}, SignatureMethod.KEY),
        ({"publicKey": {}}, SignatureMethod.KEY),
        (
            {"x509CertificateChain": {"certificates": [{"rawBytes": "AA=="}]}, "tlogEntries": []},
            SignatureMethod.CERTIFICATE,
        ),
        ({"x509CertificateChain": {"certificates": []}}, SignatureMethod.CERTIFICATE),
        # Bundle v0.3 keyless: a single Fulcio certificate.
        ({"certificate": {"rawBytes": "AA=="}, "tlogEntries": [{"logIndex": "1"}]}, SignatureMethod.SIGSTORE),
        # Bundles v0.1/v0.2 keyless: a chain, but with transparency-log entries.
        (
            {
                "x509CertificateChain": {"certificates": [{"rawBytes": "AA=="}]},
                "tlogEntries": [{"logIndex": "7"}],
            },
            SignatureMethod.SIGSTORE,
        ),
    ],
)
def test_detect_method_from_hand_written_material(material: dict[str, Any], method: SignatureMethod) -> None:
    assert detect_method({"mediaType": "x", "verificationMaterial": material}) is method


@pytest.mark.parametrize(
    "bundle",
    [
        {},
        {"verificationMaterial": []},
        {"verificationMaterial": {"tlogEntries": []}},
        {"verificationMaterial": {"publicKey": {}, "certificate": {}}},
    ],
)
def test_detect_method_rejects_unknown_material(bundle: dict[str, Any]) -> None:
    with pytest.raises(SignatureRejected):
        detect_method(bundle)


# --- policy input and identities -----------------------------------------------------------


def test_trusted_signers_refuse_keys_model_signing_cannot_verify(tmp_path: Path) -> None:
    for key in (
        ed25519.Ed25519PrivateKey.generate(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ):
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with pytest.raises(ValueError, match="not an EC P-256/P-384/P-521 key"):
            TrustedSigners(public_keys=(pem,))
    with pytest.raises(ValueError, match="not a PEM public key"):
        TrustedSigners(public_keys=(b"garbage",))
    with pytest.raises(ValueError, match="neither 'san:<value>'"):
        TrustedSigners(allowed_cert_identities=("email:ci@example.com",))
    with pytest.raises(ValueError, match="neither 'san:<value>'"):
        TrustedSigners(allowed_cert_identities=("sha256:abc",))
    with pytest.raises(ValueError, match="need sigstore_trust_config"):
        TrustedSigners(sigstore_identities=(("a@example.com", "https://issuer.example"),))
    for curve in (ec.SECP384R1(), ec.SECP521R1()):
        pem = (
            ec.generate_private_key(curve)
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        assert TrustedSigners(public_keys=(pem,)).public_keys == (pem,)


def test_model_signing_cannot_sign_with_ed25519(tmp_path: Path) -> None:
    from model_signing import signing

    pair = _write_key(ed25519.Ed25519PrivateKey.generate(), tmp_path, "ed")
    with pytest.raises(Exception):  # noqa: B017 - the library raises AttributeError here
        signing.Config().use_elliptic_key_signer(private_key=pair.private_path)


def test_identity_allowed() -> None:
    sans = ("ci@example.com", "https://ci.example/build")
    fingerprint = "ab" * 32
    assert identity_allowed(fingerprint, sans, ("san:ci@example.com",))
    assert identity_allowed(fingerprint, sans, ("sha256:" + ":".join(["AB"] * 32),))
    assert not identity_allowed(fingerprint, sans, ())
    assert not identity_allowed(fingerprint, sans, ("san:https://ci.example",))
    assert not identity_allowed(fingerprint, sans, ("sha256:" + "ac" * 32,))


def test_signer_identity_round_trips_through_dict() -> None:
    identity = SignerIdentity(
        method=SignatureMethod.SIGSTORE,
        key_id="aa" * 32,
        cert_fingerprint="bb" * 32,
        cert_san=("x@example.com",),
        oidc_identity="x@example.com",
        oidc_issuer="https://issuer.example",
        log_index=42,
    )
    data = identity.as_dict()
    assert data["method"] == "sigstore"
    assert data["cert_san"] == ["x@example.com"]
    assert SignerIdentity.from_dict(json.loads(json.dumps(data))) == identity
    minimal = SignerIdentity(method=SignatureMethod.KEY, key_id="cc" * 32)
    assert SignerIdentity.from_dict(minimal.as_dict()) == minimal


# --- keyless Sigstore, offline ----------------------------------------------------------------

_PUBLISHED_IDENTITY = ("stefanb@us.ibm.com", "https://sigstore.verify.ibm.com/oauth2")


@pytest.fixture(scope="module")
def sigstore_trust_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ClientTrustConfig built from the production trust data sigstore-python ships."""
    import sigstore

    store = Path(sigstore.__file__).parent / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
    if not (store / "trusted_root.json").is_file():
        pytest.skip("this sigstore release ships no embedded production trusted root")
    config = {
        "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
        "trustedRoot": json.loads((store / "trusted_root.json").read_text()),
        "signingConfig": json.loads((store / "signing_config.v0.2.json").read_text()),
    }
    path = tmp_path_factory.mktemp("sigstore") / "trust_config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def published_model(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "v1.1.0-sigstore"
    folder.mkdir()
    (folder / "signme-1").write_bytes(b"signme-1")
    (folder / "signme-2").write_bytes(b"signme-2")
    signature = tmp_path / "model.sig"
    signature.write_text(json.dumps(PUBLISHED_KEYLESS_BUNDLE))
    return folder, signature


def test_keyless_sigstore_bundle_verifies_offline(
    published_model: tuple[Path, Path], sigstore_trust_config: Path
) -> None:
    folder, signature = published_model
    trusted = TrustedSigners(
        sigstore_identities=(_PUBLISHED_IDENTITY,), sigstore_trust_config=sigstore_trust_config
    )

    verified = verify_folder(folder, signature, trusted)

    assert verified.method is SignatureMethod.SIGSTORE
    assert verified.identity.oidc_identity == "stefanb@us.ibm.com"
    assert verified.identity.oidc_issuer == "https://sigstore.verify.ibm.com/oauth2"
    assert verified.identity.cert_san == ("stefanb@us.ibm.com",)
    assert verified.identity.log_index == 598151086
    assert verified.files == {
        "signme-1": hashlib.sha256(b"signme-1").hexdigest(),
        "signme-2": hashlib.sha256(b"signme-2").hexdigest(),
    }


@pytest.mark.parametrize(
    "pair",
    [
        ("someone@example.com", "https://sigstore.verify.ibm.com/oauth2"),
        ("stefanb@us.ibm.com", "https://accounts.google.com"),
    ],
)
def test_keyless_sigstore_bundle_rejected_for_other_identity(
    published_model: tuple[Path, Path], sigstore_trust_config: Path, pair: tuple[str, str]
) -> None:
    folder, signature = published_model
    trusted = TrustedSigners(sigstore_identities=(pair,), sigstore_trust_config=sigstore_trust_config)
    with pytest.raises(SignatureRejected, match="Sigstore signer identity is not allowed"):
        verify_folder(folder, signature, trusted)


def test_keyless_sigstore_changed_file_is_named(
    published_model: tuple[Path, Path], sigstore_trust_config: Path
) -> None:
    folder, signature = published_model
    (folder / "signme-2").write_bytes(b"signme-X")
    trusted = TrustedSigners(
        sigstore_identities=(_PUBLISHED_IDENTITY,), sigstore_trust_config=sigstore_trust_config
    )
    with pytest.raises(SignatureRejected, match="file signme-2 has changed"):
        verify_folder(folder, signature, trusted)


def test_keyless_sigstore_forged_payload_is_rejected(
    tmp_path: Path, published_model: tuple[Path, Path], sigstore_trust_config: Path
) -> None:
    folder, _ = published_model
    bundle = json.loads(json.dumps(PUBLISHED_KEYLESS_BUNDLE))
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "00" * 32
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    forged = tmp_path / "forged.sig"
    forged.write_text(json.dumps(bundle))
    trusted = TrustedSigners(
        sigstore_identities=(_PUBLISHED_IDENTITY,), sigstore_trust_config=sigstore_trust_config
    )
    with pytest.raises(SignatureRejected, match=r"signature verification failed \(sigstore\)"):
        verify_folder(folder, forged, trusted)


def test_keyless_sigstore_without_configured_identity(
    published_model: tuple[Path, Path], keys: dict[str, KeyPair]
) -> None:
    folder, signature = published_model
    with pytest.raises(SignatureRejected, match="sigstore-signed but no trusted Sigstore identity"):
        verify_folder(folder, signature, _trust_key(keys["signer"]))


# A real keyless bundle, copied unchanged from the model-signing project
# (github.com/sigstore/model-transparency, scripts/tests/v1.1.0-sigstore/model.sig,
# Apache-2.0). It signs two files, "signme-1" and "signme-2", whose contents are
# their own names without a newline. Signing keylessly needs network access, so
# this is the only way to exercise the keyless path for real, offline.
PUBLISHED_KEYLESS_BUNDLE: dict[str, Any] = {
    "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
    "verificationMaterial": {
        "certificate": {
            "rawBytes": (
                "MIIC4TCCAmegAwIBAgIUa3WSeVG/boyCDQDJ07gYTLsJubMwCgYIKoZIzj0EAwMw"
                "NzEVMBMGA1UEChMMc2lnc3RvcmUuZGV2MR4wHAYDVQQDExVzaWdzdG9yZS1pbnRl"
                "cm1lZGlhdGUwHhcNMjUxMDEwMDIxMjE5WhcNMjUxMDEwMDIyMjE5WjAAMFkwEwYH"
                "KoZIzj0CAQYIKoZIzj0DAQcDQgAEY32c1Qu5APmRfKordQ/HXajD0mwIRvF1YU/E"
                "QGQ0dlraWVlHZW5AJvd1EdaQS0iD+oobZBSaJO7gQCbqnVvpFaOCAYYwggGCMA4G"
                "A1UdDwEB/wQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDAzAdBgNVHQ4EFgQUMCW6"
                "cDwPXLbzZeQCkm1whKrJ1mcwHwYDVR0jBBgwFoAU39Ppz1YkEZb5qNjpKFWixi4Y"
                "ZD8wIAYDVR0RAQH/BBYwFIESc3RlZmFuYkB1cy5pYm0uY29tMDQGCisGAQQBg78w"
                "AQEEJmh0dHBzOi8vc2lnc3RvcmUudmVyaWZ5LmlibS5jb20vb2F1dGgyMDYGCisG"
                "AQQBg78wAQgEKAwmaHR0cHM6Ly9zaWdzdG9yZS52ZXJpZnkuaWJtLmNvbS9vYXV0"
                "aDIwgYoGCisGAQQB1nkCBAIEfAR6AHgAdgDdPTBqxscRMmMZHhyZZzcCokpeuN48"
                "rf+HinKALynujgAAAZnL4/t2AAAEAwBHMEUCIHuf5vjVO9O6DfAvxewYewJQVcLL"
                "me0vu2cI0XGAf0MHAiEApyukrrG6bbKyzqy94ozAnEFu9pMALPWANU70UCDFa1sw"
                "CgYIKoZIzj0EAwMDaAAwZQIwPUmtl3FxAm9GyJlJNCkA87s99i8XXwmG/Padvf4L"
                "xa+uUrNp3k7xiNK5iPx2PYLkAjEAzDTatbjGuUu8Nt+QuKV5ETTm64Dp9tknxRpw"
                "w3crohaESGeLI9FGJjRdt/rJTg5s"
            ),
        },
        "tlogEntries": [
            {
                "logIndex": "598151086",
                "logId": {
                    "keyId": "wNI9atQGlz+VWfO6LRygH4QUfY/8W4RFwiT5i5WRgB0=",
                },
                "kindVersion": {
                    "kind": "dsse",
                    "version": "0.0.1",
                },
                "integratedTime": "1760062340",
                "inclusionPromise": {
                    "signedEntryTimestamp": (
                        "MEQCIErVIgUO5ZfOBVXVM8URhnDQ2RXg7H+960ckEz8xKkdoAiBkki5CpODdpZw8"
                        "GzMNv/nnT1j5OQ6l/Y5k00n7P0AXFQ=="
                    ),
                },
                "inclusionProof": {
                    "logIndex": "476246824",
                    "rootHash": "V0NA1ekHc4sMtyOk9+rSfb50+v1kFb/0QXYbxrm43gk=",
                    "treeSize": "476246825",
                    "hashes": [
                        "P439a1wjUaISQbG2jSIGT1cYyPX/NrcxVNhfdV7vC58=",
                        "Zmf17o5a5Q69nPPFcZTIHWt03F7krvYqLjX5ylwcyjw=",
                        "LDCpNmslA1L7YsmcpNgJE8pI0RLvKzkjgTnWmC3RoQU=",
                        "RMIhrLfp2BLk66iRNh4DO0I1QdT+xVXblaEquoF2eMA=",
                        "XuOiSVrtXSjInBDyY16xTAtnybLJbbMt0GHqY+lxnQw=",
                        "imx5Ivjtx0tL3eX7cFdug6dCZT5V9YhYr+rYIeHF3lw=",
                        "7fl3pUuZjc8qWxs6SWIHFxnL7Aose8cHfiRve+vnPH0=",
                        "HUKR+riB5/kHb8gDoz22EojKqYzZkNUppu1iZbRbgho=",
                        "rGf6uU5Fk1rxS3ouDvqesdgb3mi2vKynuX2AUMf886A=",
                        "mxhgKnbFidkcY9Sspg3POkzMS3zMgeWy033i8AHVyWQ=",
                        "EGaD/cNavzxGYLx1Gl0uNNWBZvyXlSHSdlIeH7m+63A=",
                        "2Wv4GiithwNukRKV06clevnQQYCzXmSS/+/OJtXgsXQ=",
                        "1mfy94KpcItqshH9+gwqV6jccupcaMpVsF28New8zDY=",
                        "vS7O4ozHIQZJWBiov+mkpI27GE8zAmVCEkRcP3NDyNE=",
                    ],
                    "checkpoint": {
                        "envelope": (
                            "rekor.sigstore.dev - 1193050959916656506\n476246825\nV0NA1ekHc4sMt"
                            "yOk9+rSfb50+v1kFb/0QXYbxrm43gk=\n\n\u2014 rekor.sigstore.dev wNI9ajBFAi"
                            "BtV0gov0pC7kBG6WPaApxiUudh/9C4XyIybO93bBSVwQIhAIbRCl/2O4fJ83ik6S"
                            "iLnFx3ipedmkvKoQ9ykKvQYdS4\n"
                        ),
                    },
                },
                "canonicalizedBody": (
                    "eyJhcGlWZXJzaW9uIjoiMC4wLjEiLCJraW5kIjoiZHNzZSIsInNwZWMiOnsiZW52"
                    "ZWxvcGVIYXNoIjp7ImFsZ29yaXRobSI6InNoYTI1NiIsInZhbHVlIjoiM2FmMTk5"
                    "MGQ0OTQ5OWNmMWU3NzJiNWMwMmNmNWNjMWU1OWFmMjM2Mzc0NzlhZDExOTdjMTI0"
                    "NDg0NmI1Yjg2NiJ9LCJwYXlsb2FkSGFzaCI6eyJhbGdvcml0aG0iOiJzaGEyNTYi"
                    "LCJ2YWx1ZSI6IjFkYzYyMjM5ZTZlMjc3NmE4Nzc2ZWVkN2FkNDIzMTIzZjQ2ZWFh"
                    "YjMzZGMxNTk2N2Q3Yjk5OTE2OGM2ZDExZWQifSwic2lnbmF0dXJlcyI6W3sic2ln"
                    "bmF0dXJlIjoiTUVVQ0lCak9BOFZXSWJZK1lNZHVrR1UxUDBNSG9DVmpiaWJZS1J2"
                    "S3ArZGRBcjRGQWlFQXRSaTAwNDluaGZOVFg2cjRzeHBQSlltbm1jTWVJMXlsWUQv"
                    "YWs4cUsxeWc9IiwidmVyaWZpZXIiOiJMUzB0TFMxQ1JVZEpUaUJEUlZKVVNVWkpR"
                    "MEZVUlMwdExTMHRDazFKU1VNMFZFTkRRVzFsWjBGM1NVSkJaMGxWWVROWFUyVldS"
                    "eTlpYjNsRFJGRkVTakEzWjFsVVRITktkV0pOZDBObldVbExiMXBKZW1vd1JVRjNU"
                    "WGNLVG5wRlZrMUNUVWRCTVZWRlEyaE5UV015Ykc1ak0xSjJZMjFWZFZwSFZqSk5V"
                    "alIzU0VGWlJGWlJVVVJGZUZaNllWZGtlbVJIT1hsYVV6RndZbTVTYkFwamJURnNX"
                    "a2RzYUdSSFZYZElhR05PVFdwVmVFMUVSWGROUkVsNFRXcEZOVmRvWTA1TmFsVjRU"
                    "VVJGZDAxRVNYbE5ha1UxVjJwQlFVMUdhM2RGZDFsSUNrdHZXa2w2YWpCRFFWRlpT"
                    "VXR2V2tsNmFqQkVRVkZqUkZGblFVVlpNekpqTVZGMU5VRlFiVkptUzI5eVpGRXZT"
                    "RmhoYWtRd2JYZEpVblpHTVZsVkwwVUtVVWRSTUdSc2NtRlhWbXhJV2xjMVFVcDJa"
                    "REZGWkdGUlV6QnBSQ3R2YjJKYVFsTmhTazgzWjFGRFluRnVWblp3Um1GUFEwRlpX"
                    "WGRuWjBkRFRVRTBSd3BCTVZWa1JIZEZRaTkzVVVWQmQwbElaMFJCVkVKblRsWklV"
                    "MVZGUkVSQlMwSm5aM0pDWjBWR1FsRmpSRUY2UVdSQ1owNVdTRkUwUlVablVWVk5R"
                    "MWMyQ21ORWQxQllUR0o2V21WUlEydHRNWGRvUzNKS01XMWpkMGgzV1VSV1VqQnFR"
                    "a0puZDBadlFWVXpPVkJ3ZWpGWmEwVmFZalZ4VG1wd1MwWlhhWGhwTkZrS1drUTRk"
                    "MGxCV1VSV1VqQlNRVkZJTDBKQ1dYZEdTVVZUWXpOU2JGcHRSblZaYTBJeFkzazFj"
                    "Rmx0TUhWWk1qbDBUVVJSUjBOcGMwZEJVVkZDWnpjNGR3cEJVVVZGU20xb01HUklR"
                    "bnBQYVRoMll6SnNibU16VW5aamJWVjFaRzFXZVdGWFdqVk1iV3hwWWxNMWFtSXlN"
                    "SFppTWtZeFpFZG5lVTFFV1VkRGFYTkhDa0ZSVVVKbk56aDNRVkZuUlV0QmQyMWhT"
                    "Rkl3WTBoTk5reDVPWHBoVjJSNlpFYzVlVnBUTlRKYVdFcHdXbTVyZFdGWFNuUk1i"
                    "VTUyWWxNNWRsbFlWakFLWVVSSmQyZFpiMGREYVhOSFFWRlJRakZ1YTBOQ1FVbEZa"
                    "a0ZTTmtGSVowRmtaMFJrVUZSQ2NYaHpZMUpOYlUxYVNHaDVXbHA2WTBOdmEzQmxk"
                    "VTQwT0FweVppdElhVzVMUVV4NWJuVnFaMEZCUVZwdVREUXZkREpCUVVGRlFYZENT"
                    "RTFGVlVOSlNIVm1OWFpxVms4NVR6WkVaa0YyZUdWM1dXVjNTbEZXWTB4TUNtMWxN"
                    "SFoxTW1OSk1GaEhRV1l3VFVoQmFVVkJjSGwxYTNKeVJ6WmlZa3Q1ZW5GNU9UUnZl"
                    "a0Z1UlVaMU9YQk5RVXhRVjBGT1ZUY3dWVU5FUm1FeGMzY0tRMmRaU1V0dldrbDZh"
                    "akJGUVhkTlJHRkJRWGRhVVVsM1VGVnRkR3d6Um5oQmJUbEhlVXBzU2s1RGEwRTRO"
                    "M001T1drNFdGaDNiVWN2VUdGa2RtWTBUQXA0WVN0MVZYSk9jRE5yTjNocFRrczFh"
                    "VkI0TWxCWlRHdEJha1ZCZWtSVVlYUmlha2QxVlhVNFRuUXJVWFZMVmpWRlZGUnRO"
                    "alJFY0RsMGEyNTRVbkIzQ25jelkzSnZhR0ZGVTBkbFRFazVSa2RLYWxKa2RDOXlT"
                    "bFJuTlhNS0xTMHRMUzFGVGtRZ1EwVlNWRWxHU1VOQlZFVXRMUzB0TFFvPSJ9XX19"
                ),
            },
        ],
        "timestampVerificationData": {
            "rfc3161Timestamps": [
                {
                    "signedTimestamp": (
                        "MIIE6jADAgEAMIIE4QYJKoZIhvcNAQcCoIIE0jCCBM4CAQMxDTALBglghkgBZQME"
                        "AgEwgcMGCyqGSIb3DQEJEAEEoIGzBIGwMIGtAgEBBgkrBgEEAYO/MAIwMTANBglg"
                        "hkgBZQMEAgEFAAQga5YfS9uNUrAWaCZmFrnMjsPuChgSgfDRpFdOtmM+ac4CFQD/"
                        "YLoVuYw+NCUay/d75F3V5kFWixgPMjAyNTEwMTAwMjEyMjBaMAMCAQECCQDFN7Jn"
                        "d4cho6AypDAwLjEVMBMGA1UEChMMc2lnc3RvcmUuZGV2MRUwEwYDVQQDEwxzaWdz"
                        "dG9yZS10c2GgggIUMIICEDCCAZagAwIBAgIUOhNULwyQYe68wUMvy4qOiyojiwww"
                        "CgYIKoZIzj0EAwMwOTEVMBMGA1UEChMMc2lnc3RvcmUuZGV2MSAwHgYDVQQDExdz"
                        "aWdzdG9yZS10c2Etc2VsZnNpZ25lZDAeFw0yNTA0MDgwNjU5NDNaFw0zNTA0MDYw"
                        "NjU5NDNaMC4xFTATBgNVBAoTDHNpZ3N0b3JlLmRldjEVMBMGA1UEAxMMc2lnc3Rv"
                        "cmUtdHNhMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE4ra2Z8hKNig2T9kFjCAToGG3"
                        "0jky+WQv3BzL+mKvh1SKNR/UwuwsfNCg4sryoYAd8E6isovVA3M4aoNdm9QDi50Z"
                        "8nTEyvqgfDPtTIwXItfiW/AFf1V7uwkbkAoj0xxco2owaDAOBgNVHQ8BAf8EBAMC"
                        "B4AwHQYDVR0OBBYEFIn9eUOHz9BlRsMCRscsc1t9tOsDMB8GA1UdIwQYMBaAFJjs"
                        "Ae9/u1H/1JUeb4qImFMHic6/MBYGA1UdJQEB/wQMMAoGCCsGAQUFBwMIMAoGCCqG"
                        "SM49BAMDA2gAMGUCMDtpsV/6KaO0qyF/UMsX2aSUXKQFdoGTptQGc0ftq1csulHP"
                        "GG6dsmyMNd3JB+G3EQIxAOajvBcjpJmKb4Nv+2Taoj8Uc5+b6ih6FXCCKraSqupe"
                        "07zqswMcXJTe1cExvHvvlzGCAdowggHWAgEBMFEwOTEVMBMGA1UEChMMc2lnc3Rv"
                        "cmUuZGV2MSAwHgYDVQQDExdzaWdzdG9yZS10c2Etc2VsZnNpZ25lZAIUOhNULwyQ"
                        "Ye68wUMvy4qOiyojiwwwCwYJYIZIAWUDBAIBoIH8MBoGCSqGSIb3DQEJAzENBgsq"
                        "hkiG9w0BCRABBDAcBgkqhkiG9w0BCQUxDxcNMjUxMDEwMDIxMjIwWjAvBgkqhkiG"
                        "9w0BCQQxIgQgv1Csv8lsWQc5xuuZyGTRUpqYwoNDXHP5miHeRWHb6PMwgY4GCyqG"
                        "SIb3DQEJEAIvMX8wfTB7MHkEIIX5J7wHq2LKw7RDVsEO/IGyxog/2nq55thw2dE6"
                        "zQW3MFUwPaQ7MDkxFTATBgNVBAoTDHNpZ3N0b3JlLmRldjEgMB4GA1UEAxMXc2ln"
                        "c3RvcmUtdHNhLXNlbGZzaWduZWQCFDoTVC8MkGHuvMFDL8uKjosqI4sMMAoGCCqG"
                        "SM49BAMCBGYwZAIwDimRagDUYAiMYNtUqwZ7rJyj1WjjivMV8kwWVZ+Sz+PMPsj8"
                        "pmvvSSiMcBzOSrNvAjBWhngjKfqhBqFDZprdWlUSgdXokkT6rMyoSe5gvw8QkLhg"
                        "R3eo+/5930xAA+UmiBQ="
                    ),
                },
            ],
        },
    },
    "dsseEnvelope": {
        "payload": (
            "ewogICJfdHlwZSI6ICJodHRwczovL2luLXRvdG8uaW8vU3RhdGVtZW50L3YxIiwK"
            "ICAic3ViamVjdCI6IFsKICAgIHsKICAgICAgIm5hbWUiOiAidjEuMS4wLXNpZ3N0"
            "b3JlIiwKICAgICAgImRpZ2VzdCI6IHsKICAgICAgICAic2hhMjU2IjogIjYxZDQ4"
            "NDlkOWQ5MDA3NmQ2MjE1ZjRkNTI1ZjEzZDY1NzRhZjhlM2Y2N2FlZjNlNmYzNmZj"
            "NDBhMTRmZGQyMjYiCiAgICAgIH0KICAgIH0KICBdLAogICJwcmVkaWNhdGVUeXBl"
            "IjogImh0dHBzOi8vbW9kZWxfc2lnbmluZy9zaWduYXR1cmUvdjEuMCIsCiAgInBy"
            "ZWRpY2F0ZSI6IHsKICAgICJyZXNvdXJjZXMiOiBbCiAgICAgIHsKICAgICAgICAi"
            "ZGlnZXN0IjogImY2MzEwMDY2YzczMjA0OTdlYTU1NDI2MGMzMmM0MzY2MGJmZjY0"
            "OGNiMmE2MTE5NDgzMmNjMDg2MDc3MDg1ZTEiLAogICAgICAgICJuYW1lIjogInNp"
            "Z25tZS0xIiwKICAgICAgICAiYWxnb3JpdGhtIjogInNoYTI1NiIKICAgICAgfSwK"
            "ICAgICAgewogICAgICAgICJkaWdlc3QiOiAiMzJkY2IxZjhlMWFlNTJkNTk2M2U1"
            "NmE2YmEwNmFiNThiNDI0YzE1ZWQyYTZiNzBkMmZlY2ExZDA4OTM3MDAyOCIsCiAg"
            "ICAgICAgIm5hbWUiOiAic2lnbm1lLTIiLAogICAgICAgICJhbGdvcml0aG0iOiAi"
            "c2hhMjU2IgogICAgICB9CiAgICBdLAogICAgInNlcmlhbGl6YXRpb24iOiB7CiAg"
            "ICAgICJhbGxvd19zeW1saW5rcyI6IGZhbHNlLAogICAgICAibWV0aG9kIjogImZp"
            "bGVzIiwKICAgICAgImhhc2hfdHlwZSI6ICJzaGEyNTYiLAogICAgICAiaWdub3Jl"
            "X3BhdGhzIjogWwogICAgICAgICIuZ2l0aWdub3JlIiwKICAgICAgICAiLmdpdGF0"
            "dHJpYnV0ZXMiLAogICAgICAgICIuZ2l0IiwKICAgICAgICAiLmdpdGh1YiIsCiAg"
            "ICAgICAgImlnbm9yZS1tZSIsCiAgICAgICAgIm1vZGVsLnNpZyIKICAgICAgXQog"
            "ICAgfQogIH0KfQ=="
        ),
        "payloadType": "application/vnd.in-toto+json",
        "signatures": [
            {
                "sig": (
                    "MEUCIBjOA8VWIbY+YMdukGU1P0MHoCVjbibYKRvKp+ddAr4FAiEAtRi0049nhfNT"
                    "X6r4sxpPJYmnmcMeI1ylYD/ak8qK1yg="
                ),
            },
        ],
    },
}
