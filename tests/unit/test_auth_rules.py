"""Roles and tokens: who may do what."""

from __future__ import annotations

import pytest

from controlplane.domain.auth import TOKEN_PREFIX, Permission, Role, allows, new_token, token_hash


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.VIEWER, {Permission.READ}),
        (Role.PUBLISHER, {Permission.READ, Permission.PUSH}),
        (Role.DEPLOYER, {Permission.READ, Permission.DEPLOY}),
        (Role.ADMIN, set(Permission)),
    ],
)
def test_each_role_may_do_exactly_its_permissions(role: Role, allowed: set[Permission]) -> None:
    assert {p for p in Permission if allows(role, p)} == allowed


def test_tokens_are_random_and_only_their_hash_identifies_them() -> None:
    a, b = new_token(), new_token()
    assert a != b and a.startswith(TOKEN_PREFIX) and len(a) > 40
    assert token_hash(a) == token_hash(a) != token_hash(b)
    assert a not in token_hash(a)
