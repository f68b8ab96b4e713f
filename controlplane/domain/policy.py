"""Model policy: which versions may be pushed and deployed. Pure rules.

A model's policy (``require_signature``, ``allowed_signers``,
``allow_code_backends``, ``code_backends_require_signature``) overrides the
global default where it sets something. A version whose config makes Triton
run code that came with the folder (the Python backend, a custom backend,
repository agents, custom operation libraries) is code execution on the
server: it needs ``allow_code_backends`` to be pushed or deployed and, unless
the policy says otherwise, a verified signature to be deployed. Signer names are what an
operator can pin: ``key:<sha256 of the public key DER>``,
``cert:sha256:<leaf fingerprint>``, ``san:<certificate SAN>``,
``oidc:<identity>|<issuer>``.

A model's policy may also require approval of its rollouts
(``require_approval``, within ``approval_timeout_seconds``); see
:mod:`controlplane.domain.approvals`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from controlplane.domain.models import ManifestEntry
from controlplane.errors import InvalidInput


class PolicyViolation(InvalidInput):
    """A version does not meet its model's signature policy; it may not serve."""

    code = "policy_violation"


# Backends a config.pbtxt may name unless the operator configures otherwise.
DEFAULT_ALLOWED_BACKENDS = (
    "onnxruntime",
    "tensorrt",
    "pytorch",
    "tensorflow",
    "openvino",
    "python",
    "ensemble",
)
_T = TypeVar("_T")
_PREFIXES = ("key:", "cert:sha256:", "san:", "oidc:")

DEFAULT_APPROVAL_TIMEOUT_SECONDS = 86_400
MIN_APPROVAL_TIMEOUT_SECONDS = 60
MAX_APPROVAL_TIMEOUT_SECONDS = 30 * 86_400


@dataclass(frozen=True)
class SignaturePolicy:
    require_signature: bool = False
    allowed_signers: tuple[str, ...] = ()
    allow_code_backends: bool = False
    code_backends_require_signature: bool = True

    def validate(self) -> SignaturePolicy:
        for signer in self.allowed_signers:
            if not signer.startswith(_PREFIXES) or len(signer) > 512:
                raise InvalidInput(
                    f"allowed signer {signer!r} must start with one of {', '.join(_PREFIXES)}",
                    code="invalid_policy",
                )
        return self


@dataclass(frozen=True)
class ModelPolicy:
    """What a model sets; None means "as the global policy says".

    Approval has no global setting: a model requires it or not, and a
    request waits for it at most ``approval_timeout_seconds``.
    """

    require_signature: bool | None = None
    allowed_signers: tuple[str, ...] | None = None
    allow_code_backends: bool | None = None
    code_backends_require_signature: bool | None = None
    require_approval: bool = False
    approval_timeout_seconds: int = DEFAULT_APPROVAL_TIMEOUT_SECONDS

    def validate(self) -> ModelPolicy:
        """Return self, or raise InvalidInput naming the setting out of bounds."""
        SignaturePolicy(allowed_signers=self.allowed_signers or ()).validate()
        if not MIN_APPROVAL_TIMEOUT_SECONDS <= self.approval_timeout_seconds <= MAX_APPROVAL_TIMEOUT_SECONDS:
            raise InvalidInput(
                f"approval_timeout_seconds must be within {MIN_APPROVAL_TIMEOUT_SECONDS}.."
                f"{MAX_APPROVAL_TIMEOUT_SECONDS} (30 days), got {self.approval_timeout_seconds}",
                code="invalid_policy",
                details={"field": "approval_timeout_seconds"},
            )
        return self


def _pick(own: _T | None, default: _T) -> _T:
    return default if own is None else own


def effective_policy(global_policy: SignaturePolicy, model: ModelPolicy | None) -> SignaturePolicy:
    """The model's settings where it has them, else the global ones."""
    if model is None:
        return global_policy

    return SignaturePolicy(
        require_signature=_pick(model.require_signature, global_policy.require_signature),
        allowed_signers=_pick(model.allowed_signers, global_policy.allowed_signers),
        allow_code_backends=_pick(model.allow_code_backends, global_policy.allow_code_backends),
        code_backends_require_signature=_pick(
            model.code_backends_require_signature, global_policy.code_backends_require_signature
        ),
    )


def check_pushable(*, model: str, code_runners: Sequence[str], policy: SignaturePolicy) -> None:
    """PolicyViolation if the folder runs its own code in Triton and the model's policy does not allow it."""
    if code_runners and not policy.allow_code_backends:
        raise PolicyViolation(
            f"{', '.join(code_runners)} runs code from the model folder inside Triton, and model "
            f"{model!r} does not allow code backends: an admin sets allow_code_backends with "
            f"PUT /v1/models/{model}/policy",
            details={"rule": "allow_code_backends", "code": list(code_runners)},
        )


def signer_names(identity: Mapping[str, Any]) -> set[str]:
    """Every name under which a verified signer may be allowed."""
    names = set()
    if identity.get("method") == "key" and identity.get("key_id"):
        names.add(f"key:{identity['key_id']}")
    if identity.get("cert_fingerprint"):
        names.add(f"cert:sha256:{identity['cert_fingerprint']}")
    for san in identity.get("cert_san") or ():
        names.add(f"san:{san}")
    if identity.get("oidc_identity"):
        names.add(f"oidc:{identity['oidc_identity']}|{identity.get('oidc_issuer') or ''}")
    return names


@dataclass(frozen=True)
class SignatureRecord:
    """What the registry keeps of a verified signature."""

    method: str
    identity: Mapping[str, Any]
    statement_sha256: str
    files: Mapping[str, str]


def check_deployable(
    *,
    model: str,
    number: int,
    manifest: Iterable[ManifestEntry],
    signature: SignatureRecord | None,
    policy: SignaturePolicy,
    code_runners: Sequence[str] = (),
) -> None:
    """PolicyViolation naming the rule a version breaks, else nothing.

    ``code_runners`` names what in the version's config runs the folder's code (empty: nothing).
    """
    if code_runners:
        check_pushable(model=model, code_runners=code_runners, policy=policy)
        if signature is None and policy.code_backends_require_signature:
            raise PolicyViolation(
                f"{model} version {number} runs code from its folder ({', '.join(code_runners)}) and has "
                f"no verified signature: attach one with PUT /v1/models/{model}/versions/{number}/signature",
                details={"rule": "code_backends_require_signature", "code": list(code_runners)},
            )
    if signature is None:
        if policy.require_signature:
            raise PolicyViolation(
                f"model {model!r} requires a signature and version {number} has none: "
                f"attach one with PUT /v1/models/{model}/versions/{number}/signature",
                details={"rule": "require_signature"},
            )
        return
    expected = {e.path: e.sha256 for e in manifest}
    if dict(signature.files) != expected:
        raise PolicyViolation(
            f"the signature of {model} version {number} does not cover the registered files",
            details={"rule": "signature_covers_manifest"},
        )
    if policy.allowed_signers and not signer_names(signature.identity) & set(policy.allowed_signers):
        raise PolicyViolation(
            f"{model} version {number} is signed by {sorted(signer_names(signature.identity))}, "
            f"not by an allowed signer of this model",
            details={"rule": "allowed_signers", "allowed": list(policy.allowed_signers)},
        )
