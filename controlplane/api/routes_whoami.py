"""Who the caller is: the token's name, role and what that role may do."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from controlplane.api.auth import ANONYMOUS, Authenticator, Caller, caller_of
from controlplane.domain.auth import ROLE_PERMISSIONS, Permission, Role


class WhoAmIOut(BaseModel):
    name: str
    role: Role | None
    permissions: list[Permission]


def whoami_router(auth: Authenticator) -> APIRouter:
    """GET /v1/whoami: the caller's token name, role and permissions."""
    router = APIRouter(tags=["auth"])
    Reader = Annotated[str, Depends(auth.require(Permission.READ))]

    @router.get("/v1/whoami", response_model=WhoAmIOut)
    async def whoami(request: Request, _actor: Reader) -> WhoAmIOut:
        """The token's name and role, and the permissions of that role (sorted)."""
        if not auth.required:
            # Authentication is off: every caller may do everything.
            return WhoAmIOut(name=ANONYMOUS, role=None, permissions=sorted(Permission))
        caller = caller_of(request.scope)
        if caller is None:
            # No guard in front of this app (the dependency above resolved the token the same way).
            found = await run_in_threadpool(auth.lookup, request.headers.get("authorization"))
            caller = found if isinstance(found, Caller) else None
        if caller is None or caller.role is None:
            # Only reached with open reads: an anonymous caller may read, nothing more.
            return WhoAmIOut(name=ANONYMOUS, role=None, permissions=[Permission.READ])
        return WhoAmIOut(
            name=caller.name, role=caller.role, permissions=sorted(ROLE_PERMISSIONS[caller.role])
        )

    return router
