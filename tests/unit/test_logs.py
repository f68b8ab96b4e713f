"""Log lines: readable at INFO, one JSON object per line on request, tagged with rollout or request id."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI

from controlplane.api.auth import Authenticator
from controlplane.api.errors import install_error_handlers
from controlplane.api.guard import ApiLimits, RequestGuard
from controlplane.logs import (
    REQUEST_ID,
    ROLLOUT_ID,
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    accepted_request_id,
    configure_logging,
    logs_as_rollout,
    reset_logging,
    rollout_context,
)
from controlplane.registry.db import Database
from controlplane.triton.metrics import TritonMetricsClient

FIXTURES = Path(__file__).parent / "fixtures"


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("controlplane.x", logging.INFO, __file__, 1, message, args, None)


def _stamped(record: logging.LogRecord) -> logging.LogRecord:
    ContextFilter().filter(record)
    return record


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """What the configured handler writes; logging is put back as it was afterwards."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    yield stream
    reset_logging()
    root.setLevel(level)


# -- the JSON formatter ------------------------------------------------------------------


def test_a_json_line_holds_time_level_logger_and_the_formatted_message() -> None:
    line = JsonFormatter().format(_stamped(_record("pool %s started (pid %d)", "blue", 42)))

    entry = json.loads(line)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "controlplane.x"
    assert entry["message"] == "pool blue started (pid 42)"
    assert entry["time"].endswith("+00:00") and "T" in entry["time"]
    assert "rollout_id" not in entry and "request_id" not in entry


def test_a_json_line_carries_the_rollout_id_bound_where_it_was_logged() -> None:
    with rollout_context(7):
        record = _stamped(_record("shifting"))

    assert json.loads(JsonFormatter().format(record))["rollout_id"] == 7


def test_a_json_line_carries_the_request_id_bound_where_it_was_logged() -> None:
    token = REQUEST_ID.set("req-1")
    try:
        record = _stamped(_record("deploy"))
    finally:
        REQUEST_ID.reset(token)

    assert json.loads(JsonFormatter().format(record))["request_id"] == "req-1"


def test_an_id_given_as_extra_is_kept_over_the_bound_one() -> None:
    record = _record("resumed")
    record.rollout_id = 3
    with rollout_context(9):
        ContextFilter().filter(record)

    assert json.loads(JsonFormatter().format(record))["rollout_id"] == 3


def test_a_multi_line_message_and_its_traceback_stay_on_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("controlplane.x", logging.ERROR, __file__, 1, "a\nb", (), sys.exc_info())

    line = JsonFormatter().format(_stamped(record))

    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "a\nb"
    assert "RuntimeError: boom" in entry["exception"]


def test_message_arguments_that_are_not_json_do_not_lose_the_line() -> None:
    entry = json.loads(JsonFormatter().format(_stamped(_record("%s", Path("/srv/x")))))

    assert entry["message"] == "/srv/x"


# -- the text formatter ------------------------------------------------------------------


def test_a_text_line_ends_with_the_ids_it_belongs_to() -> None:
    with rollout_context(4):
        record = _stamped(_record("staging failed: %s", "no space"))

    line = TextFormatter().format(record)

    assert line.endswith("INFO controlplane.x: staging failed: no space [rollout_id=4]")


def test_a_text_line_without_ids_has_no_brackets() -> None:
    assert TextFormatter().format(_stamped(_record("haproxy started"))).endswith("haproxy started")


# -- ids ---------------------------------------------------------------------------------


def test_a_short_client_request_id_is_kept() -> None:
    assert accepted_request_id("abc-123.x:y_Z") == "abc-123.x:y_Z"


@pytest.mark.parametrize("sent", [None, "", "has space", "x" * 129, "é", "a\tb"])
def test_a_missing_or_unusual_request_id_is_replaced_by_a_fresh_one(sent: str | None) -> None:
    first, second = accepted_request_id(sent), accepted_request_id(sent)

    assert first != second
    assert len(first) == 32 and int(first, 16) >= 0


def test_a_rollout_worker_tags_its_lines_and_leaves_no_id_behind() -> None:
    seen: list[int | None] = []

    class Worker:
        @logs_as_rollout
        def run(self, rollout_id: int) -> None:
            seen.append(ROLLOUT_ID.get())

    Worker().run(5)

    assert seen == [5]
    assert ROLLOUT_ID.get() is None


