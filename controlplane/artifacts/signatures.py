"""Verification of OpenSSF model-signing signatures over a model folder.

An adapter around PyPI ``model-signing`` 1.1.1 with a small pure policy part
(``TrustedSigners``, ``detect_method``, ``identity_allowed``).

What is signed: the folder given to ``verify_folder`` is the *whole* Triton
model folder (``config.pbtxt`` plus the numbered version directories), i.e.
exactly what Triton loads. Every regular file in it must be listed in the
signed statement and every listed file must be present, so a changed
``config.pbtxt`` (backend, instance groups, parameters...) fails exactly like
a changed weight file. Files model-signing would quietly skip (``.git*``,
``ignore_paths`` recorded by the signer) are refused here too: nothing
unsigned goes through. Empty directories are not files and are not covered.

What model-signing 1.1.1 writes (a Sigstore bundle, JSON, media type
``application/vnd.dev.sigstore.bundle.v0.3+json``, wrapping a DSSE envelope
whose payload is the in-toto statement); the method is told apart by
``verificationMaterial`` only:

* ``key``: ``{"publicKey": {"hint": <hex sha256 of the PEM SPKI>},
  "tlogEntries": []}``. The hint is the SHA-256 of the *PEM* text, not of the
  DER, so it differs from ``SignerIdentity.key_id``. Bundles older than 1.0
  carry no hint.
* ``certificate``: ``{"x509CertificateChain": {"certificates": [{"rawBytes":
  <base64 DER leaf>}, <chain...>]}, "tlogEntries": []}``.
* ``sigstore`` (keyless, written by sigstore-python): ``{"certificate":
  {"rawBytes": <base64 DER Fulcio leaf>}, "tlogEntries": [{"logIndex": "...",
  ...}]}`` plus ``timestampVerificationData``; bundles v0.1/v0.2 put the
  Fulcio chain in ``x509CertificateChain`` but always with transparency-log
  entries, which is what separates them from ``certificate``.

Library facts this module works around (model-signing 1.1.1):

* Key signing and verification work only with elliptic keys on P-256, P-384
  and P-521; Ed25519 and RSA keys fail, so ``TrustedSigners`` refuses them.
* The certificate verifier checks the chain (at the leaf's ``notBefore``, so
  expiry is not enforced) and the key usage but no identity: the leaf's SAN
  or fingerprint is matched against ``allowed_cert_identities`` here.
* A ``verifying.Config`` reused across models leaks ignored paths: a new one
  is built for every attempt.
* Any exception from the library means "not verified"; its text is kept in
  the ``SignatureRejected`` message.
* Keyless Sigstore verification goes online to refresh trust data unless a
  ClientTrustConfig file is given; ``sigstore_trust_config`` is therefore
  required for keyless signers and everything here runs offline.

The folder must not change while it is verified (verify the private copy
that will be served): the library hashes it once, and the check that its file
list matches the statement is a second, separate walk.
"""

from __future__ import annotations

import ast
import base64
import binascii
import functools
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controlplane.errors import InvalidInput

if TYPE_CHECKING:
    from cryptography import x509

# cryptography (~10 MB resident) is imported by the functions that verify: a control plane that
# checks no signature never loads it.

__all__ = [
    "MAX_SIGNATURE_BYTES",
    "SignatureMethod",
    "SignatureRejected",
    "SignerIdentity",
    "TrustedSigners",
    "VerifiedSignature",
    "cert_identities",
    "detect_method",
    "identity_allowed",
    "public_key_id",
    "verify_folder",
]

#: A bundle lists one digest per file (~130 bytes each, base64); 32 MiB is
#: far above any real model and keeps a hostile upload from exhausting memory.
MAX_SIGNATURE_BYTES = 32 * 1024 * 1024

_SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")
# Fulcio's OIDC issuer extensions: v2 (DER UTF8String) and the deprecated v1 (raw).
_OID_FULCIO_ISSUER_V2 = "1.3.6.1.4.1.57264.1.8"
_OID_FULCIO_ISSUER_V1 = "1.3.6.1.4.1.57264.1.1"
_MISMATCH_PREFIX = "Signature mismatch: "


