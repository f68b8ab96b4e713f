"""Concurrent operations on one pool: the database admits exactly one, on SQLite and on PostgreSQL.

Everything is real: two Triton pools behind HAProxy, started once per
database for the whole module (``local_services``, as ``controlplane up``
wires it), with the registry in a SQLite file or in a PostgreSQL schema of
its own. Each test starts from a known state: one of mlp v1 and v2 serves
on the live pool, the races move to the other one, v3 is pushed, no
rollout is active and no pool is claimed; for the rollback tests the other
one also served before (so a rollback goes back to it). A race that moves
to the other version leaves the stack in that state again; any other end
is reset by deploys before the next test.

The requests of a race start together on a barrier. The first operation
accepted records its rollout and claims its pools in one transaction, then
keeps the claims while Triton loads the new version (about a second); every
other request meets the claim and is refused at once with ``pool_busy``,
naming the rollout that holds the pool. Each test then waits for the
accepted operation to end and checks that no claim is left, no rollout is
active, HAProxy applies the weights the registry records, every pool's
recorded release is READY in its Triton, and the proxy answers with the
version that won.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from rollout_load import FIXED_INPUT
from sqlalchemy import create_engine, text
from triton_helpers import load_examples_module

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.analysis import Gates
from controlplane.domain.claims import Claim, HolderKind
from controlplane.domain.models import VersionMetadata
from controlplane.domain.rollouts import Rollout, RolloutSpec, RolloutState, Strategy
from controlplane.errors import Conflict, DeployFailed
from controlplane.registry import claim_store, rollout_store
from controlplane.registry.db import Database
from controlplane.runtime.local import LocalStack
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import Services, build_services, local_services
from controlplane.settings import Settings

pytestmark = pytest.mark.integration

examples = load_examples_module()

MODEL = "mlp"
# Pushed, and never left serving between tests.
NEWER = 3


@dataclass(frozen=True)
class Known:
    """The version serving on the live pool, and the other one of v1 and v2 (where the races go)."""

    serving: int
    other: int


@dataclass
class Plane:
    """The running stack of one database backend and the control plane wired to it."""

    backend: str
    settings: Settings
    stack: LocalStack
    services: Services
    proxy_url: str
    outputs: dict[int, np.ndarray]


@contextmanager
def _postgres_schema(base_url: str) -> Iterator[str]:
    """A schema of its own on the PostgreSQL server, dropped afterwards; yields a URL that uses it."""
    schema = f"cp_races_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{separator}options=-csearch_path%3D{schema}"
        with admin.connect() as conn:
            tables = conn.execute(
                text("SELECT count(*) FROM information_schema.tables WHERE table_schema = :s"), {"s": schema}
            ).scalar_one()
        assert tables > 0, "the control plane's registry lived in the test's own schema"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def running(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    """One real stack per database backend, shared by this module's tests."""
    root = tmp_path_factory.mktemp(f"claim-races-{request.param}")
    with ExitStack() as cleanup:
        database_url = None
        if request.param == "postgresql":
            database_url = cleanup.enter_context(_postgres_schema(request.getfixturevalue("postgres_url")))
        api_port, grpc_port, http_port = free_ports(3)
        settings = Settings(
            state_dir=root / "state",
            api_port=api_port,
            grpc_port=grpc_port,
            http_port=http_port,
            database_url=database_url,
        )
        stack, services = cleanup.enter_context(local_services(settings, pool_names=("blue", "green")))
        outputs = {}
        for version in (1, 2, 3):
            folder = examples.build_mlp(root / f"v{version}", seed=version)
            outputs[version] = examples.reference_outputs(folder, {"INPUT0": FIXED_INPUT})["OUTPUT0"]
            archive = pack_directory(folder, root / f"v{version}.tar.gz")
            services.registry.push(model=MODEL, archive=archive, metadata=VersionMetadata())
        yield Plane(request.param, settings, stack, services, f"127.0.0.1:{grpc_port}", outputs)


@pytest.fixture
def known(running: Plane) -> Known:
    """The stack in a known state: v1 or v2 serving, nothing active or claimed."""
    return _to_known_state(running)


@pytest.fixture
def known_before(running: Plane) -> Known:
    """The known state, in which the other version served before: a rollback goes back to it."""
    return _to_known_state(running, other_served_before=True)


