"""Deploy endpoint: put one version on a pool, answered when it serves (or why it does not)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from controlplane.api import schemas
from controlplane.api.auth import Authenticator
from controlplane.api.params import ModelParam, VersionParam
from controlplane.domain.auth import Permission
from controlplane.errors import DeployPending
from controlplane.services.deploys import Deployer


def deploys_router(deployer: Deployer, auth: Authenticator) -> APIRouter:
    """POST /v1/models/{model}/versions/{version}/deploy."""
    router = APIRouter(tags=["deploy"])
    DeployerActor = Annotated[str, Depends(auth.require(Permission.DEPLOY))]

    @router.post(
        "/v1/models/{model}/versions/{version}/deploy",
        response_model=schemas.DeploymentOut,
        responses={
            202: {
                "model": schemas.DeployPendingOut,
                "description": "Not done in the time a request waits (an outage is being waited "
                "out), or the model requires approval (state pending_approval, answered at once); "
                "it goes on as the rollout named, which Location points to.",
            },
            409: {
                "description": "Another operation holds the pool (the body names it), or the version "
                "breaks clients of the version serving production (breaking_change: every difference)."
            },
            422: {"description": "Triton refused the version; what served before still serves."},
        },
    )
    def deploy(
        model: ModelParam,
        version: VersionParam,
        actor: DeployerActor,
        pool: Annotated[str | None, Query(max_length=64)] = None,
        allow_breaking: Annotated[
            bool,
            Query(
                description="Deploy an interface that breaks clients of the version serving production "
                "(the version must declare a new major api_version)."
            ),
        ] = False,
    ) -> schemas.DeploymentOut | JSONResponse:
        """Stage, load and smoke-test the version on the pool (an inplace rollout); answer once it serves."""
        try:
            deployment = deployer.deploy(
                model, version, pool=pool, actor=actor, allow_breaking=allow_breaking
            )
            return schemas.deployment_out(deployment)
        except DeployPending as pending:
            rollout = pending.details["rollout"]
            body = schemas.DeployPendingOut(
                status="pending", message=pending.message, rollout=rollout, state=pending.details["state"]
            )
            return JSONResponse(
                body.model_dump(), status_code=202, headers={"Location": f"/v1/rollouts/{rollout}"}
            )

    return router
