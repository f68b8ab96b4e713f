"""The token cache: requests need no database to know their caller, and a revoke still stops a token.

A revoke in this process is refused at once; one by another process (here:
the row changed through a connection of its own, as the CLI does) at the
next request on SQLite, where an entry holds only until the next commit, and
within ``TOKEN_CACHE_SECONDS`` of the last read where there are no commit
marks (PostgreSQL; here the marks are switched off). A fake clock moves time.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator, Caller
from controlplane.artifacts.archive import ArchiveLimits
from controlplane.artifacts.blobs import BlobStore
from controlplane.domain.auth import Role
from controlplane.registry import store, token_store
from controlplane.registry.db import Database
from controlplane.registry.store import CommitWatch
from controlplane.registry.token_store import TOKEN_CACHE_SECONDS, TokenCache, TokenInfo
from controlplane.services.health import Health
from controlplane.services.registry import Registry
from controlplane.services.signing import Signing


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A fake clock behind a fresh process-wide token cache."""
    fake = Clock()
    monkeypatch.setattr(token_store, "TOKEN_CACHE", TokenCache(clock=fake))
    return fake


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    database.upgrade()
    yield database
    database.dispose()


def _token(db: Database, name: str = "ci", role: Role = Role.VIEWER) -> str:
    with db.transaction() as session:
        secret, _info = token_store.create_token(session, name=name, role=role, created_by="tests")
    return secret


def _statements(db: Database) -> list[str]:
    executed: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: executed.append(a[2]))
    return executed


def _info(name: str, *, revoked: bool = False) -> TokenInfo:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return TokenInfo(
        name=name, role=Role.VIEWER, created_by="tests", created_at=at, revoked_at=at if revoked else None
    )


def _revoke_elsewhere(db: Database, name: str) -> None:
    """Revoke ``name`` as another process would: through its own connection, without this process's code."""
    other = Database(db.url)
    try:
        with other.engine.begin() as conn:
            conn.execute(
                text("UPDATE api_tokens SET revoked_at = CURRENT_TIMESTAMP WHERE name = :n"), {"n": name}
            )
    finally:
        other.dispose()


# -- the cache itself ------------------------------------------------------------------------


def test_an_active_token_is_kept_for_the_ttl_after_it_was_read_then_dropped(clock: Clock) -> None:
    cache = TokenCache(ttl=2.0, clock=clock)
    cache.put("db", "h", _info("ci"), generation=cache.generation(), read_at=clock())

    clock.now += 1.9
    kept = cache.get("db", "h")
    clock.now += 0.1
    dropped = cache.get("db", "h")

    assert kept is not None and kept.name == "ci"
    assert dropped is None


def test_a_revoked_token_is_never_kept(clock: Clock) -> None:
    cache = TokenCache(clock=clock)

    cache.put("db", "h", _info("ci", revoked=True), generation=cache.generation(), read_at=clock())

    assert cache.get("db", "h") is None


def test_tokens_of_one_database_are_not_answers_for_another(clock: Clock) -> None:
    cache = TokenCache(clock=clock)

    cache.put("sqlite:///a.db", "h", _info("ci"), generation=cache.generation(), read_at=clock())

    assert cache.get("sqlite:///b.db", "h") is None
    assert cache.get("sqlite:///a.db", "h") is not None


def test_forget_drops_the_named_token_in_every_database_and_keeps_the_others(clock: Clock) -> None:
    cache = TokenCache(clock=clock)
    for scope, digest, name in (("a", "h1", "ci"), ("b", "h1", "ci"), ("a", "h2", "other")):
        cache.put(scope, digest, _info(name), generation=cache.generation(), read_at=clock())

    cache.forget("ci")

    assert cache.get("a", "h1") is None and cache.get("b", "h1") is None
    assert cache.get("a", "h2") is not None


def test_a_lookup_begun_before_a_revoke_puts_nothing_back(clock: Clock) -> None:
    cache = TokenCache(clock=clock)
    generation = cache.generation()  # the lookup starts, then reads the row while it is still active

    cache.forget("ci")
    cache.put("db", "h", _info("ci"), generation=generation, read_at=clock())

    assert cache.get("db", "h") is None


def test_the_least_recently_used_token_goes_first_beyond_the_limit(clock: Clock) -> None:
    cache = TokenCache(max_entries=2, clock=clock)
    cache.put("db", "h1", _info("one"), generation=0, read_at=clock())
    cache.put("db", "h2", _info("two"), generation=0, read_at=clock())
    cache.get("db", "h1")

    cache.put("db", "h3", _info("three"), generation=0, read_at=clock())

    assert [cache.get("db", h) is not None for h in ("h1", "h2", "h3")] == [True, False, True]


# -- the authenticator over a real registry --------------------------------------------------


def test_a_token_looked_up_again_within_the_ttl_is_known_without_the_database(
    db: Database, clock: Clock
) -> None:
    secret = _token(db)
    auth = Authenticator(db)
    first = auth.lookup(f"Bearer {secret}")
    executed = _statements(db)

    again = auth.lookup(f"Bearer {secret}")
    known = auth.cached(f"Bearer {secret}")

    assert first == again == known == Caller("ci", Role.VIEWER)
    assert executed == []


def test_cached_answers_nothing_for_a_token_not_read_yet_and_refuses_a_malformed_header(
    db: Database, clock: Clock
) -> None:
    secret = _token(db)
    auth = Authenticator(db)

    assert auth.cached(f"Bearer {secret}") is None
    assert auth.cached(None) == "missing_token"
    assert auth.cached(f"Basic {secret}") == "bad_scheme"


