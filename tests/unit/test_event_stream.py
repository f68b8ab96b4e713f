"""The live audit log (GET /v1/events/stream) served by real uvicorn with the product's server config.

Short poll, heartbeat and recheck intervals keep the tests quick; events are
written into the SQLite registry the API reads, as any service writes them.
The last test drives the polling loop alone, with reads as PostgreSQL can
answer them (an id committed after a higher one).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from controlplane import cli
from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.api.event_stream import StreamSettings, event_messages
from controlplane.api.server import server_config
from controlplane.artifacts.archive import ArchiveLimits
from controlplane.artifacts.blobs import BlobStore
from controlplane.domain.auth import Role
from controlplane.domain.event_cursor import EventCursor
from controlplane.domain.models import AuditEvent
from controlplane.registry import event_feed, token_store
from controlplane.registry.db import Database
from controlplane.runtime.ports import free_ports
from controlplane.services import audit
from controlplane.services.health import Health
from controlplane.services.registry import Registry
from controlplane.services.signing import Signing
from controlplane.settings import Settings

STREAM = "/v1/events/stream"
QUICK = StreamSettings(
    poll_seconds=0.05, heartbeat_seconds=0.3, recheck_seconds=0.2, max_streams=2, gap_grace_seconds=0.2
)


@dataclass
class Served:
    url: str
    db: Database
    server: uvicorn.Server
    thread: threading.Thread
    tokens: dict[Role, str]

    def headers(self, role: Role | None, **extra: str) -> dict[str, str]:
        auth = {"Authorization": f"Bearer {self.tokens[role]}"} if role is not None else {}
        return {**auth, **extra}

    def record(self, *actions: str) -> None:
        for action in actions:
            audit.record(
                self.db, actor="tests", action=action, target="mlp/1", outcome="ok", details={"n": 1}
            )

    def latest(self) -> int:
        """The id of the newest event (token creation writes some before any test does)."""
        with self.db.transaction() as session:
            return event_feed.latest_event_id(session)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    (port,) = free_ports(1)
    settings = Settings(state_dir=tmp_path / "state", api_port=port)
    settings.state_dir.mkdir(parents=True)
    db = Database(settings.effective_database_url)
    db.upgrade()
    blobs = BlobStore(settings.artifacts_dir)
    signing = Signing(db=db, blobs=blobs, uploads_dir=settings.uploads_dir)
    registry = Registry(
        db=db, blobs=blobs, uploads_dir=settings.uploads_dir, signing=signing, limits=ArchiveLimits()
    )
    services = ApiServices(db=db, registry=registry, signing=signing, health=Health(db=db, pools={}))
    app = create_app(services, max_upload_bytes=1 << 20, auth=Authenticator(db))
    app.state.event_stream = QUICK
    tokens: dict[Role, str] = {}
    with db.transaction() as session:
        for role in (Role.VIEWER, Role.ADMIN):
            tokens[role], _info = token_store.create_token(
                session, name=role.value, role=role, created_by="t"
            )
    server = uvicorn.Server(server_config(app, settings))
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.02)
    yield Served(f"http://127.0.0.1:{port}", db, server, thread, tokens)
    server.should_exit = True
    thread.join(10)
    db.dispose()


class Messages:
    """The messages of one open stream, read as they come: field dicts for events, strings for comments."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()

    def read(self, *, events: int = 0, comments: int = 0, within: float = 5.0) -> list[Any]:
        """Messages until ``events`` events and ``comments`` comments came (or AssertionError)."""
        got: list[Any] = []
        fields: dict[str, str] = {}
        deadline = time.monotonic() + within
        for line in self.lines:
            if line.startswith(":"):
                got.append(line[1:].strip())
            elif line:
                name, _sep, value = line.partition(": ")
                fields[name] = value
            elif "data" in fields:
                got.append(fields)
                fields = {}
            else:
                fields = {}
            n_events = sum(isinstance(m, dict) for m in got)
            if n_events >= events and len(got) - n_events >= comments:
                return got
            assert time.monotonic() < deadline, f"only {got} within {within} s"
        raise AssertionError(f"the stream ended after {got}")

    def rest(self) -> list[str]:
        """Every line until the stream ends."""
        return list(self.lines)