class SignatureRejected(InvalidInput):
    """The signature does not verify, or its signer is not trusted.

    ``details`` holds ``{"reason": ...}`` plus, for a folder that differs from
    the signed statement, ``changed``/``extra``/``missing`` file lists and the
    library's raw text as ``library_error``.
    """

    code = "signature_invalid"


class SignatureMethod(StrEnum):
    """How a bundle was signed, told apart by its verification material."""

    KEY = "key"
    CERTIFICATE = "certificate"
    SIGSTORE = "sigstore"


@dataclass(frozen=True)
class SignerIdentity:
    """Who signed, as far as the verified material says.

    ``key_id`` is the hex SHA-256 of the public key's DER SubjectPublicKeyInfo
    (the key, or the certificate's key); ``cert_fingerprint`` the hex SHA-256
    of the leaf certificate's DER. ``cert_san`` lists the leaf's e-mail, URI,
    DNS and IP SAN values (a tuple, so the identity stays hashable).
    """

    method: SignatureMethod
    key_id: str | None = None
    cert_fingerprint: str | None = None
    cert_san: tuple[str, ...] | None = None
    oidc_identity: str | None = None
    oidc_issuer: str | None = None
    log_index: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (``cert_san`` as a list)."""
        return {
            "method": str(self.method),
            "key_id": self.key_id,
            "cert_fingerprint": self.cert_fingerprint,
            "cert_san": list(self.cert_san) if self.cert_san is not None else None,
            "oidc_identity": self.oidc_identity,
            "oidc_issuer": self.oidc_issuer,
            "log_index": self.log_index,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignerIdentity:
        """Rebuild an identity from ``as_dict`` output."""
        san = data.get("cert_san")
        log_index = data.get("log_index")
        return cls(
            method=SignatureMethod(data["method"]),
            key_id=data.get("key_id"),
            cert_fingerprint=data.get("cert_fingerprint"),
            cert_san=tuple(san) if san is not None else None,
            oidc_identity=data.get("oidc_identity"),
            oidc_issuer=data.get("oidc_issuer"),
            log_index=int(log_index) if log_index is not None else None,
        )


@dataclass(frozen=True)
class VerifiedSignature:
    """A signature that verified against a folder and a trusted signer.

    ``statement_bytes`` is the DSSE payload (the in-toto statement JSON) and
    ``files`` maps each relative path to the SHA-256 hex from its
    ``predicate.resources``; ``bundle_bytes`` is the signature file as read.
    """

    identity: SignerIdentity
    statement_bytes: bytes
    statement_sha256: str
    bundle_bytes: bytes
    files: dict[str, str] = field(hash=False)
    method: SignatureMethod


@dataclass(frozen=True)
class TrustedSigners:
    """Who may sign models (pure policy input, validated on construction).

    * ``public_keys``: PEM EC public keys (P-256/384/521) for key signatures.
    * ``certificate_roots``: PEM CA certificates for certificate signatures;
      a certificate signature is accepted only if its leaf also matches one of
      ``allowed_cert_identities`` (``san:<value>`` or ``sha256:<hex
      fingerprint of the leaf DER>``). No allowed identity means none passes.
    * ``sigstore_identities``: ``(identity, oidc_issuer)`` pairs for keyless
      Sigstore signatures, checked offline against the ClientTrustConfig JSON
      at ``sigstore_trust_config`` (required when identities are given).

    Raises ``ValueError`` on unusable entries, so a misconfiguration shows at
    start-up rather than as a rejected model.
    """

    public_keys: tuple[bytes, ...] = ()
    certificate_roots: tuple[bytes, ...] = ()
    allowed_cert_identities: tuple[str, ...] = ()
    sigstore_identities: tuple[tuple[str, str], ...] = ()
    sigstore_trust_config: Path | None = None

    def __post_init__(self) -> None:
        for index, pem in enumerate(self.public_keys):
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec

            try:
                key = serialization.load_pem_public_key(pem)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"public_keys[{index}] is not a PEM public key: {exc}") from exc
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _SUPPORTED_CURVES:
                raise ValueError(
                    f"public_keys[{index}] is not an EC P-256/P-384/P-521 key; "
                    "model-signing 1.1.1 verifies no other key type"
                )
        for index, pem in enumerate(self.certificate_roots):
            from cryptography import x509

            try:
                x509.load_pem_x509_certificates(pem)
            except ValueError as exc:
                raise ValueError(f"certificate_roots[{index}] is not PEM certificates: {exc}") from exc
        for entry in self.allowed_cert_identities:
            kind, _, value = entry.partition(":")
            if kind == "san" and value:
                continue
            if kind == "sha256" and len(_normalize_fingerprint(value)) == 64:
                try:
                    bytes.fromhex(_normalize_fingerprint(value))
                    continue
                except ValueError:
                    pass
            raise ValueError(
                f"allowed_cert_identities entry {entry!r} is neither 'san:<value>' "
                "nor 'sha256:<64 hex digits>'"
            )
        for pair in self.sigstore_identities:
            if len(pair) != 2 or not all(isinstance(part, str) and part for part in pair):
                raise ValueError(f"sigstore_identities entry {pair!r} is not an (identity, issuer) pair")
        if self.sigstore_identities and self.sigstore_trust_config is None:
            raise ValueError(
                "sigstore_identities need sigstore_trust_config: without a ClientTrustConfig "
                "file the Sigstore verifier fetches trust data over the network"
            )


def public_key_id(public_key_pem: bytes) -> str:
    """Return the hex SHA-256 of the DER SubjectPublicKeyInfo of a PEM public key."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_key_pem)
    return _key_id(key)