def test_rollout_ids_of_two_threads_do_not_mix() -> None:
    seen: dict[int, int | None] = {}
    barrier = threading.Barrier(2)

    class Worker:
        @logs_as_rollout
        def run(self, rollout_id: int) -> None:
            barrier.wait(5)  # both are inside their block at once
            seen[rollout_id] = ROLLOUT_ID.get()

    threads = [threading.Thread(target=Worker().run, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)

    assert seen == {1: 1, 2: 2}


# -- configuration -----------------------------------------------------------------------


def test_json_format_writes_one_object_per_line(output: io.StringIO) -> None:
    configure_logging("json", "INFO", stream=output)
    log = logging.getLogger("controlplane.test")

    log.info("one")
    with rollout_context(2):
        log.warning("two")
    log.debug("hidden")

    entries = [json.loads(line) for line in output.getvalue().splitlines()]
    assert [(e["level"], e["message"], e.get("rollout_id")) for e in entries] == [
        ("INFO", "one", None),
        ("WARNING", "two", 2),
    ]


def test_configuring_again_replaces_the_handler_instead_of_doubling_lines(output: io.StringIO) -> None:
    configure_logging("text", "INFO", stream=io.StringIO())
    configure_logging("text", "INFO", stream=output)

    logging.getLogger("controlplane.test").info("once")

    assert output.getvalue().count("once") == 1


def test_an_unknown_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml")  # type: ignore[arg-type]  # the point: a value outside the Literal
    with pytest.raises(ValueError, match="log level"):
        configure_logging("text", "LOUD")


def test_alembic_connection_notes_are_debug_but_schema_upgrades_stay_at_info(output: io.StringIO) -> None:
    configure_logging("text", "INFO", stream=output)
    alembic = logging.getLogger("alembic.runtime.migration")

    alembic.info("Context impl %s.", "SQLiteImpl")
    alembic.info("Will assume non-transactional DDL.")
    alembic.info("Running %s", "upgrade 0001 -> 0002, Pools")  # how alembic words it

    lines = output.getvalue().splitlines()
    assert len(lines) == 1
    assert "INFO alembic.runtime.migration: Running upgrade 0001 -> 0002, Pools" in lines[0]


# -- the metrics scrape, over a real socket ----------------------------------------------


class _Metrics(BaseHTTPRequestHandler):
    body = (FIXTURES / "triton_metrics_traffic.txt").read_bytes()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:  # the server's own access log: not tested
        pass


@pytest.fixture
def metrics_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_metrics_scrapes_log_no_line_at_info(output: io.StringIO, metrics_url: str) -> None:
    configure_logging("text", "INFO", stream=output)

    with TritonMetricsClient(metrics_url) as client:
        for _ in range(3):
            client.scrape(["mlp"])

    assert output.getvalue() == ""


def test_metrics_scrapes_are_still_visible_at_debug(output: io.StringIO, metrics_url: str) -> None:
    configure_logging("json", "DEBUG", stream=output)

    with TritonMetricsClient(metrics_url) as client:
        client.scrape(["mlp"])

    entries = [json.loads(line) for line in output.getvalue().splitlines()]
    scrapes = [e for e in entries if e["message"].startswith("HTTP Request:")]
    assert [(e["logger"], e["level"]) for e in scrapes] == [("httpx", "DEBUG")]
    # The connection trace of httpcore is not wanted even at DEBUG.
    assert not any(e["logger"].startswith("httpcore") for e in entries)


# -- the API's request id ----------------------------------------------------------------


def _app(db: Database, *, auth_required: bool) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    log = logging.getLogger("controlplane.test.api")

    @app.get("/v1/sync")
    def sync_route() -> dict[str, str]:
        log.info("in a worker thread")
        return {}

    @app.get("/v1/async")
    async def async_route() -> dict[str, str]:
        log.info("in the event loop")
        return {}

    @app.get("/v1/fails")
    def failing_route() -> None:
        raise RuntimeError("unexpected")

    auth = Authenticator(db, required=auth_required)
    app.add_middleware(RequestGuard, auth=auth, limits=ApiLimits, upload_routes=())
    return app


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    database.upgrade()
    yield database
    database.dispose()


def _lines(output: io.StringIO, logger: str) -> list[dict[str, str]]:
    return [e for e in map(json.loads, output.getvalue().splitlines()) if e["logger"] == logger]


def _get(app: FastAPI, *requests: tuple[str, dict[str, str]]) -> list[httpx.Response]:
    """Send GET requests through the whole ASGI stack, in process, one after the other."""

    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return [await client.get(path, headers=headers) for path, headers in requests]

    return anyio.run(send_all)


def test_the_client_request_id_is_echoed_and_tags_the_lines_of_the_request(
    db: Database, output: io.StringIO
) -> None:
    configure_logging("json", "INFO", stream=output)

    sync, in_loop = _get(
        _app(db, auth_required=False),
        ("/v1/sync", {"X-Request-ID": "client-1"}),
        ("/v1/async", {"X-Request-ID": "client-2"}),
    )

    assert (sync.headers["X-Request-ID"], in_loop.headers["X-Request-ID"]) == ("client-1", "client-2")
    lines = _lines(output, "controlplane.test.api")
    assert [(e["message"], e["request_id"]) for e in lines] == [
        ("in a worker thread", "client-1"),
        ("in the event loop", "client-2"),
    ]


def test_a_request_without_an_id_gets_a_fresh_one_per_request(db: Database, output: io.StringIO) -> None:
    configure_logging("json", "INFO", stream=output)

    answers = _get(_app(db, auth_required=False), ("/v1/sync", {}), ("/v1/sync", {}))

    ids = [a.headers["X-Request-ID"] for a in answers]
    assert ids[0] != ids[1]
    assert [e["request_id"] for e in _lines(output, "controlplane.test.api")] == ids


def test_a_refused_request_answers_with_its_id_and_its_refusal_line_carries_it(
    db: Database, output: io.StringIO
) -> None:
    configure_logging("json", "INFO", stream=output)

    (refused,) = _get(_app(db, auth_required=True), ("/v1/sync", {"X-Request-ID": "client-3"}))

    assert refused.status_code == 401
    assert refused.headers["X-Request-ID"] == "client-3"
    refusals = _lines(output, "controlplane.auth")
    assert refusals and all(e["request_id"] == "client-3" for e in refusals)


def test_an_unexpected_failure_answers_500_with_the_id_and_logs_the_trace_with_it(
    db: Database, output: io.StringIO
) -> None:
    configure_logging("json", "INFO", stream=output)

    (failed,) = _get(_app(db, auth_required=False), ("/v1/fails", {"X-Request-ID": "client-4"}))

    assert failed.status_code == 500
    assert failed.headers["X-Request-ID"] == "client-4"
    failures = _lines(output, "controlplane.api")
    assert [e["request_id"] for e in failures] == ["client-4"]
    assert "RuntimeError: unexpected" in failures[0]["exception"]
