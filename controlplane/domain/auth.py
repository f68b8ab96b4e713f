"""API tokens and roles: what each role may do. Pure rules, no I/O.

Roles: viewer reads; publisher reads and pushes versions; deployer reads and
changes what serves (deploys, rollouts, rollbacks); approver reads and
approves or rejects the rollouts of models that require approval; admin does
everything, including managing tokens (no one approves their own request:
see :mod:`controlplane.domain.approvals`). A token is shown once at creation; only its
SHA-256 is stored (tokens are 256 random bits, so a fast hash is enough).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets

TOKEN_PREFIX = "cpt_"


class Role(enum.StrEnum):
    VIEWER = "viewer"
    PUBLISHER = "publisher"
    DEPLOYER = "deployer"
    APPROVER = "approver"
    ADMIN = "admin"


class Permission(enum.StrEnum):
    READ = "read"
    PUSH = "push"
    DEPLOY = "deploy"
    APPROVE = "approve"
    ADMIN = "admin"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.PUBLISHER: frozenset({Permission.READ, Permission.PUSH}),
    Role.DEPLOYER: frozenset({Permission.READ, Permission.DEPLOY}),
    Role.APPROVER: frozenset({Permission.READ, Permission.APPROVE}),
    Role.ADMIN: frozenset(Permission),
}


def allows(role: Role, permission: Permission) -> bool:
    """Whether ``role`` may do what ``permission`` covers."""
    return permission in ROLE_PERMISSIONS[role]


def new_token() -> str:
    """A fresh secret token, shown to its owner once."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What is stored and looked up instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)