def cert_identities(certificate: x509.Certificate) -> tuple[str, tuple[str, ...]]:
    """Return a certificate's (SHA-256 DER fingerprint hex, SAN values)."""
    from cryptography.hazmat.primitives import serialization

    fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    return fingerprint, _san_values(certificate)


def identity_allowed(fingerprint: str, sans: tuple[str, ...], allowed: tuple[str, ...]) -> bool:
    """Whether a leaf with this fingerprint and SANs matches an allowed entry.

    Entries are ``san:<exact value>`` or ``sha256:<hex>`` (case and colons in
    the fingerprint do not matter). An empty ``allowed`` allows nothing.
    """
    wanted_fingerprint = _normalize_fingerprint(fingerprint)
    for entry in allowed:
        kind, _, value = entry.partition(":")
        if kind == "san" and value in sans:
            return True
        if kind == "sha256" and _normalize_fingerprint(value) == wanted_fingerprint:
            return True
    return False


def detect_method(bundle: Mapping[str, Any]) -> SignatureMethod:
    """Tell how a parsed bundle was signed from its ``verificationMaterial``.

    ``publicKey`` means key; ``certificate`` (bundle v0.3, single Fulcio leaf)
    means keyless Sigstore; ``x509CertificateChain`` means certificate unless
    transparency-log entries come with it (keyless bundles v0.1/v0.2).
    Raises ``SignatureRejected`` when the material is missing or ambiguous.
    """
    material = bundle.get("verificationMaterial")
    if not isinstance(material, Mapping):
        raise SignatureRejected(
            "signature is not a Sigstore bundle: no verificationMaterial object",
            details={"reason": "not_a_bundle"},
        )
    present = [name for name in ("publicKey", "x509CertificateChain", "certificate") if name in material]
    if len(present) != 1:
        found = ", ".join(present) if present else "none of publicKey, x509CertificateChain, certificate"
        raise SignatureRejected(
            f"signature uses an unknown signing method (verificationMaterial has {found})",
            details={"reason": "unknown_method"},
        )
    kind = present[0]
    if kind == "publicKey":
        return SignatureMethod.KEY
    if kind == "certificate":
        return SignatureMethod.SIGSTORE
    tlog_entries = material.get("tlogEntries")
    if isinstance(tlog_entries, list) and tlog_entries:
        return SignatureMethod.SIGSTORE
    return SignatureMethod.CERTIFICATE


