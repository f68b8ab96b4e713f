"""Pool endpoints: what each pool serves and holds, and recycling an idle one."""

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool

from controlplane.api import schemas
from controlplane.api.auth import Authenticator
from controlplane.domain.auth import Permission
from controlplane.services.recycle import PoolRecycler

PoolParam = Annotated[str, PathParam(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


def pools_router(recycler: PoolRecycler, auth: Authenticator) -> APIRouter:
    """GET /v1/pools and POST /v1/pools/{pool}/recycle."""
    router = APIRouter(tags=["pools"])
    Reader = Annotated[str, Depends(auth.require(Permission.READ))]
    Deployer = Annotated[str, Depends(auth.require(Permission.DEPLOY))]

    @router.get("/v1/pools", response_model=list[schemas.PoolOut])
    def list_pools(_actor: Reader) -> list[schemas.PoolOut]:
        """Each pool: recorded weight and release, readiness, loads since its Tritons started, memory."""
        return [schemas.pool_out(p) for p in recycler.status()]

    @router.post(
        "/v1/pools/{pool}/recycle",
        response_model=schemas.RecycleOut,
        responses={409: {"description": "The pool has traffic (`pool_serving`) or is held (`pool_busy`)."}},
    )
    async def recycle(pool: PoolParam, actor: Deployer) -> schemas.RecycleOut:
        """Restart an idle pool's Tritons; answered once its release is loaded again and smoke-tested."""
        outcome = await run_in_threadpool(recycler.recycle, pool, actor=actor)
        return schemas.recycle_out(outcome)

    return router
