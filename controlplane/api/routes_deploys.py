"""Deploy endpoint: put one version on a pool, answered when it serves (or why it does not)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from controlplane.api import schemas
from controlplane.api.auth import Authenticator
from controlplane.api.params import ModelParam, VersionParam
from controlplane.domain.auth import Permission
from controlplane.service import ControlPlane


def deploys_router(cp: ControlPlane, auth: Authenticator) -> APIRouter:
    """POST /v1/models/{model}/versions/{version}/deploy."""
    router = APIRouter(tags=["deploy"])
    Deployer = Annotated[str, Depends(auth.require(Permission.DEPLOY))]

    @router.post("/v1/models/{model}/versions/{version}/deploy", response_model=schemas.DeploymentOut)
    def deploy(
        model: ModelParam,
        version: VersionParam,
        actor: Deployer,
        pool: Annotated[str | None, Query(max_length=64)] = None,
    ) -> schemas.DeploymentOut:
        return schemas.deployment_out(cp.deploy(model, version, pool=pool, actor=actor))

    return router
