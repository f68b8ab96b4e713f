"""The claim store on real SQLite and PostgreSQL: one holder per pool, leases, take-over and adoption."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import text

from controlplane.claims import PoolClaims, process_identity
from controlplane.domain.claims import Holder, HolderKind, Lease
from controlplane.errors import PoolBusy
from controlplane.registry import claim_store, rollout_store, store
from controlplane.registry.db import Database
from controlplane.registry.tables import utcnow

pytestmark = pytest.mark.integration

DEPLOY = Holder(HolderKind.DEPLOY, "d1")
REPAIR = Holder(HolderKind.REPAIR, "r1")
ROLLOUT = Holder(HolderKind.ROLLOUT, "7")
ALICE = Lease(owner="alice-host:1:1:a", seconds=30)
BOB = Lease(owner="bob-host:2:2:b", seconds=30)


@pytest.fixture
def db(database: Database) -> Database:
    with database.transaction() as session:
        rollout_store.ensure_pools(session, ("blue", "green"))
    return database


def _take(db: Database, pools: tuple[str, ...], holder: Holder, lease: Lease, **kw: object) -> list[str]:
    with db.transaction() as session:
        return [c.pool for c in claim_store.take(session, pools, holder=holder, lease=lease, **kw)]  # type: ignore[arg-type]


def _claims(db: Database) -> dict[str, str]:
    with db.transaction() as session:
        return {c.pool: f"{c.holder} by {c.owner}" for c in claim_store.list_claims(session)}


def test_a_claimed_pool_refuses_a_second_holder_and_names_the_first(db: Database) -> None:
    _take(db, ("blue",), DEPLOY, ALICE)

    with pytest.raises(PoolBusy) as refused:
        _take(db, ("blue", "green"), REPAIR, BOB)

    assert refused.value.code == "pool_busy"
    assert refused.value.details["pool"] == "blue"
    assert refused.value.details["holder"]["kind"] == "deploy"
    assert refused.value.details["holder"]["id"] == "d1"
    assert refused.value.details["holder"]["owner"] == ALICE.owner
    assert "deploy d1" in refused.value.message
    assert _claims(db) == {"blue": f"deploy d1 by {ALICE.owner}"}, "green was not taken either"


def test_releasing_frees_the_pools_and_says_which_were_held(db: Database) -> None:
    _take(db, ("green", "blue"), ROLLOUT, ALICE)

    with db.transaction() as session:
        assert claim_store.release(session, ROLLOUT) == ["blue", "green"]
        assert claim_store.release(session, ROLLOUT) == []
    assert _take(db, ("blue",), DEPLOY, BOB) == ["blue"]


def test_a_deploy_whose_lease_ran_out_is_taken_over_and_audited(db: Database) -> None:
    _take(db, ("blue",), DEPLOY, ALICE, now=utcnow() - timedelta(seconds=31))

    assert _take(db, ("blue",), REPAIR, BOB) == ["blue"]

    assert _claims(db) == {"blue": f"repair r1 by {BOB.owner}"}
    with db.transaction() as session:
        events = [e for e in store.list_events(session) if e.action == "claim.take_over"]
    assert len(events) == 1 and events[0].details["abandoned"]["id"] == "d1"


def test_a_deploy_of_a_process_of_this_host_that_died_is_taken_over_at_once(db: Database) -> None:
    host, _pid, _started, _instance = process_identity().split(":")
    dead = Lease(owner=f"{host}:999999999:1:dead", seconds=30)
    _take(db, ("blue",), DEPLOY, dead)
    live = PoolClaims(db, lease_seconds=30)

    with db.transaction() as session:
        live.take(session, ["blue"], REPAIR)
    live.close()

    assert _claims(db) == {"blue": f"repair r1 by {live.owner}"}


def test_a_live_deploy_of_another_process_is_not_taken_over(db: Database) -> None:
    _take(db, ("blue",), DEPLOY, ALICE)
    claims = PoolClaims(db)

    with db.transaction() as session, pytest.raises(PoolBusy):
        claims.take(session, ["blue"], REPAIR)
    claims.close()


def test_a_rollout_is_never_taken_over_but_its_abandoned_claims_are_adopted(db: Database) -> None:
    _take(db, ("blue", "green"), ROLLOUT, ALICE, now=utcnow() - timedelta(seconds=60))

    with pytest.raises(PoolBusy):
        _take(db, ("blue",), DEPLOY, BOB)
    with db.transaction() as session:
        assert claim_store.adopt(session, ROLLOUT, lease=BOB)

    assert _claims(db) == {"blue": f"rollout 7 by {BOB.owner}", "green": f"rollout 7 by {BOB.owner}"}
    with db.transaction() as session:
        assert not claim_store.adopt(session, ROLLOUT, lease=ALICE), "BOB's lease is fresh"
        assert not claim_store.adopt(session, Holder(HolderKind.ROLLOUT, "8"), lease=ALICE), "no claim"
        assert [e.action for e in store.list_events(session)][-1] == "claim.adopt"


def test_renewing_extends_only_the_owners_leases_and_letting_go_ends_them_now(db: Database) -> None:
    past = utcnow() - timedelta(seconds=10)
    _take(db, ("blue",), DEPLOY, ALICE, now=past)
    _take(db, ("green",), REPAIR, BOB, now=past)

    with db.transaction() as session:
        assert claim_store.renew(session, [DEPLOY, REPAIR], lease=ALICE) == 1
        leases = {c.pool: c.lease_until for c in claim_store.list_claims(session)}
    assert leases["blue"] > utcnow() + timedelta(seconds=25)
    assert leases["green"] < utcnow() + timedelta(seconds=25)

    with db.transaction() as session:
        claim_store.let_go(session, DEPLOY, lease=ALICE)
    with db.transaction() as session:
        assert claim_store.adopt(session, DEPLOY, lease=BOB)


def test_a_process_renews_the_leases_of_what_it_drives_until_it_is_done(db: Database) -> None:
    claims = PoolClaims(db, lease_seconds=0.6)
    with db.transaction() as session:
        claims.take(session, ["blue"], DEPLOY)
    threading.Event().wait(1.0)
    assert claims.renew_now() == 1

    with pytest.raises(PoolBusy):
        _take(db, ("blue",), REPAIR, BOB)
    claims.done(DEPLOY)
    threading.Event().wait(0.7)
    assert _take(db, ("blue",), REPAIR, BOB) == ["blue"], "the lease ran out once nobody renewed it"
    claims.close()


def test_concurrent_takes_of_one_pool_admit_exactly_one(db: Database) -> None:
    barrier = threading.Barrier(6)

    def attempt(i: int) -> str:
        barrier.wait()
        try:
            _take(db, ("blue", "green") if i % 2 else ("blue",), Holder(HolderKind.DEPLOY, f"d{i}"), ALICE)
        except PoolBusy as exc:
            return exc.code
        return "taken"

    with ThreadPoolExecutor(max_workers=6) as executor:
        results = list(executor.map(attempt, range(6)))

    assert results.count("taken") == 1, results
    assert results.count("pool_busy") == 5, results


def test_the_migration_gives_rollouts_active_at_upgrade_claims_the_next_control_plane_adopts(
    empty_database: Database,
) -> None:
    db = empty_database
    db.upgrade("0005")
    with db.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO pools (name, weight, updated_at) VALUES ('blue', 100, :t), ('green', 0, :t)"),
            {"t": utcnow()},
        )
        conn.execute(
            text("INSERT INTO models (id, name, latest_version, created_at) VALUES (1, 'mlp', 1, :t)"),
            {"t": utcnow()},
        )
        conn.execute(
            text(
                "INSERT INTO model_versions (id, model_id, number, digest, state, source_version_dir,"
                " signature, metadata, size_bytes, created_at, updated_at)"
                " VALUES (1, 1, 1, :d, 'serving', '1', '{}', '{}', 1, :t, :t)"
            ),
            {"d": "a" * 64, "t": utcnow()},
        )
        for rollout_id, active in ((1, False), (2, True)):
            conn.execute(
                text(
                    "INSERT INTO rollouts (id, model_id, version_id, strategy, state, active, pool_pair,"
                    " source_pool, target_pool, steps, step_seconds, bake_seconds, gates, reason, actor,"
                    " created_at, updated_at)"
                    " VALUES (:id, 1, 1, 'canary', :state, :active, 'blue+green', 'blue', 'green', '[100]',"
                    " 1.0, 1.0, '{}', '', 't', :t, :t)"
                ),
                {
                    "id": rollout_id,
                    "state": "shifting" if active else "succeeded",
                    "active": active,
                    "t": utcnow(),
                },
            )

    db.upgrade()
    with db.transaction() as session:
        claims = claim_store.list_claims(session)
        assert {(c.pool, str(c.holder)) for c in claims} == {("blue", "rollout 2"), ("green", "rollout 2")}
        assert claim_store.adopt(session, Holder(HolderKind.ROLLOUT, "2"), lease=BOB)
    db.downgrade("0005")
    db.upgrade()
    assert db.current_revision() == "0010"