def verify_folder(folder: Path, signature_path: Path, trusted: TrustedSigners) -> VerifiedSignature:
    """Verify that ``signature_path`` signs exactly the model ``folder`` for a trusted signer.

    ``folder`` is the whole Triton model folder (config.pbtxt included). The
    signing method is detected from the bundle; each trusted key, root or
    Sigstore identity that applies is tried with a fresh
    ``model_signing.verifying.Config``. Raises ``SignatureRejected`` (code
    ``signature_invalid``) for an unreadable or non-JSON signature, an unknown
    method, no trusted signer for the method, an identity that is not allowed,
    a library verification failure (its text kept), and a folder that differs
    from the signed statement (the files named).
    """
    bundle_bytes = _read_signature(signature_path)
    bundle = _parse_bundle(bundle_bytes, signature_path)
    method = detect_method(bundle)
    statement_bytes, statement = _unverified_statement(bundle)
    resources = _resources(statement)
    on_disk = _folder_files(folder, signature_path, statement)

    with tempfile.TemporaryDirectory(prefix="controlplane-sig-") as scratch:
        scratch_dir = Path(scratch)
        # The library reads the signature by path: hand it the bytes already
        # read, so what is verified is what is returned (no swap in between).
        bundle_copy = scratch_dir / "bundle.sig"
        bundle_copy.write_bytes(bundle_bytes)
        if method is SignatureMethod.KEY:
            identity = _verify_key(folder, bundle_copy, bundle, trusted, scratch_dir, resources, on_disk)
        elif method is SignatureMethod.CERTIFICATE:
            identity = _verify_certificate(
                folder, bundle_copy, bundle, trusted, scratch_dir, resources, on_disk
            )
        else:
            identity = _verify_sigstore(folder, bundle_copy, bundle, trusted, resources, on_disk)

    # The library skips .git* and the signer's ignore_paths; refuse anything
    # on disk that the statement does not list, and the reverse.
    extra = sorted(set(on_disk) - set(resources))
    missing = sorted(set(resources) - set(on_disk))
    if extra or missing:
        raise _folder_mismatch([], extra, missing, library_error=None)

    return VerifiedSignature(
        identity=identity,
        statement_bytes=statement_bytes,
        statement_sha256=hashlib.sha256(statement_bytes).hexdigest(),
        bundle_bytes=bundle_bytes,
        files=dict(resources),
        method=method,
    )


# --- reading and parsing -----------------------------------------------------


