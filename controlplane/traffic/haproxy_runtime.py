"""HAProxy runtime API client (admin socket) and parsers for its answers.

One AF_UNIX connection per command: in non-interactive mode HAProxy answers
one command line and closes the connection, so there is no session state to
share and instances of ``HAProxyRuntime`` are safe to use from several threads.
HAProxy applies each runtime command atomically, but a pool spans two backends
(gRPC and HTTP) and one server per replica in each: ``set_pool_weight`` and
``set_pool_state`` are one command per server (the pool's servers found in
``show servers state`` by ``pool_of_server``, not assumed), and a reader may
observe some applied and not the others for a moment.

Runtime changes (weights, states) live in the running process only: a restart
or reload returns to the weights of the rendered configuration. The reconciler
owns re-applying desired weights.

The parsers (``parse_servers_state``, ``parse_stat_csv``, ``parse_table``) are
pure functions over the text HAProxy 2.6 prints, so they are unit-tested
against captured output.
"""

from __future__ import annotations

import csv
import io
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from controlplane.errors import ProxyError
from controlplane.traffic.haproxy_config import (
    GRPC_ERROR_TABLE,
    MAX_SERVER_NAME_LEN,
    POOL_BACKENDS,
    is_standby,
    pool_of_server,
    validate_name,
    validate_weight,
)

AdminState = Literal["ready", "drain", "maint"]
_ADMIN_STATES: tuple[AdminState, ...] = ("ready", "drain", "maint")

# enum srv_state in HAProxy's server-t.h.
_OP_STATES = {0: "stopped", 1: "starting", 2: "running", 3: "stopping"}
# enum chk_result in HAProxy's check-t.h.
_CHECK_RESULTS = {0: "unknown", 1: "neutral", 2: "failed", 3: "passed", 4: "condpass"}
# enum srv_admin flags in HAProxy's server-t.h: FMAINT|IMAINT|CMAINT|RMAINT, and FDRAIN|IDRAIN.
_ADMF_MAINT_MASK = 0x01 | 0x02 | 0x04 | 0x20
_ADMF_DRAIN_MASK = 0x08 | 0x10

# First lines HAProxy 2.6 answers when it refuses a command. Only ``command``
# uses this heuristic; the typed methods check the exact answer shape instead.
_ERROR_ANSWER_RE = re.compile(
    r"^(Unknown command|No such|Can't|Cannot|Permission denied|Require|Missing|Invalid|"
    r"Empty|Absolute weight|Relative weight|Backend is using a static|'.*' expects|"
    r"This command|Error|Unable)",
)
_RECV_SIZE = 65536
_T = TypeVar("_T")


@dataclass(frozen=True)
class ServerState:
    """One server line of ``show servers state`` (format version 1)."""

    backend: str
    name: str
    addr: str
    port: int | None
    weight: int
    """The current user weight (``set weight`` changes it; drain does not)."""
    initial_weight: int
    operational: str
    """stopped / starting / running / stopping: what health checks concluded."""
    admin: AdminState
    """ready / drain / maint: what an operator (or the control plane) asked for."""
    admin_flags: int
    check_result: str
    """unknown / neutral / failed / passed / condpass: the last health check."""
    check_health: int
    seconds_since_change: int

    @property
    def serving(self) -> bool:
        """True if HAProxy may send new requests here (up, ready and weight > 0)."""
        return self.operational == "running" and self.admin == "ready" and self.weight > 0

    @property
    def pool(self) -> str:
        """The pool this server belongs to (a standby belongs to the pool it tracks)."""
        return pool_of_server(self.name)

    @property
    def standby(self) -> bool:
        """True for a pool's backup server, which has no weight of its own to manage."""
        return is_standby(self.name)


