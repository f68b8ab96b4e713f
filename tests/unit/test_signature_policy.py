"""Signature policy rules: which versions may serve."""

from __future__ import annotations

import pytest

from controlplane.domain.models import ManifestEntry
from controlplane.domain.policy import (
    ModelPolicy,
    PolicyViolation,
    SignaturePolicy,
    SignatureRecord,
    check_deployable,
    check_pushable,
    effective_policy,
    signer_names,
)
from controlplane.errors import InvalidInput

MANIFEST = (ManifestEntry("config.pbtxt", 10, "a" * 64), ManifestEntry("1/model.onnx", 20, "b" * 64))
KEY_SIGNED = SignatureRecord(
    method="key",
    identity={"method": "key", "key_id": "k" * 64},
    statement_sha256="s" * 64,
    files={"config.pbtxt": "a" * 64, "1/model.onnx": "b" * 64},
)


def check(signature: SignatureRecord | None, policy: SignaturePolicy) -> None:
    check_deployable(model="mlp", number=3, manifest=MANIFEST, signature=signature, policy=policy)


def test_unsigned_versions_serve_unless_a_signature_is_required() -> None:
    check(None, SignaturePolicy())
    with pytest.raises(PolicyViolation, match="requires a signature and version 3 has none") as refused:
        check(None, SignaturePolicy(require_signature=True))
    assert refused.value.details == {"rule": "require_signature"}


def test_a_signature_must_cover_exactly_the_registered_files() -> None:
    partial = SignatureRecord("key", KEY_SIGNED.identity, "s" * 64, {"config.pbtxt": "a" * 64})
    with pytest.raises(PolicyViolation, match="does not cover the registered files"):
        check(partial, SignaturePolicy())


def test_allowed_signers_pin_who_may_sign() -> None:
    check(KEY_SIGNED, SignaturePolicy(allowed_signers=(f"key:{'k' * 64}",)))
    with pytest.raises(PolicyViolation, match="not by an allowed signer") as refused:
        check(KEY_SIGNED, SignaturePolicy(allowed_signers=(f"key:{'z' * 64}",)))
    assert refused.value.details["rule"] == "allowed_signers"


def test_signer_names_cover_keys_certificates_and_oidc_identities() -> None:
    cert = {"method": "certificate", "cert_fingerprint": "f" * 64, "cert_san": ["https://ci.example/build"]}
    oidc = {"method": "sigstore", "oidc_identity": "me@example.com", "oidc_issuer": "https://issuer"}
    assert signer_names(cert) == {f"cert:sha256:{'f' * 64}", "san:https://ci.example/build"}
    assert signer_names(oidc) == {"oidc:me@example.com|https://issuer"}


def test_a_model_policy_overrides_only_what_it_sets() -> None:
    base = SignaturePolicy(require_signature=True, allowed_signers=("key:x",))
    assert effective_policy(base, None) == base
    assert effective_policy(base, ModelPolicy(require_signature=False)) == SignaturePolicy(False, ("key:x",))
    assert effective_policy(base, ModelPolicy(allowed_signers=())).allowed_signers == ()


def test_signer_names_in_a_policy_must_have_a_known_prefix() -> None:
    with pytest.raises(InvalidInput, match="must start with one of"):
        SignaturePolicy(allowed_signers=("alice",)).validate()


# -- backends that run the folder's code ------------------------------------------------------------

PYTHON = ("backend 'python'",)


def check_code(signature: SignatureRecord | None, policy: SignaturePolicy) -> None:
    check_deployable(
        model="mlp", number=3, manifest=MANIFEST, signature=signature, policy=policy, code_runners=PYTHON
    )


def test_a_version_that_runs_folder_code_is_refused_unless_the_model_allows_it() -> None:
    with pytest.raises(PolicyViolation, match="backend 'python' runs code from the model folder") as refused:
        check_code(KEY_SIGNED, SignaturePolicy())
    assert refused.value.details == {"rule": "allow_code_backends", "code": ["backend 'python'"]}
    with pytest.raises(PolicyViolation):
        check_pushable(model="mlp", code_runners=PYTHON, policy=SignaturePolicy(require_signature=True))
    check_pushable(model="mlp", code_runners=PYTHON, policy=SignaturePolicy(allow_code_backends=True))
    check_pushable(model="mlp", code_runners=(), policy=SignaturePolicy())


def test_an_allowed_code_backend_still_needs_a_verified_signature_by_default() -> None:
    allowed = SignaturePolicy(allow_code_backends=True)
    with pytest.raises(PolicyViolation, match="has no verified signature") as refused:
        check_code(None, allowed)
    assert refused.value.details["rule"] == "code_backends_require_signature"
    check_code(KEY_SIGNED, allowed)
    check_code(None, SignaturePolicy(allow_code_backends=True, code_backends_require_signature=False))


def test_signer_pins_apply_to_code_backends_too() -> None:
    pinned = SignaturePolicy(allow_code_backends=True, allowed_signers=(f"key:{'z' * 64}",))
    with pytest.raises(PolicyViolation, match="not by an allowed signer"):
        check_code(KEY_SIGNED, pinned)


def test_a_model_policy_sets_the_code_backend_rules_and_leaves_the_rest_global() -> None:
    base = SignaturePolicy(require_signature=True)
    own = ModelPolicy(allow_code_backends=True, code_backends_require_signature=False)
    assert effective_policy(base, own) == SignaturePolicy(
        require_signature=True, allow_code_backends=True, code_backends_require_signature=False
    )
    assert effective_policy(base, ModelPolicy()).allow_code_backends is False
    assert effective_policy(base, ModelPolicy()).code_backends_require_signature is True
