"""Triton's Prometheus metrics: scrape ``/metrics`` and sum what canary analysis needs.

What the counters mean, as measured on tritonserver 2.51 (the fixtures in
``tests/unit/fixtures/triton_metrics_*.txt`` record it):

* ``nv_inference_request_success{model,version}`` counts every request the
  backend answered, including a Python-backend response that carries an error.
* ``nv_inference_request_failure{model,reason,version}`` (reasons REJECTED,
  CANCELED, BACKEND, OTHER) counted only exceptions escaping a Python
  backend's ``execute`` (reason BACKEND). Requests Triton refuses before the
  model runs (wrong shape, input name, dtype, batch size, unknown version)
  appear in neither counter.
* ``nv_inference_request_summary_us{quantile}`` (with ``summary_latencies=true``)
  is a summary over a recent sliding window; Triton prints ``Nan`` for a
  quantile when the window holds no request.

Series exist only for loaded models and start from zero on every load.

A pool of several replicas is several metrics endpoints: ``scrape_replicas``
reads each and ``combine_counters`` adds them up (see there for the p99).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from controlplane.errors import TritonUnavailable

SUCCESS_FAMILY = "nv_inference_request_success"
FAILURE_FAMILY = "nv_inference_request_failure"
REQUEST_SUMMARY_FAMILY = "nv_inference_request_summary_us"
P99_QUANTILE = 0.99


@dataclass(frozen=True)
class TritonCounters:
    """Triton's counters for a set of models, summed over their versions, at one scrape."""

    success: int
    failure: int
    """All failure reasons together."""
    p99_us: float | None
    """Largest p99 request duration among the models' versions; None if none reported one."""
    models_seen: frozenset[str]
    """Models of interest that had at least one series (loaded); a missing one contributes zeros."""


def _check_models(models: Collection[str]) -> frozenset[str]:
    # A bare string is a Collection[str] of its characters: "mlp" would
    # silently select models "m", "l" and "p".
    if isinstance(models, str):
        raise TypeError(f"models must be a collection of model names, not the string {models!r}")
    wanted = frozenset(models)
    if not wanted:
        raise ValueError("models must name at least one model")
    return wanted


def _counter_samples(samples: Iterable[Sample], family: str) -> Iterable[Sample]:
    # prometheus_client renames counter samples to NAME_total (0.26 does, even
    # for Triton's NAME without the suffix) and may add NAME_created; accept
    # either spelling of the value and skip the rest.
    names = (family, family + "_total")
    return (s for s in samples if s.name in names)


def _is_p99(sample: Sample) -> bool:
    try:
        return math.isclose(float(sample.labels.get("quantile", "nan")), P99_QUANTILE)
    except ValueError:
        return False


def parse_triton_metrics(text: str, models: Collection[str]) -> TritonCounters:
    """Sum Triton's request counters and take the worst p99 over ``models`` (all versions).

    ``text`` is the body of Triton's ``/metrics``. Failures of every reason
    are added up. A p99 that is absent or NaN (no recent request) is ignored;
    ``p99_us`` is None when no model has one. Raises ValueError if ``text`` is
    not Prometheus text format or ``models`` is empty.
    """
    wanted = _check_models(models)
    success = 0
    failure = 0
    p99: float | None = None
    seen: set[str] = set()
    for family in text_string_to_metric_families(text):
        samples = [s for s in family.samples if s.labels.get("model") in wanted]
        if family.name == SUCCESS_FAMILY:
            for sample in _counter_samples(samples, family.name):
                success += int(sample.value)
                seen.add(sample.labels["model"])
        elif family.name == FAILURE_FAMILY:
            for sample in _counter_samples(samples, family.name):
                failure += int(sample.value)
                seen.add(sample.labels["model"])
        elif family.name == REQUEST_SUMMARY_FAMILY:
            for sample in samples:
                if sample.name != family.name or not _is_p99(sample) or math.isnan(sample.value):
                    continue
                p99 = sample.value if p99 is None else max(p99, sample.value)
    return TritonCounters(success=success, failure=failure, p99_us=p99, models_seen=frozenset(seen))


class TritonMetricsClient:
    """Scrapes one Triton's metrics port (``http://host:port``, ``/metrics`` is appended).

    Holds one HTTP connection pool; call :meth:`close` (or use it as a context
    manager) when done.
    """

    def __init__(
        self, url: str, timeout: float = 2.0, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        base = url.rstrip("/")
        self.url = base if base.endswith("/metrics") else base + "/metrics"
        self.timeout = timeout
        self._client = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> TritonMetricsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def scrape(self, models: Collection[str]) -> TritonCounters:
        """GET the metrics and return the counters of ``models``.

        Raises TritonUnavailable when Triton does not answer, answers with a
        non-200 status (metrics disabled, wrong port) or with something that is
        not Prometheus text; ValueError/TypeError for bad ``models``.
        """
        wanted = _check_models(models)
        try:
            response = self._client.get(self.url)
        except httpx.HTTPError as exc:
            raise TritonUnavailable(
                f"Triton metrics at {self.url} did not answer: {type(exc).__name__}: {exc}",
                details={"url": self.url},
            ) from exc
        if response.status_code != httpx.codes.OK:
            raise TritonUnavailable(
                f"Triton metrics at {self.url} answered HTTP {response.status_code}",
                details={"url": self.url, "status": response.status_code, "body": response.text[:200]},
            )
        try:
            return parse_triton_metrics(response.text, wanted)
        except ValueError as exc:
            raise TritonUnavailable(
                f"Triton metrics at {self.url} are not Prometheus text: {exc}",
                details={"url": self.url, "body": response.text[:200]},
            ) from exc


def combine_counters(parts: Sequence[TritonCounters]) -> TritonCounters:
    """One pool's counters from its replicas' scrapes: counts added, the largest p99.

    Counters add up because every request ran on exactly one replica. The
    p99 cannot be added or averaged: each replica's summary is a quantile of
    its own recent requests, and the pool's true p99 is not a function of
    those quantiles alone. The largest one is an upper bound on it (if no
    replica has more than 1% of its requests above M, the pool has no more
    than 1% above M either), equal to it when the replicas are alike, and a
    latency gate is a ceiling: the bound can only fail a pool that one slow
    replica makes slow for the clients it serves, never pass one.

    A restart of one replica resets only its part: the sums usually drop and
    the analysis takes the window as following a restart, counting every
    replica's cumulative total in it (Triton's side of that one window
    overcounts; HAProxy's counters are unaffected).
    """
    if not parts:
        raise ValueError("no replica scrape to combine")
    p99s = [c.p99_us for c in parts if c.p99_us is not None]
    return TritonCounters(
        success=sum(c.success for c in parts),
        failure=sum(c.failure for c in parts),
        p99_us=max(p99s) if p99s else None,
        models_seen=frozenset().union(*(c.models_seen for c in parts)),
    )


def scrape_replicas(clients: Sequence[TritonMetricsClient], models: Collection[str]) -> TritonCounters:
    """Scrape every replica of a pool and combine them; TritonUnavailable if any one does not answer.

    A replica left out would make the pool's sums drop, which the analysis
    takes for a restart: so one silent replica fails the whole reading.
    """
    return combine_counters([client.scrape(models) for client in clients])
