"""Protected promotions on a real stack: two tritonservers behind HAProxy, SQLite, the REST API with tokens.

``mlp`` version 1 serves on blue; version 2 is pushed; an admin makes the
model require approval. ``lead`` (an admin) requests a canary; ``reviewer``
(an approver) is the second principal. Clients send requests through the
proxy the whole time. The schema's approval columns are checked on SQLite
and PostgreSQL, up and down.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from rollout_load import FIXED_INPUT, Load
from triton_helpers import load_examples_module

from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.artifacts.archive import pack_directory
from controlplane.domain.analysis import Gates
from controlplane.domain.auth import Role
from controlplane.domain.models import (
    ManifestEntry,
    ModelName,
    ModelSignature,
    TensorSpec,
    VersionMetadata,
    manifest_digest,
)
from controlplane.domain.policy import ModelPolicy
from controlplane.domain.rollouts import RolloutState, Strategy, one_step_spec
from controlplane.registry import claim_store, rollout_store, signature_store, store, token_store
from controlplane.registry.db import Database
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import Services, local_services
from controlplane.settings import Settings

pytestmark = pytest.mark.integration

examples = load_examples_module()


@dataclass
class Env:
    services: Services
    client: TestClient
    tokens: dict[str, str]
    grpc_url: str
    outputs: dict[str, np.ndarray]

    def as_(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def claims(self) -> list[str]:
        with self.services.db.transaction() as session:
            return [f"{c.pool}: {c.holder}" for c in claim_store.list_claims(session)]

    def audit(self, action: str) -> list[dict[str, object]]:
        with self.services.db.transaction() as session:
            return [
                {"actor": e.actor, "outcome": e.outcome, **e.details}
                for e in store.list_events(session, limit=10_000)
                if e.action == action
            ]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("approvals")
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(state_dir=root / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port)
    with local_services(settings, pool_names=("blue", "green")) as (_stack, services):
        folders = {f"v{seed}": examples.build_mlp(root / f"v{seed}", seed=seed) for seed in (1, 2)}
        for name in ("v1", "v2"):
            archive = pack_directory(folders[name], root / f"{name}.tar.gz")
            services.registry.push(model="mlp", archive=archive, metadata=VersionMetadata())
        services.deployer.deploy("mlp", 1)
        tokens: dict[str, str] = {}
        with services.db.transaction() as session:
            for name, role in (("admin", Role.ADMIN), ("lead", Role.ADMIN), ("reviewer", Role.APPROVER)):
                tokens[name], _info = token_store.create_token(
                    session, name=name, role=role, created_by="tests"
                )
        api = ApiServices(
            db=services.db,
            registry=services.registry,
            signing=services.signing,
            health=services.health,
            engine=services.engine,
            deployer=services.deployer,
        )
        app = create_app(api, max_upload_bytes=1 << 20, auth=Authenticator(services.db, required=True))
        outputs = {
            name: examples.reference_outputs(folders[name], {"INPUT0": FIXED_INPUT})["OUTPUT0"]
            for name in folders
        }
        with TestClient(app) as client:
            yield Env(services, client, tokens, f"127.0.0.1:{grpc_port}", outputs)


def test_a_protected_canary_waits_untouched_until_a_second_principal_approves_it(env: Env) -> None:
    protect = env.client.put(
        "/v1/models/mlp/policy", json={"require_approval": True}, headers=env.as_("admin")
    )
    assert protect.status_code == 200, protect.text
    engine, router = env.services.engine, env.services.router
    weights_before = router.weights()
    assert weights_before == {"blue": 100, "green": 0}
    request = {
        "model": "mlp",
        "version": 2,
        "strategy": "canary",
        "steps": [50, 100],
        "step_seconds": 1.0,
        "bake_seconds": 0.5,
        "gates": {"max_error_rate": 0.01, "min_requests": 10},
    }

    with Load(env.grpc_url, env.outputs) as load:
        asked = env.client.post("/v1/rollouts", json=request, headers=env.as_("lead"))
        assert asked.status_code == 202, asked.text
        rollout_id = asked.json()["id"]
        # What a day of waiting must not do, checked over a few seconds and a reconciler pass.
        time.sleep(2.0)
        env.services.reconciler.run_once()
        waiting = env.client.get(f"/v1/rollouts/{rollout_id}", headers=env.as_("admin")).json()
        claims_while_waiting = env.claims()
        weights_while_waiting = router.weights()
        green_has_v2 = env.services.pools["green"].triton.is_model_ready("mlp", 2)
        answered_while_waiting = {kind for _at, kind in load.answers}

        own = env.client.post(f"/v1/rollouts/{rollout_id}/approve", headers=env.as_("lead"))
        approved = env.client.post(f"/v1/rollouts/{rollout_id}/approve", headers=env.as_("reviewer"))
        done = engine.wait(rollout_id, 120)
        time.sleep(0.5)

    assert asked.json()["state"] == "pending_approval"
    assert waiting["state"] == "pending_approval" and waiting["approval_expires_at"] is not None
    assert claims_while_waiting == [], "a request waiting for approval holds no pool"
    assert weights_while_waiting == weights_before
    assert not green_has_v2, "nothing was staged before the approval"
    assert answered_while_waiting == {"v1"}
    assert own.status_code == 403 and own.json()["error"]["code"] == "self_approval"
    assert approved.status_code == 202, approved.text
    assert approved.json()["approved_by"] == "reviewer"
    assert done.state.value == "succeeded", done.reason
    assert [e.to_state for e in done.events][:3] == ["pending_approval", "pending", "staging"]
    assert router.weights() == {"blue": 0, "green": 100}
    assert env.claims() == []
    assert load.failures == []
    assert {kind for _at, kind in load.answers} == {"v1", "v2"}
    (requested,) = env.audit("rollout.requested")
    (approval,) = env.audit("rollout.approved")
    assert (requested["actor"], requested["rollout"]) == ("lead", rollout_id)
    assert (approval["actor"], approval["requested_by"], approval["rollout"]) == (
        "reviewer",
        "lead",
        rollout_id,
    )
    print(
        f"approved canary: {len(load.answers)} requests, 0 failed; "
        f"waited {(done.events[1].at - done.events[0].at).total_seconds():.1f} s for approval"
    )


def _pending_request(db: Database, *, expires: datetime) -> int:
    """Version 1 of ``m``, pools blue and green, a rollout of it waiting for approval until ``expires``."""
    manifest = (ManifestEntry("1/model.onnx", 100, "a" * 64), ManifestEntry("config.pbtxt", 10, "c" * 64))
    signature = ModelSignature(
        backend="onnxruntime",
        max_batch_size=8,
        inputs=(TensorSpec("INPUT0", "FP32", (16,)),),
        outputs=(TensorSpec("OUTPUT0", "FP32", (4,)),),
    )
    with db.transaction() as session:
        store.register_version(
            session,
            model=ModelName("m"),
            digest=manifest_digest(manifest),
            manifest=manifest,
            source_version_dir="1",
            signature=signature,
            metadata=VersionMetadata(),
        )
        rollout_store.ensure_pools(session, ("blue", "green"))
        signature_store.set_policy(session, "m", ModelPolicy(require_approval=True), actor="tests")
        rollout = rollout_store.create_rollout(
            session,
            spec=one_step_spec("m", 1, Strategy.BLUEGREEN),
            source_pool="blue",
            target_pool="green",
            from_version=None,
            actor="lead",
            approval_expires_at=expires,
        )
    return rollout.id


def test_the_approval_columns_hold_a_request_expire_it_and_migrate_down_and_up(
    empty_database: Database,
) -> None:
    db = empty_database
    db.upgrade()
    now = datetime.now(UTC)
    rollout_id = _pending_request(db, expires=now + timedelta(hours=1))

    with db.transaction() as session:
        stored = rollout_store.get_rollout(session, rollout_id)
        policy = signature_store.get_policy(session, "m")
        due_now = rollout_store.overdue_approvals(session, now=now)
        due_later = rollout_store.overdue_approvals(session, now=now + timedelta(hours=1, seconds=1))
    assert stored.state is RolloutState.PENDING_APPROVAL and stored.spec.gates == Gates(golden=False)
    assert stored.approval_expires_at is not None
    assert abs(stored.approval_expires_at - (now + timedelta(hours=1))) < timedelta(milliseconds=1)
    assert policy is not None and (policy.require_approval, policy.approval_timeout_seconds) == (True, 86_400)
    assert (due_now, due_later) == ([], [rollout_id])

    db.downgrade("0008")
    with db.engine.connect() as conn:
        state, active = conn.exec_driver_sql("SELECT state, active FROM rollouts").one()
    assert (state, bool(active)) == ("failed", False), "code before approvals could not read the state"
    db.upgrade()
    with db.transaction() as session:
        policy = signature_store.get_policy(session, "m")
        assert rollout_store.get_rollout(session, rollout_id).approval_expires_at is None
    assert policy is not None and (policy.require_approval, policy.approval_timeout_seconds) == (
        False,
        86_400,
    )
