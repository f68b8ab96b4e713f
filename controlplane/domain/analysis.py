"""Canary analysis: is the candidate pool healthy between two rollout steps?

Pure rules over numbers: no I/O. The adapters read two kinds of cumulative
counters for one pool, HAProxy's (per server: requests, errors the client saw)
and Triton's (per model: success, failure) plus Triton's recent p99 latency,
into a :class:`PoolSample`. :func:`measure` turns two samples into what
happened in between and :func:`evaluate` judges that against :class:`Gates`.

No evidence, no pass: a window's gates count only once the candidate served
``Gates.min_requests`` in it. With fewer the verdict waits (neither passed nor
breached) and :func:`next_move` says what the step does: hold and measure again
over a longer window (same start, see :func:`next_look`), and once it has held
``Gates.max_hold_seconds``, what ``Gates.on_no_data`` says. Errors already seen
still breach at once when they would even over ``min_requests`` requests.

Absolute gates judge the candidate alone. Relative gates compare it with the
baseline (the pool serving production) measured over the same window: a
candidate worse than production by more than the tolerated margin fails even
under the absolute thresholds. A baseline with too little traffic, or without
a p99, is no yardstick: that relative gate is skipped with a note.

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
    candidate served ``min_requests`` in the window, whatever gates are set
    (with none, that traffic is all a step asks for; 0 asks for nothing). With
    fewer, the step holds and measures again, up to ``max_hold_seconds``; then
    ``on_no_data`` decides. Errors already seen fail the step at once when they
    would breach even over ``min_requests`` requests.
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
    """The outcome of one analysis: passed once the gates counted and none was breached."""

    passed: bool
    """The candidate had the evidence (``evidence``) and breached no gate."""
    measurement: Measurement
    """The candidate's window."""
    breaches: tuple[str, ...]
    """One readable sentence per breached gate."""
    notes: tuple[str, ...]
    """Why a gate was not (fully) checked, restarts seen, and similar context."""
    baseline: Measurement | None = None
    """The baseline pool's window, the same one as the candidate's, when relative gates asked for it."""
    evidence: bool = True
    """The candidate served ``Gates.min_requests`` in the window, so its gates count."""

    @property
    def waiting(self) -> bool:
        """Nothing breached, but too little traffic to pass yet (the step holds)."""
        return not self.breaches and not self.evidence

    def as_dict(self) -> dict[str, Any]:
        """The verdict as JSON-ready values."""
        return {
            "passed": self.passed,
            "evidence": self.evidence,
            "measurement": self.measurement.as_dict(),
            "baseline": None if self.baseline is None else self.baseline.as_dict(),
            "breaches": list(self.breaches),
            "notes": list(self.notes),
        }


def _rate(value: float) -> str:
    # Enough digits to tell 0.005 from 0.01, without a tail of float noise.
    return f"{value:.4g}"


def _error_rate_gate(m: Measurement, gates: Gates, evidence: bool, breaches: list[str]) -> None:
    limit = gates.max_error_rate
    if limit is None:
        return
    if evidence:
        if m.error_rate > limit:
            breaches.append(
                f"error rate {_rate(m.error_rate)} > max {_rate(limit)} ({m.errors} of {m.requests} requests)"
            )
        return
    # Even had the window reached min_requests with every other request
    # succeeding, the rate would breach: too little traffic is no excuse.
    if m.errors / gates.min_requests > limit:
        breaches.append(
            f"{m.errors} of {m.requests} requests failed: error rate {_rate(m.errors / gates.min_requests)}"
            f" > max {_rate(limit)} even counted over the minimum of {gates.min_requests} requests"
        )


def _latency_gate(
    m: Measurement, gates: Gates, evidence: bool, breaches: list[str], notes: list[str]
) -> None:
    limit = gates.max_p99_ms
    if limit is None or not evidence:
        # A p99 over a handful of requests is their slowest one: the first after a load, say.
        return
    if m.p99_ms is None:
        notes.append("p99 unknown (Triton reported no recent request durations); latency gate not applied")
    elif m.p99_ms > limit:
        breaches.append(f"p99 {m.p99_ms:.1f} ms > max {limit:.1f} ms")


def _baseline_usable(baseline: Measurement | None, gates: Gates, gate: str, notes: list[str]) -> bool:
    """Whether the baseline window can stand for production's behaviour; a note says why not."""
    if baseline is None:
        notes.append(f"no baseline measured; {gate} gate not applied")
        return False
    # A rate over zero requests is no rate, whatever min_requests says.
    needed = max(gates.min_requests, 1)
    if baseline.requests < needed:
        notes.append(
            f"baseline has too little traffic: {baseline.requests} requests < min {needed};"
            f" {gate} gate not applied"
        )
        return False
    return True