@dataclass(frozen=True)
class StatRow:
    """One row of ``show stat``; counters missing for the row type read as 0."""

    pxname: str
    svname: str
    kind: str
    """frontend / backend / server / listener."""
    status: str
    """UP, DOWN, DRAIN, MAINT, NOLB, "UP 1/2" (going down), OPEN (frontends), ..."""
    weight: int
    scur: int
    """Current sessions: requests in flight on this server (a gRPC call is one)."""
    qcur: int
    stot: int
    hrsp_1xx: int
    hrsp_2xx: int
    hrsp_3xx: int
    hrsp_4xx: int
    hrsp_5xx: int
    econ: int
    eresp: int
    wretr: int
    wredis: int
    cli_abrt: int
    srv_abrt: int
    check_status: str
    raw: dict[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def pool(self) -> str:
        """The pool a server row belongs to (a standby belongs to the pool it tracks)."""
        return pool_of_server(self.svname)


@dataclass(frozen=True)
class TableEntry:
    """One entry of ``show table NAME``: its key and stored counters."""

    key: str
    data: dict[str, int] = field(hash=False)


_STAT_KINDS = {"0": "frontend", "1": "backend", "2": "server", "3": "listener"}
_STAT_INT_FIELDS = (
    "weight", "scur", "qcur", "stot", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx",
    "hrsp_5xx", "econ", "eresp", "wretr", "wredis", "cli_abrt", "srv_abrt",
)  # fmt: skip


def _int_or(text: str | None, default: int) -> int:
    if text is None or text in ("", "-"):
        return default
    return int(text)


def _admin_state(flags: int) -> AdminState:
    if flags & _ADMF_MAINT_MASK:
        return "maint"
    if flags & _ADMF_DRAIN_MASK:
        return "drain"
    return "ready"


def parse_servers_state(text: str) -> list[ServerState]:
    """Parse the answer to ``show servers state [BACKEND]``.

    Columns are looked up by the names in HAProxy's ``#`` header line, so
    columns added by later versions do not shift the parse.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0].strip() != "1":
        raise ValueError(f"not a 'show servers state' version 1 answer: {text[:200]!r}")
    header: list[str] | None = None
    states: list[ServerState] = []
    for line in lines[1:]:
        if line.startswith("#"):
            header = line.lstrip("#").split()
            continue
        if header is None:
            raise ValueError(f"'show servers state' row before its header: {line!r}")
        row = dict(zip(header, line.split(), strict=False))
        flags = int(row["srv_admin_state"])
        port = row.get("srv_port")
        states.append(
            ServerState(
                backend=row["be_name"],
                name=row["srv_name"],
                addr=row["srv_addr"],
                port=None if port in (None, "-", "0") else int(port),
                weight=int(row["srv_uweight"]),
                initial_weight=int(row["srv_iweight"]),
                operational=_OP_STATES.get(int(row["srv_op_state"]), row["srv_op_state"]),
                admin=_admin_state(flags),
                admin_flags=flags,
                check_result=_CHECK_RESULTS.get(int(row["srv_check_result"]), row["srv_check_result"]),
                check_health=int(row["srv_check_health"]),
                seconds_since_change=int(row["srv_time_since_last_change"]),
            )
        )
    return states


def parse_stat_csv(text: str) -> list[StatRow]:
    """Parse the CSV answer to ``show stat`` into rows (all proxies, all row types)."""
    stripped = text.lstrip()
    if not stripped.startswith("# pxname,"):
        raise ValueError(f"not a 'show stat' answer: {text[:200]!r}")
    body = stripped[2:]
    reader = csv.DictReader(io.StringIO(body))
    rows: list[StatRow] = []
    for rec in reader:
        if not rec.get("pxname"):
            continue
        # The header ends with ',' so DictReader adds an empty-named column.
        raw = {k: (v or "") for k, v in rec.items() if k}
        ints = {name: _int_or(raw.get(name), 0) for name in _STAT_INT_FIELDS}
        rows.append(
            StatRow(
                pxname=raw["pxname"],
                svname=raw["svname"],
                kind=_STAT_KINDS.get(raw.get("type", ""), raw.get("type", "")),
                status=raw.get("status", ""),
                check_status=raw.get("check_status", "").lstrip("* "),
                raw=raw,
                **ints,
            )
        )
    return rows


_TABLE_ENTRY_RE = re.compile(r"^0x[0-9a-fA-F]+:\s+(.*)$")
_TABLE_HEADER_RE = re.compile(r"^# table: ([^,]+),")


def parse_table(text: str) -> list[TableEntry]:
    """Parse the answer to ``show table NAME`` (one table) into entries."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not _TABLE_HEADER_RE.match(lines[0]):
        raise ValueError(f"not a 'show table' answer: {text[:200]!r}")
    entries: list[TableEntry] = []
    for line in lines[1:]:
        match = _TABLE_ENTRY_RE.match(line)
        if match is None:
            continue
        key = ""
        data: dict[str, int] = {}
        # Keys are server names ([A-Za-z0-9_-]+), so splitting on spaces is safe.
        for token in match.group(1).split():
            name, sep, value = token.partition("=")
            if not sep:
                continue
            if name == "key":
                key = value
            elif name not in ("use", "exp", "shard"):
                # Only integer counters are stored by the rendered config.
                try:
                    data[name] = int(value)
                except ValueError:
                    continue
        entries.append(TableEntry(key=key, data=data))
    return entries


class HAProxyRuntime:
    """Client for HAProxy's runtime API on an admin-level stats socket.

    Every failure raises ``ProxyError`` whose message names the command and
    HAProxy's answer (or the socket error); ``details`` holds them as a dict.
    Invalid arguments (bad names, weight out of range) raise ValueError before
    anything is sent.
    """

    def __init__(
        self,
        socket_path: Path,
        timeout: float = 2.0,
        *,
        backends: tuple[str, ...] = POOL_BACKENDS,
        error_table: str = GRPC_ERROR_TABLE,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self.backends = tuple(validate_name(b, "backend") for b in backends)
        self.error_table = validate_name(error_table, "table")

    # -- transport -------------------------------------------------------

    def _fail(self, cmd: str, reason: str, answer: str | None = None) -> ProxyError:
        shown = "" if answer is None else f": haproxy answered {answer.strip()!r}"
        return ProxyError(
            f"haproxy runtime command {cmd!r} failed: {reason}{shown}",
            details={"command": cmd, "answer": answer, "socket": str(self.socket_path)},
        )

    def _exchange(self, cmd: str) -> str:
        if "\n" in cmd or "\r" in cmd or ";" in cmd:
            # ';' and newlines chain commands in the CLI; one call is one command
            # so an error is attributed to the command that caused it.
            raise ValueError(f"one runtime command per call, without ';' or newlines: {cmd!r}")
        deadline = time.monotonic() + self.timeout
        chunks: list[bytes] = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.socket_path))
                sock.sendall(cmd.encode() + b"\n")
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"no complete answer within {self.timeout}s")
                    sock.settimeout(remaining)
                    chunk = sock.recv(_RECV_SIZE)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except FileNotFoundError:
            raise self._fail(cmd, f"admin socket {self.socket_path} does not exist") from None
        except ConnectionRefusedError:
            raise self._fail(
                cmd, f"connection refused on {self.socket_path} (haproxy not running?)"
            ) from None
        except TimeoutError as exc:
            raise self._fail(cmd, f"timed out on {self.socket_path}: {exc}") from None
        except OSError as exc:
            raise self._fail(cmd, f"socket error on {self.socket_path}: {exc}") from None
        return b"".join(chunks).decode("utf-8", errors="replace")

    def command(self, cmd: str) -> str:
        """Send one runtime command and return HAProxy's answer text.

        Raises ProxyError if the socket cannot be used or the answer looks like
        one of HAProxy's refusals ("No such server.", "Unknown command, ...").
        """
        answer = self._exchange(cmd)
        first = answer.lstrip().split("\n", 1)[0]
        if _ERROR_ANSWER_RE.match(first):
            raise self._fail(cmd, "refused", answer)
        return answer

    def _set(self, cmd: str) -> None:
        # Setters answer an empty line on success; any text is a refusal or a
        # warning we do not want to ignore.
        answer = self._exchange(cmd)
        if answer.strip():
            raise self._fail(cmd, "refused", answer)

    def _show(self, cmd: str, parse: Callable[[str], _T]) -> _T:
        answer = self._exchange(cmd)
        try:
            return parse(answer)
        except (ValueError, KeyError) as exc:
            raise self._fail(cmd, f"unexpected answer ({exc})", answer) from None

    # -- commands --------------------------------------------------------

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        """Set ``backend/server``'s weight (0..256) without a reload."""
        validate_name(backend, "backend")
        validate_name(server, "server", max_len=MAX_SERVER_NAME_LEN)
        validate_weight(weight)
        self._set(f"set weight {backend}/{server} {weight}")

    def set_state(self, backend: str, server: str, state: AdminState) -> None:
        """Set ``backend/server``'s admin state: ready, drain (no new requests) or maint."""
        validate_name(backend, "backend")
        validate_name(server, "server", max_len=MAX_SERVER_NAME_LEN)
        if state not in _ADMIN_STATES:
            raise ValueError(f"state must be one of {_ADMIN_STATES}, got {state!r}")
        self._set(f"set server {backend}/{server} state {state}")

    def pool_servers(self, pool: str) -> dict[str, list[str]]:
        """The replica servers of ``pool`` in each pool backend, from ``show servers state``.

        Standbys are left out (they track their replica). ProxyError when a
        backend has none: the pool is unknown to this proxy.
        """
        validate_name(pool, "pool")
        found: dict[str, list[str]] = {b: [] for b in self.backends}
        for state in self.servers_state():
            if state.backend in found and not state.standby and state.pool == pool:
                found[state.backend].append(state.name)
        missing = [b for b, servers in found.items() if not servers]
        if missing:
            raise ProxyError(
                f"no server of pool {pool!r} in backend(s) {', '.join(missing)} of the proxy",
                details={"pool": pool, "missing_backends": missing, "socket": str(self.socket_path)},
            )
        return found

    def _each_server(self, pool: str, what: str, apply: Callable[[str, str], None]) -> None:
        done: list[str] = []
        for backend, servers in self.pool_servers(pool).items():
            for server in servers:
                try:
                    apply(backend, server)
                except ProxyError as exc:
                    if done:
                        # Say which servers already changed: the pool is now split.
                        raise ProxyError(
                            f"{exc.message} (after {what} was applied to {', '.join(done)})",
                            details={**(exc.details or {}), "applied_to": done},
                        ) from exc
                    raise
                done.append(f"{backend}/{server}")

    def set_pool_weight(self, pool: str, weight: int) -> None:
        """Set the weight of every replica server of ``pool`` in every pool backend (gRPC and HTTP)."""
        validate_name(pool, "pool")
        validate_weight(weight)
        self._each_server(pool, f"weight {weight}", lambda b, s: self.set_weight(b, s, weight))

    def set_pool_state(self, pool: str, state: AdminState) -> None:
        """Set the admin state of every replica server of ``pool`` in every pool backend.

        Each replica's standby tracks it, so it inherits the state.
        """
        validate_name(pool, "pool")
        if state not in _ADMIN_STATES:
            raise ValueError(f"state must be one of {_ADMIN_STATES}, got {state!r}")
        self._each_server(pool, f"state {state}", lambda b, s: self.set_state(b, s, state))

    def servers_state(self, backend: str | None = None) -> list[ServerState]:
        """Return the servers of ``backend`` (all backends if None) from ``show servers state``."""
        cmd = "show servers state"
        if backend is not None:
            cmd += f" {validate_name(backend, 'backend')}"
        return self._show(cmd, parse_servers_state)

    def server_stats(self) -> list[StatRow]:
        """Return every row of ``show stat`` (frontends, backends, servers)."""
        return self._show("show stat", parse_stat_csv)

    def table(self, name: str) -> list[TableEntry]:
        """Return the entries of stick table ``name``."""
        return self._show(f"show table {validate_name(name, 'table')}", parse_table)

    def grpc_error_counts(self) -> dict[str, int]:
        """Return client-visible gRPC errors counted per server name since haproxy started.

        A server with no error yet is absent. The counts are cumulative:
        compare two readings to get the errors of an interval.
        """
        return {e.key: e.data.get("http_req_cnt", 0) for e in self.table(self.error_table)}

    def _server_row(self, backend: str, server: str) -> StatRow:
        for row in self.server_stats():
            if row.pxname == backend and row.svname == server and row.kind == "server":
                return row
        raise self._fail("show stat", f"no server {backend}/{server} in the statistics")

    def wait_until_idle(
        self,
        backend: str,
        server: str,
        timeout: float,
        *,
        poll_interval: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Wait until ``backend/server`` has no request in flight or queued.

        Meant after ``set_state(..., "drain")``: once this returns, stopping
        the server fails no request. Raises ProxyError on timeout, naming the
        requests still in flight.
        """
        wanted = (
            validate_name(backend, "backend"),
            validate_name(server, "server", max_len=MAX_SERVER_NAME_LEN),
        )

        def pick(rows: list[StatRow]) -> list[StatRow]:
            found = [r for r in rows if r.kind == "server" and (r.pxname, r.svname) == wanted]
            if not found:
                raise self._fail("show stat", f"no server {backend}/{server} in the statistics")
            return found

        self._wait_idle(pick, timeout, poll_interval, clock, sleep)

    def wait_pool_idle(
        self,
        pool: str,
        timeout: float,
        *,
        poll_interval: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Wait until no replica server of ``pool`` has a request in flight or queued, in any pool backend.

        Requests on the replicas' standbys count too, when the configuration
        has them. The servers are found in each reading, not assumed.
        """
        validate_name(pool, "pool")

        def pick(rows: list[StatRow]) -> list[StatRow]:
            found = [r for r in rows if r.kind == "server" and r.pxname in self.backends and r.pool == pool]
            missing = sorted(set(self.backends) - {r.pxname for r in found if not is_standby(r.svname)})
            if missing:
                where = ", ".join(missing)
                raise self._fail("show stat", f"no server of pool {pool} in backend(s) {where} of the stats")
            return found

        self._wait_idle(pick, timeout, poll_interval, clock, sleep)

    def _wait_idle(
        self,
        pick: Callable[[list[StatRow]], list[StatRow]],
        timeout: float,
        poll_interval: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        deadline = clock() + timeout
        while True:
            rows = pick(self.server_stats())
            busy = {f"{r.pxname}/{r.svname}": r.scur + r.qcur for r in rows if r.scur or r.qcur}
            if not busy:
                return
            if clock() >= deadline:
                raise ProxyError(
                    f"servers still busy after {timeout}s: {busy} requests in flight or queued",
                    details={"busy": busy, "timeout": timeout},
                )
            sleep(poll_interval)
