"""API tokens on real databases: stored hashed, revocable, names unique."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from controlplane.domain.auth import Role
from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.registry import store, token_store
from controlplane.registry.db import Database

pytestmark = pytest.mark.integration


def test_a_token_authenticates_until_revoked_and_its_secret_is_not_stored(database: Database) -> None:
    with database.transaction() as session:
        secret, info = token_store.create_token(session, name="ci", role=Role.PUBLISHER, created_by="alice")
    assert info.role is Role.PUBLISHER and info.active
    with database.transaction() as session:
        assert token_store.authenticate(session, secret).name == "ci"  # type: ignore[union-attr]
        assert token_store.authenticate(session, secret + "x") is None
        stored = session.execute(text("SELECT token_sha256 FROM api_tokens")).scalars().all()
    assert secret not in stored[0] and len(stored[0]) == 64
    with database.transaction() as session:
        token_store.revoke_token(session, name="ci", revoked_by="alice")
    with database.transaction() as session:
        assert token_store.authenticate(session, secret) is None
        events = [(e.actor, e.action, e.target) for e in store.list_events(session)]
    assert events == [("alice", "token.create", "ci"), ("alice", "token.revoke", "ci")]


def test_token_names_are_unique_and_checked(database: Database) -> None:
    with database.transaction() as session:
        token_store.create_token(session, name="ci", role=Role.VIEWER, created_by="a")
    with database.transaction() as session, pytest.raises(Conflict):
        token_store.create_token(session, name="ci", role=Role.ADMIN, created_by="a")
    with database.transaction() as session, pytest.raises(InvalidInput):
        token_store.create_token(session, name="../x", role=Role.ADMIN, created_by="a")
    with database.transaction() as session, pytest.raises(NotFound):
        token_store.revoke_token(session, name="nobody", revoked_by="a")