def _error_increase_gate(
    m: Measurement,
    baseline: Measurement | None,
    gates: Gates,
    evidence: bool,
    breaches: list[str],
    notes: list[str],
) -> None:
    limit = gates.max_error_rate_increase
    if limit is None or not _baseline_usable(baseline, gates, "error rate increase", notes):
        return
    assert baseline is not None  # _baseline_usable said so
    against = f"baseline {_rate(baseline.error_rate)}: {baseline.errors} of {baseline.requests} requests"
    if evidence:
        increase = m.error_rate - baseline.error_rate
        if increase > limit:
            breaches.append(
                f"error rate increase {_rate(increase)} > max {_rate(limit)} (candidate"
                f" {_rate(m.error_rate)}: {m.errors} of {m.requests} requests; {against})"
            )
        return
    # As for the absolute gate: errors already seen can breach before the evidence is complete.
    floor = m.errors / gates.min_requests
    if floor - baseline.error_rate > limit:
        breaches.append(
            f"{m.errors} of {m.requests} requests failed: error rate {_rate(floor)} even counted over the"
            f" minimum of {gates.min_requests} requests, an increase of {_rate(floor - baseline.error_rate)}"
            f" > max {_rate(limit)} ({against})"
        )


def _p99_ratio_gate(
    m: Measurement,
    baseline: Measurement | None,
    gates: Gates,
    evidence: bool,
    breaches: list[str],
    notes: list[str],
) -> None:
    limit = gates.max_p99_ratio
    if limit is None or not evidence or not _baseline_usable(baseline, gates, "p99 ratio", notes):
        return
    assert baseline is not None  # _baseline_usable said so
    if m.p99_ms is None:
        notes.append(
            "candidate p99 unknown (Triton reported no recent request durations); p99 ratio gate not applied"
        )
        return
    if baseline.p99_ms is None or baseline.p99_ms <= 0:
        notes.append(
            "baseline p99 unknown (Triton reported no recent request durations); p99 ratio gate not applied"
        )
        return
    ratio = m.p99_ms / baseline.p99_ms
    if ratio > limit:
        breaches.append(
            f"p99 ratio {ratio:.2f} > max {limit:.2f} (candidate {m.p99_ms:.1f} ms,"
            f" baseline {baseline.p99_ms:.1f} ms)"
        )


def _restart_notes(m: Measurement, whose: str, notes: list[str]) -> None:
    if m.proxy_restarted:
        notes.append(f"HAProxy restarted during the {whose} window; its counters cover only the time since")
    if m.triton_restarted:
        notes.append(
            f"Triton's counters went backwards during the {whose} window (restart or model reload);"
            " they cover only the time since"
        )


def evaluate(candidate: Measurement, gates: Gates, *, baseline: Measurement | None = None) -> Verdict:
    """Judge the candidate's window against ``gates`` (and the baseline's same window, for relative gates).

    The gates count only once the candidate served ``gates.min_requests`` in
    the window (``Verdict.evidence``); with fewer the verdict neither passes
    nor breaches (``Verdict.waiting``), except that errors already seen
    breach an error gate when they would even over ``min_requests`` requests.
    A relative gate is not applied when the baseline served too little (or,
    for the p99 ratio, either side has no p99); a note says why.
    """
    breaches: list[str] = []
    notes: list[str] = []
    evidence = candidate.requests >= gates.min_requests
    if not gates.judges_traffic:
        notes.append(f"no gates configured; only the traffic (min {gates.min_requests} requests) was checked")
    if not evidence:
        notes.append(
            f"insufficient traffic: {candidate.requests} requests < min {gates.min_requests}"
            f" ({candidate.errors} failed); the gates wait for more"
        )
    _error_rate_gate(candidate, gates, evidence, breaches)
    _latency_gate(candidate, gates, evidence, breaches, notes)
    _error_increase_gate(candidate, baseline, gates, evidence, breaches, notes)
    _p99_ratio_gate(candidate, baseline, gates, evidence, breaches, notes)
    _restart_notes(candidate, "candidate's", notes)
    if baseline is not None:
        _restart_notes(baseline, "baseline's", notes)
    return Verdict(
        passed=evidence and not breaches,
        measurement=candidate,
        breaches=tuple(breaches),
        notes=tuple(notes),
        baseline=baseline,
        evidence=evidence,
    )


class StepMove(enum.StrEnum):
    """What a rollout step does after one look at its analysis window."""

    PASS = "pass"
    """The gates counted and held: on to the next step."""
    BREACH = "breach"
    """A gate was breached: roll back."""
    HOLD = "hold"
    """Too little evidence yet: keep the weights and look again over a longer window."""
    ABORT = "abort"
    """Held ``max_hold_seconds`` without evidence and ``on_no_data`` is abort: roll back."""
    PROMOTE = "promote"
    """Held ``max_hold_seconds`` without evidence and ``on_no_data`` is promote: on without it."""


def next_move(verdict: Verdict, gates: Gates, *, held_seconds: float) -> StepMove:
    """The step's move after ``verdict``, having held ``held_seconds`` beyond its first window."""
    if verdict.breaches:
        return StepMove.BREACH
    if verdict.evidence:
        return StepMove.PASS
    if gates.on_no_data is OnNoData.HOLD or held_seconds < gates.max_hold_seconds:
        return StepMove.HOLD
    return StepMove.ABORT if gates.on_no_data is OnNoData.ABORT else StepMove.PROMOTE


def next_look(gates: Gates, *, step_seconds: float, held_seconds: float) -> float:
    """Seconds a holding step waits before it measures again: a step, cut at ``max_hold_seconds``."""
    left = gates.max_hold_seconds - held_seconds
    if left <= 0:
        # Only on_no_data=hold holds past the limit: a step at a time, until traffic or an operator.
        return step_seconds
    return min(step_seconds, left)
