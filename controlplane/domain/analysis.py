"""Canary analysis: is the candidate pool healthy between two rollout steps?

Pure rules over numbers: no I/O. The adapters read two kinds of cumulative
counters for one pool, HAProxy's (per server: requests, errors the client saw)
and Triton's (per model: success, failure) plus Triton's recent p99 latency,
into a :class:`PoolSample`. :func:`measure` turns two samples into what
happened in between and :func:`evaluate` judges that against :class:`Gates`.

Why both sources (measured with tritonserver 2.51, see
``tests/unit/test_triton_metrics.py``):

* Triton's failure counter misses most client-visible failures. Requests it
  rejects before the model runs (wrong shape, input name or dtype, batch too
  large, unknown version) appear in neither its success nor its failure
  counter, and a Python-backend response carrying an error counts as a
  success. Only an exception escaping the backend's ``execute`` counts as a
  failure.
* HAProxy sees every request routed to the pool and every gRPC call answered
  with a non-zero ``grpc-status`` (stick table), but not requests sent straight
  to Triton (smoke tests, clients that bypass the proxy). Its counters are per
  pool: they include every model the pool serves, not only the models of
  interest. Over HTTP only 5xx answers and cut responses count as errors, so
  a failure Triton answers with a 4xx (a bad shape, or a backend error
  response with INVALID_ARG) is seen by neither source.
"""

from __future__ import annotations

import contextlib
import enum
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from controlplane.errors import InvalidInput

DEFAULT_MIN_REQUESTS = 20
DEFAULT_MAX_HOLD_SECONDS = 300.0
DEFAULT_WARMUP_REQUESTS = 10
MAX_GATE_COUNT = 1_000_000
MAX_HOLD_SECONDS = 86_400.0
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_.\-/]{1,128}$")


def _is_number(value: object) -> bool:
    # bool is an int subclass; True as a threshold is a bug, not 1.
    return isinstance(value, int | float) and not isinstance(value, bool)


class OnNoData(enum.StrEnum):
    """What a step does once it has held for ``Gates.max_hold_seconds`` without enough traffic."""

    ABORT = "abort"
    """Roll back, saying so (the default: no evidence is no promotion)."""
    HOLD = "hold"
    """Keep holding until traffic comes or an operator promotes or aborts."""
    PROMOTE = "promote"
    """Go on without evidence (chosen knowingly, e.g. for a model nobody calls yet)."""