def _to_known_state(plane: Plane, *, other_served_before: bool = False) -> Known:
    """Deploy v1 or v2 until one serves (and, if asked, the other one served before it)."""
    services = plane.services
    _wait_until(lambda: not services.engine.list(active_only=True), 120, "no rollout active")
    for _attempt in range(3):
        with services.db.transaction() as session:
            serving = rollout_store.pool_release(session, rollout_store.live_pool(session)).get(MODEL)
            previous = rollout_store.previous_production_version(session, MODEL)
        if serving in (1, 2) and (previous == 3 - serving or not other_served_before):
            break
        services.deployer.deploy(MODEL, 2 if serving == 1 else 1, actor="test-setup")
    else:
        raise AssertionError(f"no known state after two deploys: v{serving} serves, v{previous} before")
    _assert_settled(plane, serving=serving)
    return Known(serving=serving, other=3 - serving)


# -- requests and races --------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What one request answered."""

    request: str
    outcome: str
    """accepted, refused (a Conflict: nothing started) or failed (a deploy that started and did not serve)."""
    code: str = ""
    holder: str = ""
    """The holder a pool_busy refusal names, as "rollout 7"."""
    rollout: int | None = None
    """The rollout a start or rollback answered with, or the one a failed deploy ran as."""


def _spec(strategy: Strategy, version: int) -> RolloutSpec:
    steps = (100,) if strategy is Strategy.INPLACE else (50, 100)
    return RolloutSpec(MODEL, version, strategy, steps, 0.0, 0.0, Gates()).validate()


def _request(services: Services, kind: str, version: int | None = None) -> Callable[[], Answer]:
    """A request: a rollback of mlp, or a deploy or a rollout of that strategy to ``version``."""

    def run() -> Answer:
        try:
            if kind == "rollback":
                return Answer(
                    kind, "accepted", rollout=services.engine.rollback_model(MODEL, actor="race").id
                )
            assert version is not None
            if kind == "deploy":
                services.deployer.deploy(MODEL, version, actor="race")
                return Answer(kind, "accepted")
            started = services.engine.start(_spec(Strategy(kind), version), actor="race")
            return Answer(kind, "accepted", rollout=started.id)
        except Conflict as exc:
            holder = (exc.details or {}).get("holder")
            named = f"{holder['kind']} {holder['id']}" if holder else ""
            return Answer(kind, "refused", code=exc.code, holder=named)
        except DeployFailed as exc:
            return Answer(kind, "failed", code=exc.code, rollout=exc.details["rollout"])

    return run


def _race(
    requests: Sequence[Callable[[], Answer]], meanwhile: Callable[[], None] | None = None
) -> list[Answer]:
    """Start every request at the same instant; return their answers in order.

    ``meanwhile`` runs in the calling thread as the requests start.
    """
    barrier = threading.Barrier(len(requests) + 1)

    def go(request: Callable[[], Answer]) -> Answer:
        barrier.wait(timeout=30)
        return request()

    with ThreadPoolExecutor(max_workers=len(requests)) as executor:
        futures = [executor.submit(go, request) for request in requests]
        barrier.wait(timeout=30)
        if meanwhile is not None:
            meanwhile()
        return [future.result(timeout=300) for future in futures]


def _last_rollout_id(services: Services) -> int:
    with services.db.transaction() as session:
        newest = rollout_store.list_rollouts(session, limit=1)
    return newest[0].id if newest else 0


def _rollouts_since(services: Services, rollout_id: int) -> list[Rollout]:
    """Rollouts recorded after ``rollout_id``, each once it has ended."""
    with services.db.transaction() as session:
        recent = rollout_store.list_rollouts(session, limit=20)
    return [_ended(services, r.id) for r in reversed(recent) if r.id > rollout_id]


def _ended(services: Services, rollout_id: int, timeout: float = 120) -> Rollout:
    _wait_until(lambda: not services.engine.get(rollout_id).active, timeout, f"rollout {rollout_id} to end")
    return services.engine.get(rollout_id)


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def _only_one_accepted(answers: list[Answer], recorded: list[Rollout]) -> Answer:
    """The accepted answer; every other one was refused pool_busy by the one rollout the race recorded."""
    accepted = [a for a in answers if a.outcome == "accepted"]
    assert len(accepted) == 1, answers
    assert len(recorded) == 1, f"one operation recorded: {recorded}"
    winner = recorded[0]
    for answer in answers:
        if answer is not accepted[0]:
            assert (answer.outcome, answer.code, answer.holder) == (
                "refused",
                "pool_busy",
                f"rollout {winner.id}",
            ), answers
    if accepted[0].rollout is not None:
        assert accepted[0].rollout == winner.id
    assert winner.state is RolloutState.SUCCEEDED, winner.reason
    return accepted[0]


