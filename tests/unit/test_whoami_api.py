"""GET /v1/whoami: the caller's token name, role and permissions, on a real SQLite registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.artifacts.archive import ArchiveLimits
from controlplane.artifacts.blobs import BlobStore
from controlplane.domain.auth import Role
from controlplane.registry import token_store
from controlplane.registry.db import Database
from controlplane.services.health import Health
from controlplane.services.registry import Registry
from controlplane.services.signing import Signing

WHOAMI = "/v1/whoami"

AppFor = Callable[[Authenticator], FastAPI]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def app_for(db: Database, tmp_path: Path) -> AppFor:
    blobs = BlobStore(tmp_path / "artifacts")
    signing = Signing(db=db, blobs=blobs, uploads_dir=tmp_path / "uploads")
    registry = Registry(
        db=db, blobs=blobs, uploads_dir=tmp_path / "uploads", signing=signing, limits=ArchiveLimits()
    )
    services = ApiServices(db=db, registry=registry, signing=signing, health=Health(db=db, pools={}))

    def build(auth: Authenticator) -> FastAPI:
        return create_app(services, max_upload_bytes=1 << 20, auth=auth)

    return build


def _token(db: Database, name: str, role: Role) -> str:
    with db.transaction() as session:
        secret, _info = token_store.create_token(session, name=name, role=role, created_by="tests")
    return secret


@pytest.mark.parametrize(
    ("role", "permissions"),
    [
        (Role.VIEWER, ["read"]),
        (Role.PUBLISHER, ["push", "read"]),
        (Role.DEPLOYER, ["deploy", "read"]),
        (Role.APPROVER, ["approve", "read"]),
        (Role.ADMIN, ["admin", "approve", "deploy", "push", "read"]),
    ],
)
def test_a_token_learns_its_name_its_role_and_the_sorted_permissions_of_that_role(
    db: Database, app_for: AppFor, role: Role, permissions: list[str]
) -> None:
    secret = _token(db, f"ci-{role.value}", role)

    with TestClient(app_for(Authenticator(db))) as client:
        answer = client.get(WHOAMI, headers={"Authorization": f"Bearer {secret}"})

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"name": f"ci-{role.value}", "role": role.value, "permissions": permissions}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer cpt_not-a-token"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["no token", "unknown token", "not bearer"],
)
def test_without_a_valid_token_whoami_answers_401_json_like_every_route(
    db: Database, app_for: AppFor, headers: dict[str, str]
) -> None:
    with TestClient(app_for(Authenticator(db))) as client:
        answer = client.get(WHOAMI, headers=headers)

    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["error"]["code"] == "unauthorized"


def test_a_revoked_token_is_no_longer_anyone(db: Database, app_for: AppFor) -> None:
    secret = _token(db, "leaver", Role.ADMIN)
    with TestClient(app_for(Authenticator(db))) as client:
        before = client.get(WHOAMI, headers={"Authorization": f"Bearer {secret}"})
        with db.transaction() as session:
            token_store.revoke_token(session, name="leaver", revoked_by="tests")
        after = client.get(WHOAMI, headers={"Authorization": f"Bearer {secret}"})

    assert before.json()["name"] == "leaver"
    assert after.status_code == 401


def test_with_authentication_off_the_caller_is_anonymous_without_a_role_and_may_do_everything(
    db: Database, app_for: AppFor
) -> None:
    with TestClient(app_for(Authenticator(db, required=False))) as client:
        answer = client.get(WHOAMI)

    assert answer.status_code == 200
    assert answer.json() == {
        "name": "anonymous",
        "role": None,
        "permissions": ["admin", "approve", "deploy", "push", "read"],
    }


def test_with_open_reads_a_caller_without_a_token_is_anonymous_and_may_only_read(
    db: Database, app_for: AppFor
) -> None:
    secret = _token(db, "ops", Role.DEPLOYER)
    with TestClient(app_for(Authenticator(db, open_reads=True))) as client:
        anonymous = client.get(WHOAMI)
        with_token = client.get(WHOAMI, headers={"Authorization": f"Bearer {secret}"})

    assert anonymous.json() == {"name": "anonymous", "role": None, "permissions": ["read"]}
    assert with_token.json() == {"name": "ops", "role": "deployer", "permissions": ["deploy", "read"]}
