"""Attacks on a running ``controlplane up`` (real Triton, HAProxy, PostgreSQL): refused early, as JSON.

The stack runs on a PostgreSQL database of its own, so the test can take the
database away (no new connections, existing ones terminated) and give it back.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from stack import Stack, create_token, start_stack

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def database_url(postgres_url: str) -> Iterator[str]:
    name = f"cp_front_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("front")
    # Triton's own account is another area's concern; here it runs as the test's user.
    running = start_stack(root / "state", database_url=database_url, env={"CONTROLPLANE_TRITON_USER": ""})
    try:
        yield running
    finally:
        subprocess.run(["umount", str(running.state_dir / "uploads")], capture_output=True, check=False)
        assert running.stop() == 0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def refusals(stack: Stack, reason: str) -> float:
    metrics = httpx.get(f"{stack.api}/metrics").text
    pattern = rf'controlplane_auth_refusals_total{{reason="{reason}",status="401"}} ([0-9.e+]+)'
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


def audit_refusals(stack: Stack) -> list[dict]:
    rows: list[dict] = []
    after = 0
    with stack.client() as client:
        while page := client.get("/v1/events", params={"after": after, "limit": 1000}).json():
            rows += [e for e in page if e["action"] == "auth.refused"]
            after = page[-1]["id"]
    return rows


def test_an_unauthenticated_200_mb_body_gets_401_before_it_is_read_and_rss_barely_moves(stack: Stack) -> None:
    rss_before = rss_bytes(stack.process.pid)
    sock = socket.create_connection(("127.0.0.1", stack.api_port), timeout=10)
    sock.sendall(
        b"POST /v1/rollouts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {200 * MiB}\r\n\r\n".encode()
    )
    started = time.monotonic()

    def flood() -> None:
        chunk = b"[" * MiB
        try:
            for _ in range(200):
                sock.sendall(chunk)
        except OSError:
            pass

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    sock.settimeout(10)
    head = sock.recv(65536)
    answered_after = time.monotonic() - started
    with contextlib.suppress(OSError):
        while b'"}}' not in head and (more := sock.recv(65536)):
            head += more
    sender.join(30)
    sock.close()
    assert head.startswith(b"HTTP/1.1 401 "), head[:200]
    assert b'"unauthorized"' in head
    assert answered_after < 1.0
    assert rss_bytes(stack.process.pid) - rss_before < 30 * MiB


def test_an_authenticated_json_body_over_one_mebibyte_gets_413_without_being_parsed(stack: Stack) -> None:
    deployer = create_token(stack, f"deployer-{uuid.uuid4().hex[:6]}", "deployer")
    body = b'{"model": "mlp", "version": 1, "pad": "' + b"x" * (2 * MiB) + b'"}'
    with stack.client(token=deployer) as client:
        declared = client.post("/v1/rollouts", content=body, headers={"content-type": "application/json"})
        streamed = client.post(
            "/v1/rollouts",
            content=iter([body[:MiB], body[MiB:]]),
            headers={"content-type": "application/json"},
        )
        rollouts = client.get("/v1/rollouts").json()
    for answer in (declared, streamed):
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"]["code"] == "payload_too_large"
    assert rollouts == []


@pytest.mark.parametrize(
    ("method", "path", "json_body"),
    [
        ("GET", f"/v1/models/mlp/versions/{2**31}", None),
        ("POST", f"/v1/models/mlp/versions/{2**31}/deploy", None),
        ("GET", f"/v1/rollouts/{2**31}", None),
        ("POST", f"/v1/rollouts/{2**63}/abort", None),
        ("GET", f"/v1/events?after={2**31}", None),
        ("POST", "/v1/rollouts", {"model": "mlp", "version": 2**31}),
        ("POST", "/v1/rollouts", {"model": "mlp", "version": 1, "steps": list(range(1, 102))}),
        ("POST", "/v1/rollouts", {"model": "mlp", "version": 1, "gates": {"min_requests": 2**40}}),
        ("POST", "/v1/rollouts", {"model": "m\u0000lp", "version": 1}),
        ("GET", "/v1/models/m%00lp", None),
        ("GET", "/v1/models/m%00lp/versions", None),
        ("POST", "/v1/models/m%00lp/rollback", None),
        ("PUT", "/v1/models/mlp/policy", {"allowed_signers": ["key:\u0000"]}),
    ],
)
def test_values_postgresql_cannot_hold_are_refused_with_422_json(
    stack: Stack, method: str, path: str, json_body: object
) -> None:
    with stack.client() as client:
        answer = client.request(method, path, json=json_body)
        models = client.get("/v1/models").json()
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"]["code"].startswith("invalid_")
    assert models == []


def test_a_thousand_unauthenticated_requests_are_all_counted_but_audited_at_the_rate_limit(
    stack: Stack,
) -> None:
    before_rows = len(audit_refusals(stack))
    before_metric = refusals(stack, "missing_token")
    started = time.monotonic()
    with httpx.Client(base_url=stack.api, timeout=30) as anonymous:
        statuses = {anonymous.get("/v1/models").status_code for _ in range(1000)}
    elapsed = time.monotonic() - started
    time.sleep(1.1)  # one token refills: the next refusal is written and carries the suppressed count
    assert httpx.get(f"{stack.api}/v1/models/mlp").status_code == 401
    rows = audit_refusals(stack)[before_rows:]
    assert statuses == {401}
    assert refusals(stack, "missing_token") - before_metric == 1001
    assert len(rows) <= 20 + elapsed * 1.0 + 2
    assert rows[-1]["details"]["suppressed"] > 0
    assert len(rows) + sum(r["details"].get("suppressed", 0) for r in rows) == 1001
    first = rows[0]
    assert first["actor"] == "anonymous" and first["outcome"] == "refused"
    assert first["details"]["method"] == "GET" and first["details"]["status"] == 401
    assert first["details"]["reason"] == "missing_token"
    assert first["details"]["client"].startswith("127.0.0.1:")
    assert "cpt_" not in stack.log()


def test_a_forbidden_request_is_audited_with_the_token_name_and_never_its_value(stack: Stack) -> None:
    name = f"viewer-{uuid.uuid4().hex[:6]}"
    viewer = create_token(stack, name, "viewer")
    time.sleep(1.1)
    with stack.client(token=viewer) as client:
        refused = client.post("/v1/models/mlp/versions/1/deploy")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    row = audit_refusals(stack)[-1]
    assert row["actor"] == name and row["details"]["status"] == 403 and row["details"]["reason"] == "role"
    assert row["target"] == "/v1/models/mlp/versions/1/deploy"
    assert viewer not in stack.log() and viewer not in str(row)


def test_a_full_upload_disk_answers_507_insufficient_storage_not_a_refused_archive(stack: Stack) -> None:
    uploads = stack.state_dir / "uploads"
    uploads.mkdir(exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(uploads)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with stack.client() as client:
            answer = client.post(
                "/v1/models/mlp/versions",
                content=b"\0" * (3 * MiB),
                headers={"content-type": "application/gzip"},
            )
            models = client.get("/v1/models").json()
        assert answer.status_code == 507, answer.text
        assert answer.json()["error"]["code"] == "insufficient_storage"
        assert models == []
        assert list(uploads.iterdir()) == []
    finally:
        subprocess.run(["umount", str(uploads)], check=True)


def test_a_database_that_refuses_connections_gives_503_json_and_the_api_recovers(
    stack: Stack, postgres_url: str, database_url: str
) -> None:
    name = make_url(database_url).database
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
            )
        with stack.client() as client:
            listed = client.get("/v1/models")
            ready = client.get("/readyz")
        with httpx.Client(base_url=stack.api, timeout=30) as anonymous:
            anonymous_ready = anonymous.get("/readyz")
        assert listed.status_code == 503
        assert listed.json()["error"]["code"] == "database_unavailable"
        assert "5432" not in listed.text and name not in listed.text
        assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"
        assert anonymous_ready.json()["checks"]["database"] == "failing"
        assert name not in anonymous_ready.text and "5432" not in anonymous_ready.text
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    with stack.client() as client:
        assert client.get("/v1/models").status_code == 200
