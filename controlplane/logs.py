"""Log output: text for a person, or one JSON object per line for a machine.

INFO is for events an operator wants to read (a process started, a rollout
moved, drift repaired); what libraries log for every routine call (httpx's
line per metrics scrape, Alembic's per-connection notes) is demoted to DEBUG,
so it stays available with ``--log-level debug`` without flooding INFO.

Each line carries the id of the work it belongs to, when there is one: the
rollout worker binds the rollout id and the API binds the request id in
context variables, so code deeper down logs without passing ids around. A
context variable belongs to one thread or asyncio task: a new thread starts
without ids (a rollout worker binds its own), and uvicorn runs each request
in its own task, so ids never leak from one request to the next.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Literal, TypeVar

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
REQUEST_ID_HEADER = "X-Request-ID"

ROLLOUT_ID: ContextVar[int | None] = ContextVar("rollout_id", default=None)
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

# What a client may send as its request id: it is echoed in a header and written to every log line.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _always(_record: logging.LogRecord) -> bool:
    return True


def _alembic_routine(record: logging.LogRecord) -> bool:
    # "Context impl SQLiteImpl." and "Will assume ... DDL." come with every connection it opens;
    # "Running upgrade A -> B" is a schema change and stays at INFO (the text is "Running %s": whole message).
    return not record.getMessage().startswith(("Running upgrade", "Running downgrade"))


# Logger name -> which of its INFO records are routine (demoted to DEBUG).
_ROUTINE_AT_INFO: dict[str, Callable[[logging.LogRecord], bool]] = {
    "httpx": _always,  # "HTTP Request: GET .../metrics 200 OK" for every metrics scrape
    "alembic.runtime.migration": _alembic_routine,
}
# Loggers whose DEBUG is a trace of every connection: too much even at DEBUG.
_CAPPED_AT_INFO = ("httpcore", "hpack", "multipart", "python_multipart")


def accepted_request_id(value: str | None) -> str:
    """The client's request id if it is a short token, otherwise a new one."""
    if value is not None and _CLIENT_REQUEST_ID.fullmatch(value):
        return value
    # Not uuid4: os.urandom releases the GIL, and the event loop then waits for a worker thread to give it
    # back. An id needs to be unique, not secret; random is reseeded in a forked child.
    return f"{random.getrandbits(128):032x}"


def request_id_headers() -> dict[str, str]:
    """The response header that echoes the current request id (none outside a request)."""
    request_id = REQUEST_ID.get()
    return {REQUEST_ID_HEADER: request_id} if request_id is not None else {}


@contextmanager
def rollout_context(rollout_id: int) -> Iterator[None]:
    """Tag every line logged inside the block (in this thread or task) with ``rollout_id``."""
    token = ROLLOUT_ID.set(rollout_id)
    try:
        yield
    finally:
        ROLLOUT_ID.reset(token)


_Self = TypeVar("_Self")
_Result = TypeVar("_Result")


def logs_as_rollout(method: Callable[[_Self, int], _Result]) -> Callable[[_Self, int], _Result]:
    """Decorate ``method(self, rollout_id)`` so that everything it logs carries the rollout id."""

    @functools.wraps(method)
    def run(self: _Self, rollout_id: int) -> _Result:
        with rollout_context(rollout_id):
            return method(self, rollout_id)

    return run


class ContextFilter(logging.Filter):
    """Stamp each record with the rollout and request ids of the code that logged it.

    On the handler rather than read at format time, so that a record handed to
    another thread (a queue handler) keeps the ids of the thread that made it.
    A record that already has an id (``extra={"rollout_id": ...}``) keeps it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "rollout_id", None) is None:
            record.rollout_id = ROLLOUT_ID.get()
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


def _context_of(record: logging.LogRecord) -> dict[str, int | str]:
    found: dict[str, int | str] = {}
    for key in ("rollout_id", "request_id"):
        value = getattr(record, key, None)
        if value is not None:
            found[key] = value
    return found


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [rollout_id=3 request_id=...]``, then any traceback."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        context = _context_of(record)
        if context:
            line += " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context_of(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a message argument that is not JSON (a Path) must not lose the line.
        return json.dumps(entry, ensure_ascii=False, default=str)


class _Demote(logging.Filter):
    """Turn a logger's routine INFO records into DEBUG ones (handlers at INFO then drop them)."""

    def __init__(self, routine: Callable[[logging.LogRecord], bool]) -> None:
        super().__init__()
        self.routine = routine

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and self.routine(record):
            record.levelno = logging.DEBUG
            record.levelname = logging.getLevelName(logging.DEBUG)
        return True


class _Handler(logging.StreamHandler[IO[str]]):
    """The handler configure_logging installs (found again by type to replace it)."""


def configure_logging(
    log_format: LogFormat = "text", level: str | int = "INFO", *, stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log record at ``level`` or above to ``stream`` (stderr) in ``log_format``.

    Replaces what an earlier call installed; other handlers are left alone.
    Returns the handler (tests read what it wrote).
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    reset_logging()
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setLevel(numeric)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(numeric)
    for name, routine in _ROUTINE_AT_INFO.items():
        logging.getLogger(name).addFilter(_Demote(routine))
    for name in _CAPPED_AT_INFO:
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))
    return handler


def reset_logging() -> None:
    """Undo configure_logging: remove its handler and its demotions (tests, embedding)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
        handler.close()
    for name in _ROUTINE_AT_INFO:
        logger = logging.getLogger(name)
        for demote in [f for f in logger.filters if isinstance(f, _Demote)]:
            logger.removeFilter(demote)
    for name in _CAPPED_AT_INFO:
        logging.getLogger(name).setLevel(logging.NOTSET)