# -- what the stack serves -----------------------------------------------------------------------


def _answered_by_proxy(plane: Plane) -> int:
    """The version whose output a request through HAProxy gets."""
    client = grpcclient.InferenceServerClient(plane.proxy_url)
    try:
        tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(FIXED_INPUT)
        output = client.infer(MODEL, [tensor]).as_numpy("OUTPUT0")
    finally:
        client.close()
    matches = [v for v, expected in plane.outputs.items() if np.allclose(output, expected, rtol=1e-5)]
    assert len(matches) == 1, f"the proxy's answer is the output of exactly one version: {matches}"
    return matches[0]


def _assert_settled(plane: Plane, *, serving: int) -> None:
    """No claim, no active rollout; registry, HAProxy and both Tritons agree that ``serving`` serves."""
    services = plane.services
    with services.db.transaction() as session:
        claims = claim_store.list_claims(session)
        active = rollout_store.list_rollouts(session, active_only=True)
        weights = rollout_store.pool_weights(session)
        releases = {pool: rollout_store.pool_release(session, pool) for pool in weights}
    assert claims == [], "every claim ended with its operation"
    assert active == []
    assert services.router.weights() == weights, "HAProxy applies the recorded weights"
    assert releases[rollout_store.live_pool_of(weights)] == {MODEL: serving}
    for pool, release in releases.items():
        for model, version in release.items():
            assert services.pools[pool].triton.is_model_ready(model, version), f"{pool} serves {release}"
    assert _answered_by_proxy(plane) == serving


# -- one pool, one operation ---------------------------------------------------------------------


def test_an_inplace_and_a_bluegreen_rollout_on_the_live_pool_are_not_both_accepted(
    running: Plane, known: Known
) -> None:
    services = running.services
    before = _last_rollout_id(services)

    answers = _race([_request(services, kind, known.other) for kind in ("inplace", "bluegreen")])

    _only_one_accepted(answers, _rollouts_since(services, before))
    _assert_settled(running, serving=known.other)


def test_a_deploy_and_a_canary_rollout_at_once_accept_exactly_one(running: Plane, known: Known) -> None:
    services = running.services
    before = _last_rollout_id(services)

    answers = _race([_request(services, kind, known.other) for kind in ("deploy", "canary")])

    _only_one_accepted(answers, _rollouts_since(services, before))
    _assert_settled(running, serving=known.other)


def test_four_requests_of_mixed_kinds_on_one_pool_accept_exactly_one_and_refuse_three_pool_busy(
    running: Plane, known: Known
) -> None:
    services = running.services
    before = _last_rollout_id(services)
    kinds = ("deploy", "inplace", "bluegreen", "canary")

    answers = _race([_request(services, kind, known.other) for kind in kinds])

    _only_one_accepted(answers, _rollouts_since(services, before))
    assert [a.code for a in answers].count("pool_busy") == 3, answers
    _assert_settled(running, serving=known.other)


def test_a_refusal_names_the_operation_that_holds_the_pool(running: Plane, known: Known) -> None:
    services = running.services
    holding = services.engine.start(_spec(Strategy.INPLACE, known.other), actor="first")

    with pytest.raises(Conflict) as busy:
        services.deployer.deploy(MODEL, known.other, actor="second")

    assert busy.value.code == "pool_busy"
    assert busy.value.details["pool"] == holding.source_pool
    assert busy.value.details["holder"]["kind"] == HolderKind.ROLLOUT.value
    assert busy.value.details["holder"]["id"] == str(holding.id)
    assert f"rollout {holding.id}" in busy.value.message
    assert _ended(services, holding.id).state is RolloutState.SUCCEEDED
    _assert_settled(running, serving=known.other)


# -- rollbacks -----------------------------------------------------------------------------------


def test_a_rollback_during_a_deploy_aborts_it_and_what_served_before_still_serves(
    running: Plane, known_before: Known
) -> None:
    services = running.services
    before = _last_rollout_id(services)
    with ThreadPoolExecutor(max_workers=1) as executor:
        deploying = executor.submit(_request(services, "deploy", NEWER))
        _wait_until(lambda: _last_rollout_id(services) > before, 30, "the deploy's rollout", poll=0.005)
        deploy_rollout = _last_rollout_id(services)
        assert services.engine.get(deploy_rollout).active, "the deploy still runs"

        rollback = _request(services, "rollback")()
        deploy = deploying.result(timeout=120)

    assert rollback == Answer("rollback", "accepted", rollout=deploy_rollout), (
        "the rollback aborts the deploy"
    )
    assert (deploy.outcome, deploy.code, deploy.rollout) == ("failed", "deploy_failed", deploy_rollout)
    [aborted] = _rollouts_since(services, before)
    assert aborted.state is RolloutState.ROLLED_BACK
    assert "aborted" in aborted.reason
    _assert_settled(running, serving=known_before.serving)