@dataclass(frozen=True)
class Gates:
    """What a rollout judges its candidate by: before traffic, and between steps.

    A threshold set to None is not checked.

    Before any weight moves (on the idle pool): the version's golden set, if it
    has one (``golden``), and ``warmup_requests`` inferences on every replica.
    At the start: the interface against the version serving (refused when it
    breaks clients unless ``allow_breaking`` and a new major ``api_version``)
    and, with ``metric``, the version's metric against production's.

    Between steps (the analysis window): a step's gates count only once the
    candidate served ``min_requests`` in the window. With fewer, the step holds
    and measures again, up to ``max_hold_seconds``; then ``on_no_data`` decides.
    Absolute gates (``max_error_rate``, ``max_p99_ms``) judge the candidate
    alone; relative ones compare it with the baseline pool over the same window
    (``max_error_rate_increase``: candidate minus baseline error rate;
    ``max_p99_ratio``: candidate p99 over baseline p99).
    """

    max_error_rate: float | None = None
    """Largest tolerated fraction (0..1) of requests that failed."""
    max_p99_ms: float | None = None
    """Largest tolerated 99th percentile request duration in milliseconds, as Triton measures it."""
    min_requests: int = DEFAULT_MIN_REQUESTS
    """Requests the candidate must serve in a window before the window's gates count."""
    max_hold_seconds: float = DEFAULT_MAX_HOLD_SECONDS
    """How long a step may hold for ``min_requests`` before ``on_no_data`` applies."""
    on_no_data: OnNoData = OnNoData.ABORT
    max_error_rate_increase: float | None = None
    """Largest tolerated candidate error rate minus the baseline's, over the same window."""
    max_p99_ratio: float | None = None
    """Largest tolerated candidate p99 over the baseline's p99, over the same window."""
    golden: bool = True
    """Run the version's golden set (when it has one) on the candidate before traffic."""
    warmup_requests: int = DEFAULT_WARMUP_REQUESTS
    """Inferences sent to every candidate replica before it gets traffic (0: none)."""
    allow_breaking: bool = False
    """Roll out an interface that breaks clients (the version must declare a new major api_version)."""
    metric: str | None = None
    """A metric of the versions' metadata the candidate must not be worse at than production."""
    metric_max_drop: float = 0.0
    """How much worse than production's the candidate's ``metric`` may be."""
    metric_lower_is_better: bool = False
    """``metric`` is a loss or an error (lower is better) rather than accuracy-like."""

    def __post_init__(self) -> None:
        if isinstance(self.on_no_data, str) and not isinstance(self.on_no_data, OnNoData):
            with contextlib.suppress(ValueError):  # validate() names it
                object.__setattr__(self, "on_no_data", OnNoData(self.on_no_data))
        self.validate()

    @property
    def judges_traffic(self) -> bool:
        """Whether any gate needs the candidate's traffic (so a window without any is no evidence)."""
        return any(
            limit is not None
            for limit in (
                self.max_error_rate,
                self.max_p99_ms,
                self.max_error_rate_increase,
                self.max_p99_ratio,
            )
        )

    def validate(self) -> None:
        """Raise InvalidInput (code ``invalid_gates``) naming every invalid threshold."""
        problems: list[str] = []
        rate = self.max_error_rate
        if rate is not None and (not _is_number(rate) or not 0.0 <= rate <= 1.0):
            problems.append(f"max_error_rate must be a fraction between 0 and 1, got {rate!r}")
        increase = self.max_error_rate_increase
        if increase is not None and (not _is_number(increase) or not 0.0 <= increase <= 1.0):
            problems.append(f"max_error_rate_increase must be a fraction between 0 and 1, got {increase!r}")
        for name in ("max_p99_ms", "max_p99_ratio"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not math.isfinite(value) or value <= 0):
                problems.append(f"{name} must be a positive number, got {value!r}")
        for name in ("min_requests", "warmup_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_GATE_COUNT:
                problems.append(f"{name} must be an integer within 0..{MAX_GATE_COUNT}, got {value!r}")
        hold = self.max_hold_seconds
        if not _is_number(hold) or not 0 <= hold <= MAX_HOLD_SECONDS:
            problems.append(f"max_hold_seconds must be within 0..{MAX_HOLD_SECONDS}, got {hold!r}")
        if not isinstance(self.on_no_data, OnNoData):
            choices = ", ".join(o.value for o in OnNoData)
            problems.append(f"on_no_data must be one of {choices}, got {self.on_no_data!r}")
        for name in ("golden", "allow_breaking", "metric_lower_is_better"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.metric is not None and (
            not isinstance(self.metric, str) or not _METRIC_NAME.fullmatch(self.metric)
        ):
            problems.append(
                f"metric must be a metric name (letters, digits, '_', '-', '.', '/'), got {self.metric!r}"
            )
        drop = self.metric_max_drop
        if not _is_number(drop) or not math.isfinite(drop) or drop < 0:
            problems.append(f"metric_max_drop must be a number >= 0, got {drop!r}")
        if problems:
            raise InvalidInput(
                "invalid analysis gates: " + "; ".join(problems),
                code="invalid_gates",
                details={"problems": problems},
            )

    def as_dict(self) -> dict[str, Any]:
        """The gates as JSON-ready values."""
        return {**asdict(self), "on_no_data": OnNoData(self.on_no_data).value}


@dataclass(frozen=True)
class PoolSample:
    """Cumulative counters of one pool read at one instant.

    Counters only grow while the process that keeps them runs, and start from
    zero when it restarts; compare two samples with :func:`measure`.
    """

    at: float
    """Monotonic clock seconds when the sample was taken."""
    proxy_requests: int
    """HAProxy ``stot`` of the pool's server, summed over the gRPC and HTTP backends."""
    proxy_errors: int
    """gRPC calls answered with grpc-status != 0, plus HTTP 5xx and ``eresp`` of the pool's server."""
    triton_success: int
    """``nv_inference_request_success`` summed over the models of interest, all versions."""
    triton_failure: int
    """``nv_inference_request_failure`` (all reasons) summed over the models of interest, all versions."""
    p99_us: float | None
    """Triton's recent p99 request duration in microseconds (max over the models), None if unknown.

    It is a summary over a sliding window Triton chooses, not a counter, so
    it is never diffed: the later sample's value describes the recent past.
    """

    def __post_init__(self) -> None:
        counters = {
            "proxy_requests": self.proxy_requests,
            "proxy_errors": self.proxy_errors,
            "triton_success": self.triton_success,
            "triton_failure": self.triton_failure,
        }
        negative = {name: value for name, value in counters.items() if value < 0}
        if negative:
            raise ValueError(f"counters cannot be negative: {negative}")


@dataclass(frozen=True)
class Measurement:
    """What happened on a pool between two samples."""

    requests: int
    """Requests in the window: the larger of HAProxy's and Triton's count.

    HAProxy sees requests Triton never counts (rejected ones) and Triton sees
    requests that bypass HAProxy (smoke tests, direct clients); each count is
    a lower bound of the truth, so the larger is the better one. It also keeps
    ``errors <= requests``, as each error count is bounded by its own source's
    request count.
    """
    errors: int
    """Failed requests in the window: the larger of HAProxy's and Triton's count.

    Not the sum: a failure Triton counts (an exception in the backend) is
    usually also a gRPC error HAProxy counts, so adding them would count the
    same request twice. Each source misses failures the other sees, so the
    larger is a lower bound that never double-counts.
    """
    p99_ms: float | None
    window_seconds: float
    proxy_requests: int
    proxy_errors: int
    triton_requests: int
    """Triton successes plus failures in the window (rejected requests are in neither)."""
    triton_failures: int
    proxy_restarted: bool
    """HAProxy's counters went backwards: the window counts only what followed the restart."""
    triton_restarted: bool
    """Triton's counters went backwards (a restart, or a model of interest reloaded or unloaded).

    The window then counts only what followed the reset.
    """

    @property
    def error_rate(self) -> float:
        """Fraction of requests that failed; 0.0 for a window without requests."""
        if self.requests == 0:
            return 0.0
        return self.errors / self.requests

    def as_dict(self) -> dict[str, Any]:
        """The measurement, error rate included, as JSON-ready values."""
        return {**asdict(self), "error_rate": self.error_rate}


def _window(before: tuple[int, ...], after: tuple[int, ...]) -> tuple[tuple[int, ...], bool]:
    """Per-counter deltas of one source; a source whose counters went backwards restarted.

    Counters of one source (one process) reset together, so when any of them
    went backwards, all of them count from zero again: ``after`` alone is what
    happened since the restart (what happened before it is lost). A restart
    followed by more traffic than the earlier reading had is indistinguishable
    from no restart; the window then undercounts, never overcounts.
    """
    if any(a < b for b, a in zip(before, after, strict=True)):
        return after, True
    return tuple(a - b for b, a in zip(before, after, strict=True)), False


def measure(before: PoolSample, after: PoolSample) -> Measurement:
    """Return what happened on one pool between ``before`` and ``after``.

    HAProxy's and Triton's counters are checked for a restart (a counter
    smaller than before) separately, because the two processes restart
    independently; see :class:`Measurement` for how the two sources combine.
    Raises ValueError if ``after`` was taken before ``before``.
    """
    if after.at < before.at:
        raise ValueError(f"samples out of order: after.at {after.at} < before.at {before.at}")
    (proxy_requests, proxy_errors), proxy_restarted = _window(
        (before.proxy_requests, before.proxy_errors), (after.proxy_requests, after.proxy_errors)
    )
    (triton_success, triton_failures), triton_restarted = _window(
        (before.triton_success, before.triton_failure), (after.triton_success, after.triton_failure)
    )
    triton_requests = triton_success + triton_failures
    return Measurement(
        requests=max(proxy_requests, triton_requests),
        errors=max(proxy_errors, triton_failures),
        p99_ms=None if after.p99_us is None else after.p99_us / 1000.0,
        window_seconds=after.at - before.at,
        proxy_requests=proxy_requests,
        proxy_errors=proxy_errors,
        triton_requests=triton_requests,
        triton_failures=triton_failures,
        proxy_restarted=proxy_restarted,
        triton_restarted=triton_restarted,
    )


@dataclass(frozen=True)
class Verdict:
    """The outcome of one analysis: passed unless a gate was breached."""

    passed: bool
    measurement: Measurement
    breaches: tuple[str, ...]
    """One readable sentence per breached gate."""
    notes: tuple[str, ...]
    """Why a gate was not (fully) checked, restarts seen, and similar context."""

    def as_dict(self) -> dict[str, Any]:
        """The verdict as JSON-ready values."""
        return {
            "passed": self.passed,
            "measurement": self.measurement.as_dict(),
            "breaches": list(self.breaches),
            "notes": list(self.notes),
        }


def _rate(value: float) -> str:
    # Enough digits to tell 0.005 from 0.01, without a tail of float noise.
    return f"{value:.4g}"


def _error_rate_gate(m: Measurement, gates: Gates, breaches: list[str], notes: list[str]) -> None:
    limit = gates.max_error_rate
    if limit is None:
        return
    if m.requests >= gates.min_requests:
        if m.error_rate > limit:
            breaches.append(
                f"error rate {_rate(m.error_rate)} > max {_rate(limit)} ({m.errors} of {m.requests} requests)"
            )
        return
    # Even had the window reached min_requests with every other request
    # succeeding, the rate would breach: too little traffic is no excuse.
    if gates.min_requests > 0 and m.errors / gates.min_requests > limit:
        breaches.append(
            f"{m.errors} of {m.requests} requests failed: error rate {_rate(m.errors / gates.min_requests)}"
            f" > max {_rate(limit)} even counted over the minimum of {gates.min_requests} requests"
        )
        return
    notes.append(
        f"insufficient traffic: {m.requests} requests < min {gates.min_requests}"
        f" ({m.errors} failed); error rate gate not applied"
    )


def _latency_gate(m: Measurement, gates: Gates, breaches: list[str], notes: list[str]) -> None:
    limit = gates.max_p99_ms
    if limit is None:
        return
    if m.p99_ms is None:
        notes.append("p99 unknown (Triton reported no recent request durations); latency gate not applied")
    elif m.p99_ms > limit:
        breaches.append(f"p99 {m.p99_ms:.1f} ms > max {limit:.1f} ms")


def evaluate(measurement: Measurement, gates: Gates) -> Verdict:
    """Judge ``measurement`` against ``gates``: passed unless some gate is breached.

    A gate that cannot be judged (too little traffic, no latency data) passes
    with a note saying so; the rollout decides whether to wait for more data.
    """
    breaches: list[str] = []
    notes: list[str] = []
    if gates.max_error_rate is None and gates.max_p99_ms is None:
        notes.append("no gates configured; nothing was checked")
    _error_rate_gate(measurement, gates, breaches, notes)
    _latency_gate(measurement, gates, breaches, notes)
    if measurement.proxy_restarted:
        notes.append("HAProxy restarted during the window; its counters cover only the time since")
    if measurement.triton_restarted:
        notes.append(
            "Triton's counters went backwards during the window (restart or model reload);"
            " they cover only the time since"
        )
    return Verdict(
        passed=not breaches,
        measurement=measurement,
        breaches=tuple(breaches),
        notes=tuple(notes),
    )
