"""Signature and policy endpoints: attach and read a version's signature, read and set a model's policy."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from controlplane.api import schemas
from controlplane.api.auth import Authenticator
from controlplane.api.params import ModelParam, VersionParam, receive_upload
from controlplane.artifacts.signatures import MAX_SIGNATURE_BYTES
from controlplane.domain.auth import Permission
from controlplane.domain.policy import ModelPolicy
from controlplane.errors import NotFound
from controlplane.services.signing import Signing


def signatures_router(signing: Signing, auth: Authenticator) -> APIRouter:
    """Routes under /v1/models/{model}: .../versions/{version}/signature and .../policy."""
    router = APIRouter(tags=["signatures"])
    Reader = Annotated[str, Depends(auth.require(Permission.READ))]
    Publisher = Annotated[str, Depends(auth.require(Permission.PUSH))]
    Admin = Annotated[str, Depends(auth.require(Permission.ADMIN))]

    @router.put(
        "/v1/models/{model}/versions/{version}/signature",
        response_model=schemas.SigningOut,
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "An OpenSSF model-signing bundle (Sigstore JSON) over the pushed folder.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
    async def attach_signature(
        model: ModelParam, version: VersionParam, request: Request, actor: Publisher
    ) -> JSONResponse:
        """Verify a signature of the version's files and record it (with the signer's identity)."""
        sink = await receive_upload(
            request, signing.uploads_dir, max_bytes=MAX_SIGNATURE_BYTES, what="the signature bundle"
        )
        try:
            record = await run_in_threadpool(
                signing.attach_signature, model, version, bundle=sink.path, actor=actor
            )
        finally:
            sink.discard()
        return JSONResponse(schemas.signing_out(record).model_dump(mode="json"))

    @router.get("/v1/models/{model}/versions/{version}/signature", response_model=schemas.SigningOut)
    def get_signature(model: ModelParam, version: VersionParam, _actor: Reader) -> schemas.SigningOut:
        record = signing.signature_of(model, version)
        if record is None:
            raise NotFound(f"{model} version {version} has no signature", code="signature_not_found")
        return schemas.signing_out(record)

    @router.get("/v1/models/{model}/policy", response_model=schemas.PolicyOut)
    def get_policy(model: ModelParam, _actor: Reader) -> schemas.PolicyOut:
        own, effective = signing.policy_of(model)
        return schemas.policy_out(own, effective)

    @router.put("/v1/models/{model}/policy", response_model=schemas.PolicyOut)
    def set_policy(model: ModelParam, body: schemas.PolicyIn, actor: Admin) -> schemas.PolicyOut:
        """Set the model's policy (signatures, code backends, approval); null fields follow the global one."""
        signing.set_policy(
            model,
            ModelPolicy(
                require_signature=body.require_signature,
                allowed_signers=tuple(body.allowed_signers) if body.allowed_signers is not None else None,
                allow_code_backends=body.allow_code_backends,
                code_backends_require_signature=body.code_backends_require_signature,
                require_approval=body.require_approval,
                approval_timeout_seconds=body.approval_timeout_seconds,
            ),
            actor=actor,
        )
        own, effective = signing.policy_of(model)
        return schemas.policy_out(own, effective)

    return router