def test_a_rollback_and_a_deploy_at_once_change_what_serves_at_most_once(
    running: Plane, known_before: Known
) -> None:
    """Whichever comes first decides, and the end state says which one it was.

    The deploy first: the rollback either aborts it (what served goes on
    serving and the deploy answers deploy_failed) or, had it looked before
    the deploy was recorded, is refused pool_busy (v3 serves). The rollback
    first: its blue-green rollout to the previous version holds both pools
    and the deploy is refused pool_busy.
    """
    services = running.services
    before = _last_rollout_id(services)

    deploy, rollback = _race([_request(services, "deploy", NEWER), _request(services, "rollback")])

    [recorded] = _rollouts_since(services, before)
    refused_by_recorded = ("refused", "pool_busy", f"rollout {recorded.id}")
    if deploy.outcome == "failed":
        assert rollback == Answer("rollback", "accepted", rollout=recorded.id)
        assert deploy.rollout == recorded.id
        assert (recorded.spec.version, recorded.state) == (NEWER, RolloutState.ROLLED_BACK)
        serving = known_before.serving
    elif deploy.outcome == "accepted":
        assert (rollback.outcome, rollback.code, rollback.holder) == refused_by_recorded, rollback
        assert (recorded.spec.version, recorded.state) == (NEWER, RolloutState.SUCCEEDED), recorded.reason
        serving = NEWER
    else:
        assert (deploy.outcome, deploy.code, deploy.holder) == refused_by_recorded, deploy
        assert rollback == Answer("rollback", "accepted", rollout=recorded.id)
        assert (recorded.spec.strategy, recorded.spec.version) == (Strategy.BLUEGREEN, known_before.other)
        assert recorded.state is RolloutState.SUCCEEDED, recorded.reason
        serving = known_before.other
    print(f"{running.backend}: deploy {deploy.outcome}, rollback {rollback.outcome}: v{serving} serves")
    _assert_settled(running, serving=serving)


# -- two control-plane processes -----------------------------------------------------------------


@contextmanager
def _second_process(plane: Plane) -> Iterator[Services]:
    """What another ``controlplane up`` on the same registry holds: its own connections, claims and engine."""
    db = Database(plane.settings.effective_database_url)
    services = build_services(plane.settings, db, plane.stack)
    try:
        yield services
    finally:
        services.stop()
        for pool in services.pools.values():
            pool.triton.close()
        db.dispose()


def _rollout_claims(services: Services) -> list[Claim]:
    with services.db.transaction() as session:
        return [c for c in claim_store.list_claims(session) if c.holder.kind is HolderKind.ROLLOUT]


def test_two_control_plane_processes_on_one_postgresql_accept_exactly_one_and_never_take_over_its_rollout(
    running: Plane,
) -> None:
    if running.backend != "postgresql":
        pytest.skip("two control-plane processes share a registry only on PostgreSQL")
    known = _to_known_state(running)
    first = running.services
    with _second_process(running) as second:
        assert first.claims.owner != second.claims.owner
        before = _last_rollout_id(first)
        drivers: list[Services] = []

        def neither_takes_over() -> None:
            _wait_until(lambda: bool(_rollout_claims(first)), 30, "the accepted rollout's claims", poll=0.005)
            owner = _rollout_claims(first)[0].owner
            driver, other = {first.claims.owner: (first, second), second.claims.owner: (second, first)}[owner]

            assert other.engine.resume() == [], "a rollout the other process drives is left to it"
            assert not other.engine.busy()
            assert {c.owner for c in _rollout_claims(first)} <= {owner}
            drivers.append(driver)

        requests = [
            _request(first, "bluegreen", known.other),
            _request(second, "inplace", known.other),
            _request(first, "deploy", known.other),
            _request(second, "deploy", known.other),
        ]
        answers = _race(requests, meanwhile=neither_takes_over)

        _only_one_accepted(answers, _rollouts_since(first, before))
        assert [a.code for a in answers].count("pool_busy") == 3, answers
        assert len(drivers) == 1
        print(f"{'first' if drivers[0] is first else 'second'} process won: {answers}")
    _assert_settled(running, serving=known.other)