def _read_signature(signature_path: Path) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO planted as the signature must not hang.
        fd = os.open(signature_path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise SignatureRejected(
                    f"signature file {signature_path.name} is not a regular file",
                    details={"reason": "unreadable"},
                )
            data = handle.read(MAX_SIGNATURE_BYTES + 1)
    except OSError as exc:
        raise SignatureRejected(
            f"cannot read signature file {signature_path.name}: {exc.strerror or exc}",
            details={"reason": "unreadable"},
        ) from exc
    if len(data) > MAX_SIGNATURE_BYTES:
        raise SignatureRejected(
            f"signature file {signature_path.name} is larger than {MAX_SIGNATURE_BYTES} bytes",
            details={"reason": "unreadable"},
        )
    return data


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers reading one document must not disagree on which duplicate wins.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_bundle(data: bytes, signature_path: Path) -> dict[str, Any]:
    try:
        bundle = json.loads(data.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureRejected(
            f"signature file {signature_path.name} is not a JSON Sigstore bundle: {exc}",
            details={"reason": "not_json"},
        ) from exc
    if not isinstance(bundle, dict):
        raise SignatureRejected(
            f"signature file {signature_path.name} is not a JSON Sigstore bundle: top level is not an object",
            details={"reason": "not_json"},
        )
    return bundle


def _unverified_statement(bundle: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """Decode the DSSE payload; trusted only once the library has verified it."""
    envelope = bundle.get("dsseEnvelope")
    payload = envelope.get("payload") if isinstance(envelope, Mapping) else None
    if not isinstance(payload, str):
        raise SignatureRejected(
            "signature is not a model-signing bundle: no dsseEnvelope.payload",
            details={"reason": "not_a_bundle"},
        )
    try:
        # validate=True: a lenient decoder could read a different payload than
        # the one the library checked.
        statement_bytes = base64.b64decode(payload, validate=True)
        statement = json.loads(statement_bytes, object_pairs_hook=_reject_duplicate_keys)
    except (binascii.Error, ValueError) as exc:
        raise SignatureRejected(
            f"signature payload is not a base64 in-toto statement: {exc}",
            details={"reason": "bad_statement"},
        ) from exc
    if not isinstance(statement, dict):
        raise SignatureRejected(
            "signature payload is not an in-toto statement object", details={"reason": "bad_statement"}
        )
    return statement_bytes, statement


def _resources(statement: Mapping[str, Any]) -> dict[str, str]:
    predicate = statement.get("predicate")
    if not isinstance(predicate, Mapping):
        raise SignatureRejected("signed statement has no predicate", details={"reason": "bad_statement"})
    serialization_args = predicate.get("serialization")
    if not isinstance(serialization_args, Mapping) or serialization_args.get("method") != "files":
        method = serialization_args.get("method") if isinstance(serialization_args, Mapping) else None
        # Shard manifests name byte ranges, not files (and 1.1.1 fails to
        # verify them by auto-detection anyway).
        raise SignatureRejected(
            f"signature uses serialization method {method!r}; only per-file ('files') is accepted",
            details={"reason": "unsupported_serialization"},
        )
    if serialization_args.get("allow_symlinks"):
        raise SignatureRejected(
            "signature was made with allow_symlinks; symbolic links are not accepted in a model folder",
            details={"reason": "unsupported_serialization"},
        )
    entries = predicate.get("resources")
    if not isinstance(entries, list):
        raise SignatureRejected("signed statement has no resources list", details={"reason": "bad_statement"})
    files: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise SignatureRejected(
                "malformed entry in predicate.resources", details={"reason": "bad_statement"}
            )
        name, algorithm, digest = entry.get("name"), entry.get("algorithm"), entry.get("digest")
        if not isinstance(name, str) or not isinstance(digest, str):
            raise SignatureRejected(
                "malformed entry in predicate.resources", details={"reason": "bad_statement"}
            )
        if algorithm != "sha256":
            # The registry addresses content by SHA-256; a BLAKE digest could
            # not be compared with anything downstream.
            raise SignatureRejected(
                f"signature hashes file {name} with {algorithm!r}; only sha256 is accepted",
                details={"reason": "unsupported_serialization"},
            )
        if name in files:
            raise SignatureRejected(
                f"signed statement lists file {name} twice", details={"reason": "bad_statement"}
            )
        files[name] = digest.lower()
    return files


def _signed_ignore_paths(statement: Mapping[str, Any]) -> set[str]:
    predicate = statement.get("predicate")
    serialization_args = predicate.get("serialization") if isinstance(predicate, Mapping) else None
    ignored = serialization_args.get("ignore_paths") if isinstance(serialization_args, Mapping) else None
    if not isinstance(ignored, list):
        return set()
    return {Path(item).as_posix() for item in ignored if isinstance(item, str)}


def _folder_files(folder: Path, signature_path: Path, statement: Mapping[str, Any]) -> list[str]:
    """Relative POSIX paths of every regular file; refuse links and special files.

    A signature stored inside the folder is left out only when the signed
    statement itself ignores it (as the model-signing CLI records it);
    otherwise it is an unsigned file like any other.
    """
    try:
        info = folder.lstat()
    except OSError as exc:
        raise SignatureRejected(
            f"cannot read model folder {folder.name}: {exc.strerror or exc}", details={"reason": "bad_folder"}
        ) from exc
    if not stat.S_ISDIR(info.st_mode):
        raise SignatureRejected(
            f"model folder {folder.name} is not a directory", details={"reason": "bad_folder"}
        )
    skip: str | None = None
    try:
        relative_signature = signature_path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        relative_signature = None
    if relative_signature is not None and relative_signature in _signed_ignore_paths(statement):
        skip = relative_signature

    files: list[str] = []
    for relative, mode in _walk(folder, ""):
        if stat.S_ISDIR(mode):
            continue
        if stat.S_ISLNK(mode) or not stat.S_ISREG(mode):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            raise SignatureRejected(
                f"signature cannot cover the model folder: file {relative} is {kind}",
                details={"reason": "bad_folder", "file": relative},
            )
        if relative != skip:
            files.append(relative)
    return sorted(files)


def _walk(root: Path, prefix: str) -> Iterator[tuple[str, int]]:
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
        listed = [(entry, entry.stat(follow_symlinks=False).st_mode) for entry in entries]
    except OSError as exc:
        raise SignatureRejected(
            f"cannot read model folder: {prefix or '.'}: {exc.strerror or exc}",
            details={"reason": "bad_folder"},
        ) from exc
    for entry, mode in listed:
        relative = f"{prefix}{entry.name}"
        yield relative, mode
        if stat.S_ISDIR(mode):
            yield from _walk(Path(entry.path), f"{relative}/")


# --- identities ----------------------------------------------------------------


def _key_id(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _pem_hint(key: Any) -> str:
    # model-signing's publicKey.hint: SHA-256 of the re-serialized PEM text.
    from cryptography.hazmat.primitives import serialization

    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _normalize_fingerprint(value: str) -> str:
    return value.replace(":", "").strip().lower()


def _san_values(certificate: x509.Certificate) -> tuple[str, ...]:
    from cryptography import x509

    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    values: list[str] = []
    for kind in (x509.RFC822Name, x509.UniformResourceIdentifier, x509.DNSName):
        values.extend(san.get_values_for_type(kind))
    values.extend(str(address) for address in san.get_values_for_type(x509.IPAddress))
    return tuple(values)


def _leaf_certificate(bundle: Mapping[str, Any]) -> x509.Certificate:
    from cryptography import x509

    material = bundle["verificationMaterial"]
    try:
        if "certificate" in material:
            raw = material["certificate"]["rawBytes"]
        else:
            raw = material["x509CertificateChain"]["certificates"][0]["rawBytes"]
        return x509.load_der_x509_certificate(base64.b64decode(raw, validate=True))
    except (KeyError, IndexError, TypeError, ValueError, binascii.Error) as exc:
        raise SignatureRejected(
            f"signature carries no readable signing certificate: {exc}", details={"reason": "not_a_bundle"}
        ) from exc


def _fulcio_issuer(certificate: x509.Certificate) -> str | None:
    from cryptography import x509

    for oid, der_wrapped in ((_OID_FULCIO_ISSUER_V2, True), (_OID_FULCIO_ISSUER_V1, False)):
        try:
            extension = certificate.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
        except x509.ExtensionNotFound:
            continue
        raw = getattr(extension.value, "value", b"")
        if der_wrapped:
            raw = _der_utf8_string(raw)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _der_utf8_string(data: bytes) -> bytes:
    # Tag 0x0C, then a short or long form length: all Fulcio ever writes.
    if len(data) < 2 or data[0] != 0x0C:
        return b""
    length, offset = data[1], 2
    if length & 0x80:
        count = length & 0x7F
        length, offset = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
    return data[offset : offset + length]


# --- verification per method ------------------------------------------------------


def _verify_key(
    folder: Path,
    bundle_copy: Path,
    bundle: Mapping[str, Any],
    trusted: TrustedSigners,
    scratch: Path,
    resources: Mapping[str, str],
    on_disk: list[str],
) -> SignerIdentity:
    from cryptography.hazmat.primitives import serialization

    verifying = _verifying()
    if not trusted.public_keys:
        raise _no_signer(SignatureMethod.KEY)
    keys: dict[str, Any] = {}
    for pem in trusted.public_keys:
        key = serialization.load_pem_public_key(pem)
        keys.setdefault(_key_id(key), key)  # the same key twice would hash the folder twice
    hint = bundle["verificationMaterial"]["publicKey"]
    hint = hint.get("hint") if isinstance(hint, Mapping) else None
    if hint:
        # A mismatched hint fails in the library anyway; filtering here just
        # keeps the rejection message about the real cause.
        keys = {key_id: key for key_id, key in keys.items() if _pem_hint(key) == hint}
        if not keys:
            raise SignatureRejected(
                f"signature was made with a key that is not trusted (publicKey hint {hint})",
                details={"reason": "untrusted_signer"},
            )
    failures: list[str] = []
    for key_id, key in keys.items():
        key_path = scratch / f"{key_id}.pub"
        key_path.write_bytes(
            key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        error = _run_library(
            functools.partial(_key_config, verifying, key_path),
            folder,
            bundle_copy,
            resources,
            on_disk,
        )
        if error is None:
            return SignerIdentity(method=SignatureMethod.KEY, key_id=key_id)
        failures.append(error)
    raise _not_verified(SignatureMethod.KEY, failures)


def _verify_certificate(
    folder: Path,
    bundle_copy: Path,
    bundle: Mapping[str, Any],
    trusted: TrustedSigners,
    scratch: Path,
    resources: Mapping[str, str],
    on_disk: list[str],
) -> SignerIdentity:
    verifying = _verifying()
    if not trusted.certificate_roots:
        raise _no_signer(SignatureMethod.CERTIFICATE)
    leaf = _leaf_certificate(bundle)
    fingerprint, sans = cert_identities(leaf)
    # Checked before the library so a disallowed signer costs no hashing; the
    # library checks the chain and the key usage but no identity at all.
    if not identity_allowed(fingerprint, sans, trusted.allowed_cert_identities):
        shown = ", ".join(sans) if sans else "none"
        raise SignatureRejected(
            f"signing certificate identity is not allowed (SAN: {shown}; sha256:{fingerprint})",
            details={
                "reason": "identity_not_allowed",
                "cert_san": list(sans),
                "cert_fingerprint": fingerprint,
            },
        )
    failures: list[str] = []
    for index, pem in enumerate(trusted.certificate_roots):
        root_path = scratch / f"root-{index}.pem"
        root_path.write_bytes(pem)
        error = _run_library(
            functools.partial(_certificate_config, verifying, root_path),
            folder,
            bundle_copy,
            resources,
            on_disk,
        )
        if error is None:
            return SignerIdentity(
                method=SignatureMethod.CERTIFICATE,
                key_id=_key_id(leaf.public_key()),
                cert_fingerprint=fingerprint,
                cert_san=sans,
            )
        failures.append(error)
    raise _not_verified(SignatureMethod.CERTIFICATE, failures)


def _verify_sigstore(
    folder: Path,
    bundle_copy: Path,
    bundle: Mapping[str, Any],
    trusted: TrustedSigners,
    resources: Mapping[str, str],
    on_disk: list[str],
) -> SignerIdentity:
    verifying = _verifying()
    trust_config = trusted.sigstore_trust_config
    if not trusted.sigstore_identities or trust_config is None:
        raise _no_signer(SignatureMethod.SIGSTORE)
    leaf = _leaf_certificate(bundle)
    fingerprint, sans = cert_identities(leaf)
    issuer = _fulcio_issuer(leaf)
    candidates = [
        (ident, iss) for ident, iss in trusted.sigstore_identities if ident in sans and iss == issuer
    ]
    if not candidates:
        shown = ", ".join(sans) if sans else "none"
        raise SignatureRejected(
            f"Sigstore signer identity is not allowed (identity: {shown}; issuer: {issuer})",
            details={"reason": "identity_not_allowed", "cert_san": list(sans), "oidc_issuer": issuer},
        )
    failures: list[str] = []
    for identity, oidc_issuer in candidates:
        error = _run_library(
            functools.partial(_sigstore_config, verifying, identity, oidc_issuer, trust_config),
            folder,
            bundle_copy,
            resources,
            on_disk,
        )
        if error is None:
            return SignerIdentity(
                method=SignatureMethod.SIGSTORE,
                key_id=_key_id(leaf.public_key()),
                cert_fingerprint=fingerprint,
                cert_san=sans,
                oidc_identity=identity,
                oidc_issuer=oidc_issuer,
                log_index=_log_index(bundle),
            )
        failures.append(error)
    raise _not_verified(SignatureMethod.SIGSTORE, failures)


def _log_index(bundle: Mapping[str, Any]) -> int | None:
    entries = bundle["verificationMaterial"].get("tlogEntries")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], Mapping):
        return None
    try:
        return int(entries[0]["logIndex"])
    except (KeyError, TypeError, ValueError):
        return None


# Factories of a fresh model_signing Config per attempt (see _run_library).


def _key_config(verifying: Any, public_key: Path) -> Any:
    return verifying.Config().use_elliptic_key_verifier(public_key=public_key)


def _certificate_config(verifying: Any, root: Path) -> Any:
    return verifying.Config().use_certificate_verifier(certificate_chain=[root])


def _sigstore_config(verifying: Any, identity: str, oidc_issuer: str, trust_config: Path) -> Any:
    return verifying.Config().use_sigstore_verifier(
        identity=identity, oidc_issuer=oidc_issuer, trust_config=trust_config
    )


def _verifying() -> Any:
    # Imported on first use: model_signing drags in sigstore and its protobuf
    # models (about 0.5 s), which the API and CLI should not pay at start-up.
    from model_signing import verifying

    return verifying


def _run_library(
    make_config: Callable[[], Any],
    folder: Path,
    bundle_copy: Path,
    resources: Mapping[str, str],
    on_disk: list[str],
) -> str | None:
    """Run one library verification; ``None`` on success, else the error text.

    A folder mismatch is raised at once: the library reports it only after
    the signature itself verified, so another trusted signer cannot change it.
    """
    try:
        # A fresh Config per attempt: 1.1.1 leaks ignored paths across reuse.
        make_config().verify(folder, bundle_copy)
    except Exception as exc:  # any library failure means "not verified"
        text = str(exc)
        if isinstance(exc, ValueError) and text.startswith(_MISMATCH_PREFIX):
            raise _library_mismatch(text, resources, on_disk) from exc
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return None


# --- rejections --------------------------------------------------------------------


def _no_signer(method: SignatureMethod) -> SignatureRejected:
    what = {
        SignatureMethod.KEY: "public key",
        SignatureMethod.CERTIFICATE: "certificate root",
        SignatureMethod.SIGSTORE: "Sigstore identity (with a trust config)",
    }[method]
    return SignatureRejected(
        f"signature is {method}-signed but no trusted {what} is configured",
        details={"reason": "no_trusted_signer", "method": str(method)},
    )


def _not_verified(method: SignatureMethod, failures: list[str]) -> SignatureRejected:
    return SignatureRejected(
        f"signature verification failed ({method}): {'; '.join(failures)}",
        details={"reason": "not_verified", "method": str(method), "library_errors": failures},
    )


def _library_mismatch(text: str, resources: Mapping[str, str], on_disk: list[str]) -> SignatureRejected:
    entries = _mismatch_entries(text)
    # Names come from the statement and the walk, never from parsing the
    # library's prose: file names may contain quotes and commas.
    changed = [
        name
        for name in sorted(resources)
        if any(e.startswith(f"Hash mismatch for '{name}': ") for e in entries)
    ]
    extra = sorted(set(on_disk) - set(resources))
    missing = sorted(set(resources) - set(on_disk))
    return _folder_mismatch(changed, extra, missing, library_error=text, entries=entries)


def _mismatch_entries(text: str) -> list[str]:
    try:
        parsed = ast.literal_eval(text[len(_MISMATCH_PREFIX) :])
    except (ValueError, SyntaxError):
        return [text[len(_MISMATCH_PREFIX) :]]
    if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
        return parsed
    return [str(parsed)]


def _folder_mismatch(
    changed: list[str],
    extra: list[str],
    missing: list[str],
    *,
    library_error: str | None,
    entries: list[str] | None = None,
) -> SignatureRejected:
    problems = [f"file {name} has changed" for name in changed]
    problems += [f"file {name} is not covered by the signature" for name in extra]
    problems += [f"file {name} is missing" for name in missing]
    if not problems:
        problems = ["contents differ"]
    message = f"signature does not match the model folder: {'; '.join(problems)}"
    if entries:
        # The library's own words, minus the Digest reprs of raw bytes.
        shown = [
            entry.split("': Expected '", 1)[0] + "'" if "': Expected '" in entry else entry
            for entry in entries
        ]
        message += f" [model-signing: Signature mismatch: {'; '.join(shown)}]"
    return SignatureRejected(
        message,
        details={
            "reason": "folder_mismatch",
            "changed": changed,
            "extra": extra,
            "missing": missing,
            "library_error": library_error,
        },
    )