def _events(messages: list[Any]) -> list[dict[str, str]]:
    return [m for m in messages if isinstance(m, dict)]


def test_a_viewer_sees_each_new_event_with_its_id_action_and_the_json_of_the_events_list(
    served: Served,
) -> None:
    served.record("push")
    base = served.latest()
    with (
        httpx.Client(base_url=served.url, timeout=10) as client,
        client.stream("GET", STREAM, headers=served.headers(Role.VIEWER)) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = Messages(response)
        opened = messages.read(comments=1)
        served.record("alias.set", "rollout.create")
        received = _events(messages.read(events=2))
        listed = client.get("/v1/events", params={"after": base}, headers=served.headers(Role.VIEWER)).json()

    assert opened[0] == f"stream open after event {base}"
    assert [(int(m["id"]), m["event"]) for m in received] == [
        (base + 1, "alias.set"),
        (base + 2, "rollout.create"),
    ]
    assert [json.loads(m["data"]) for m in received] == listed


def test_a_client_resumes_after_the_last_event_id_it_saw_or_after_an_id_it_names(served: Served) -> None:
    base = served.latest()
    served.record("a", "b", "c", "d", "e")
    viewer = served.headers(Role.VIEWER)
    with httpx.Client(base_url=served.url, timeout=10) as client:
        with client.stream("GET", STREAM, headers={**viewer, "Last-Event-ID": str(base + 2)}) as r:
            resumed = _events(Messages(r).read(events=3))
        with client.stream("GET", STREAM, params={"after": base + 4}, headers=viewer) as r:
            after = _events(Messages(r).read(events=1))
        with client.stream(
            "GET", STREAM, params={"after": 0}, headers={**viewer, "Last-Event-ID": str(base + 3)}
        ) as r:
            header_wins = _events(Messages(r).read(events=2))

    assert [(int(m["id"]) - base, m["event"]) for m in resumed] == [(3, "c"), (4, "d"), (5, "e")]
    assert [int(m["id"]) - base for m in after] == [5]
    assert [int(m["id"]) - base for m in header_wins] == [4, 5]


def test_an_idle_stream_sends_heartbeat_comments(served: Served) -> None:
    with (
        httpx.Client(base_url=served.url, timeout=10) as client,
        client.stream("GET", STREAM, headers=served.headers(Role.VIEWER)) as response,
    ):
        messages = Messages(response).read(comments=3, within=3.0)
    assert messages[1:3] == ["heartbeat", "heartbeat"]


def test_without_a_valid_token_the_stream_is_refused(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        anonymous = client.get(STREAM)
        unknown = client.get(STREAM, headers={"Authorization": "Bearer cpt_not-a-token"})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    assert unknown.status_code == 401


def test_a_last_event_id_that_is_not_an_event_id_is_refused(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        answer = client.get(STREAM, headers=served.headers(Role.VIEWER, **{"Last-Event-ID": "abc"}))
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_last_event_id"


def test_streams_beyond_the_limit_get_503_and_a_closed_stream_frees_its_place(served: Served) -> None:
    # Kept while the two streams are open: a line iterator that is dropped closes its response.
    reading: list[Messages] = []
    with ExitStack() as open_streams:
        for role in (Role.VIEWER, Role.ADMIN):
            client = open_streams.enter_context(httpx.Client(base_url=served.url, timeout=10))
            stream = open_streams.enter_context(client.stream("GET", STREAM, headers=served.headers(role)))
            reading.append(Messages(stream))
            reading[-1].read(comments=1)
        with httpx.Client(base_url=served.url, timeout=10) as third:
            refused = third.get(STREAM, headers=served.headers(Role.VIEWER))
    deadline = time.monotonic() + 5
    with httpx.Client(base_url=served.url, timeout=10) as client:
        while True:
            with client.stream("GET", STREAM, headers=served.headers(Role.VIEWER)) as again:
                if again.status_code == 200 or time.monotonic() > deadline:
                    break
            time.sleep(0.05)

    assert refused.status_code == 503 and refused.json()["error"]["code"] == "too_many_streams"
    assert refused.headers["retry-after"] == "5"
    assert again.status_code == 200


def test_a_stream_ends_soon_after_its_token_is_revoked(served: Served) -> None:
    with (
        httpx.Client(base_url=served.url, timeout=10) as client,
        client.stream("GET", STREAM, headers=served.headers(Role.VIEWER)) as response,
    ):
        messages = Messages(response)
        messages.read(comments=1)
        with served.db.transaction() as session:
            token_store.revoke_token(session, name="viewer", revoked_by="tests")
        started = time.monotonic()
        rest = messages.rest()
    assert time.monotonic() - started < 3
    assert ": the token no longer allows reading events" in rest


def test_the_server_shuts_down_promptly_while_streams_are_open(served: Served) -> None:
    with (
        httpx.Client(base_url=served.url, timeout=10) as client,
        client.stream("GET", STREAM, headers=served.headers(Role.VIEWER)) as response,
    ):
        messages = Messages(response)
        messages.read(comments=1)
        started = time.monotonic()
        served.server.should_exit = True
        served.thread.join(5)
        # Checked while the stream is still open on this side: a server that waits for it has not stopped.
        assert not served.thread.is_alive(), "the server still waits for the open stream"
        assert time.monotonic() - started < 3
        with pytest.raises(httpx.HTTPError):
            messages.rest()


def test_the_cli_lists_events_and_follows_new_ones(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLPLANE_TOKEN", served.tokens[Role.VIEWER])
    base = served.latest()
    served.record("push", "deploy")

    listed = CliRunner().invoke(cli.app, ["events", "--after", str(base), "--api", served.url])
    # Recorded while the follow below waits (only after the listing, however long a busy machine takes).
    later = threading.Timer(0.3, served.record, args=("alias.set", "rollout.create", "ignored"))
    later.start()
    followed = CliRunner().invoke(
        cli.app,
        ["events", "--follow", "--after", str(base + 1), "--count", "3", "--json", "--api", served.url],
    )
    later.join()

    assert listed.exit_code == 0, listed.output
    assert [line.split()[4] for line in listed.output.splitlines()] == ["push", "deploy"]
    assert followed.exit_code == 0, followed.output
    assert [json.loads(line)["action"] for line in followed.output.splitlines()] == [
        "deploy",
        "alias.set",
        "rollout.create",
    ]


def _audit_event(event_id: int) -> AuditEvent:
    return AuditEvent(
        id=event_id,
        at=datetime.now(UTC),
        actor="t",
        action=f"a{event_id}",
        target="m",
        outcome="ok",
        details={},
    )


def test_an_event_committed_after_a_later_one_is_still_sent_and_in_id_order() -> None:
    # What PostgreSQL readers can see: 13 committed while 12's transaction was still open.
    visible = [[11, 13], [13], [12, 13], []]
    asked: list[int] = []

    def fetch(after: int, limit: int) -> list[AuditEvent]:
        asked.append(after)
        ids = visible.pop(0) if visible else []
        return [_audit_event(i) for i in ids if i > after][:limit]

    async def first_three() -> list[bytes]:
        stream = event_messages(
            fetch, EventCursor(10, gap_grace=5.0), StreamSettings(poll_seconds=0.01, gap_grace_seconds=5.0)
        )
        got: list[bytes] = []
        with anyio.fail_after(5):
            async for message in stream:
                if message.startswith(b"id:"):
                    got.append(message)
                if len(got) == 3:
                    return got
        raise AssertionError("the stream ended")

    sent = anyio.run(first_three)

    assert [m.split(b"\n")[0] for m in sent] == [b"id: 11", b"id: 12", b"id: 13"]
    assert asked[:3] == [10, 11, 11]