def test_a_token_revoked_in_this_process_is_refused_at_once(db: Database, clock: Clock) -> None:
    secret = _token(db)
    auth = Authenticator(db)
    before = auth.lookup(f"Bearer {secret}")

    with db.transaction() as session:
        token_store.revoke_token(session, name="ci", revoked_by="tests")

    assert before == Caller("ci", Role.VIEWER)
    assert auth.cached(f"Bearer {secret}") is None
    assert auth.lookup(f"Bearer {secret}") == "unknown_token"


def test_a_token_revoked_by_another_process_is_refused_at_its_next_request_on_sqlite(
    db: Database, clock: Clock
) -> None:
    secret = _token(db)
    auth = Authenticator(db)
    before = auth.lookup(f"Bearer {secret}")

    _revoke_elsewhere(db, "ci")

    assert before == Caller("ci", Role.VIEWER)
    assert auth.cached(f"Bearer {secret}") is None
    assert auth.lookup(f"Bearer {secret}") == "unknown_token"


def test_any_commit_ends_the_cached_answer_on_sqlite(db: Database, clock: Clock) -> None:
    secret = _token(db)
    auth = Authenticator(db)
    auth.lookup(f"Bearer {secret}")
    cached = auth.cached(f"Bearer {secret}")

    with db.transaction() as session:
        store.append_event(session, actor="tests", action="note", target="elsewhere", outcome="ok")

    assert cached == Caller("ci", Role.VIEWER)
    assert auth.cached(f"Bearer {secret}") is None
    assert auth.lookup(f"Bearer {secret}") == Caller("ci", Role.VIEWER)


def test_without_commit_marks_a_token_revoked_elsewhere_is_refused_once_the_ttl_has_passed(
    db: Database, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CommitWatch, "mark", lambda _self: None)  # as on PostgreSQL
    secret = _token(db)
    auth = Authenticator(db)
    auth.lookup(f"Bearer {secret}")

    _revoke_elsewhere(db, "ci")
    clock.now += TOKEN_CACHE_SECONDS - 0.01
    within = auth.lookup(f"Bearer {secret}")
    clock.now += 0.01
    after = auth.lookup(f"Bearer {secret}")

    assert within == Caller("ci", Role.VIEWER)
    assert after == "unknown_token"


def test_a_lookup_during_the_revoke_transaction_is_forgotten_when_it_commits(
    db: Database, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CommitWatch, "mark", lambda _self: None)  # only the revoke's own forgetting is left
    secret = _token(db)
    auth = Authenticator(db)
    with db.transaction() as session:
        token_store.revoke_token(session, name="ci", revoked_by="tests")
        # Another request reads the row now: the revoke is not committed, so the token is still active.
        during = auth.lookup(f"Bearer {secret}")
        cached_meanwhile = auth.cached(f"Bearer {secret}")

    assert during == cached_meanwhile == Caller("ci", Role.VIEWER)
    assert auth.cached(f"Bearer {secret}") is None
    assert auth.lookup(f"Bearer {secret}") == "unknown_token"


def test_an_entry_answers_only_a_caller_at_the_same_commit_mark(clock: Clock) -> None:
    cache = TokenCache(clock=clock)

    cache.put("db", "h", _info("ci"), generation=cache.generation(), read_at=clock(), mark=7)

    assert cache.get("db", "h", mark=8) is None
    cache.put("db", "h", _info("ci"), generation=cache.generation(), read_at=clock(), mark=7)
    assert cache.get("db", "h", mark=None) is None
    cache.put("db", "h", _info("ci"), generation=cache.generation(), read_at=clock(), mark=7)
    assert cache.get("db", "h", mark=7) is not None


def test_a_revoke_that_rolls_back_leaves_the_token_working(db: Database, clock: Clock) -> None:
    secret = _token(db)
    auth = Authenticator(db)
    auth.lookup(f"Bearer {secret}")

    with pytest.raises(RuntimeError), db.transaction() as session:
        token_store.revoke_token(session, name="ci", revoked_by="tests")
        raise RuntimeError("the revoke is abandoned")

    assert auth.lookup(f"Bearer {secret}") == Caller("ci", Role.VIEWER)


# -- the request guard -----------------------------------------------------------------------


def test_the_guard_reads_a_token_once_and_then_answers_from_the_cache(
    db: Database, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = _token(db)
    blobs = BlobStore(tmp_path / "artifacts")
    signing = Signing(db=db, blobs=blobs, uploads_dir=tmp_path / "uploads")
    registry = Registry(
        db=db, blobs=blobs, uploads_dir=tmp_path / "uploads", signing=signing, limits=ArchiveLimits()
    )
    services = ApiServices(db=db, registry=registry, signing=signing, health=Health(db=db, pools={}))
    auth = Authenticator(db)
    lookups: list[str | None] = []
    real_lookup = auth.lookup
    monkeypatch.setattr(auth, "lookup", lambda header: lookups.append(header) or real_lookup(header))
    headers = {"Authorization": f"Bearer {secret}"}

    with TestClient(create_app(services, max_upload_bytes=1024, auth=auth)) as client:
        answers = [client.get("/v1/whoami", headers=headers) for _ in range(3)]
        clock.now += TOKEN_CACHE_SECONDS
        later = client.get("/v1/whoami", headers=headers)

    assert [a.json()["name"] for a in [*answers, later]] == ["ci"] * 4
    assert len(lookups) == 2  # the first request, and the first after the cache's time ran out
