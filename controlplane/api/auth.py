"""Bearer-token authentication and role checks for the REST API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from controlplane.domain.auth import Permission, allows
from controlplane.errors import Forbidden, Unauthorized
from controlplane.registry import token_store
from controlplane.registry.db import Database

_bearer = HTTPBearer(auto_error=False, description="An API token: `controlplane token create`")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]

ANONYMOUS = "anonymous"


class Authenticator:
    """Turns the request's bearer token into an actor name, or refuses the request."""

    def __init__(self, db: Database, *, required: bool = True, open_reads: bool = False) -> None:
        self.db = db
        self.required = required
        self.open_reads = open_reads

    def require(self, permission: Permission) -> Callable[[HTTPAuthorizationCredentials | None], str]:
        """A FastAPI dependency: the actor's name if its token's role allows ``permission``."""

        def dependency(credentials: Credentials) -> str:
            if not self.required or (
                permission is Permission.READ and self.open_reads and credentials is None
            ):
                return ANONYMOUS
            if credentials is None or credentials.scheme.lower() != "bearer":
                raise Unauthorized("this endpoint needs an API token: send 'Authorization: Bearer <token>'")
            with self.db.transaction() as session:
                token = token_store.authenticate(session, credentials.credentials)
            if token is None:
                raise Unauthorized("the API token is unknown or revoked")
            if not allows(token.role, permission):
                raise Forbidden(
                    f"token {token.name!r} has role {token.role}, which may not {permission}",
                    details={"role": token.role.value, "needs": permission.value},
                )
            return token.name

        return dependency
