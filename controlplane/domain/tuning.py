"""Tuning a version's dynamic batching: the sweep plan, the choice of the best, its provenance. Pure rules.

A tuning run measures one version of a model under several batching
configurations (dynamic batching's ``max_queue_delay_microseconds``, a
preferred batch size, the instance count and, for the onnxruntime backend,
its session threads) on a pool without traffic, and writes the best one as a
new version of the model. Rules kept here:

* **Names.** Candidates load under ``<model>~tune``: Triton accepts the name
  (it is only a directory name), and the registry never does (``~`` is not
  allowed in a model name), so a candidate can never replace or unload a
  model the pool holds for its standby, and a folder with that name in a
  pool's repository is always a tuning run's (``tuned_model_of``).
* **Bounds.** A sweep is the product of its delays, preferred sizes,
  instance counts and backend threads, at most ``MAX_CONFIGURATIONS`` of them and
  ``MAX_SWEEP_SECONDS`` of measurement in all; anything beyond is refused
  before any pool is touched.
* **The best.** Among the swept configurations that answered every request,
  the highest throughput whose p99 meets the objective; equal throughput goes
  to the lower p99. When none meets it nothing is written
  (``objective_not_met``). The version's own configuration is measured
  first, as the baseline the figures are compared with, and competes like
  the others: when it wins, the version is already the best under the
  objective and nothing is written.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.domain.models import ModelSignature
from controlplane.errors import ControlPlaneError, InvalidInput

TUNING_SUFFIX = "~tune"

MAX_CONFIGURATIONS = 48
MAX_VALUES_PER_DIMENSION = 16
MAX_DELAY_US = 1_000_000
MAX_INSTANCE_COUNT = 8
MAX_BACKEND_THREADS = 64
THREADS_BACKEND = "onnxruntime"
"""The backend whose session threads a sweep may set (its ``intra_op_thread_count`` parameter)."""
MAX_CONCURRENCY = 256
MIN_SECONDS_PER_CONFIG = 0.5
MAX_SECONDS_PER_CONFIG = 60.0
MAX_SWEEP_SECONDS = 1800.0
MAX_P99_MS = 60_000.0
MAX_BATCH_SIZE = 2**31 - 1

DEFAULT_DELAYS_US: tuple[int, ...] = (0, 500, 2000)
NO_PREFERRED_SIZE = 0
"""In a sweep's preferred sizes: no preferred size (Triton forms the largest batch it can)."""
DEFAULT_PREFERRED_SIZES: tuple[int, ...] = (NO_PREFERRED_SIZE,)
DEFAULT_INSTANCE_COUNTS: tuple[int, ...] = (1, 2)
DEFAULT_CONCURRENCY = 16
DEFAULT_SECONDS_PER_CONFIG = 5.0
MAX_WARMUP_SECONDS = 1.0


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_tuning_request")


def tuning_model_name(model: str) -> str:
    """The name candidates of ``model`` load under in a pool's repository."""
    return f"{model}{TUNING_SUFFIX}"


def tuned_model_of(name: str) -> str | None:
    """The model a pool folder named ``name`` tunes, or None when it is not a tuning folder."""
    if not name.endswith(TUNING_SUFFIX):
        return None
    model = name.removesuffix(TUNING_SUFFIX)
    return model or None


@dataclass(frozen=True)
class BatchingConfig:
    """What a tuning run changes in a config.pbtxt.

    ``max_queue_delay_us`` None: no dynamic batching (only a version's own
    configuration can say so); ``preferred_batch_sizes`` empty: none
    preferred; ``instance_count``: the count of each instance group;
    ``backend_threads``: the onnxruntime backend's intra-op threads per
    instance (0: onnxruntime's own choice; None: as the configuration says).
    """

    max_queue_delay_us: int | None
    preferred_batch_sizes: tuple[int, ...]
    instance_count: int
    backend_threads: int | None = None

    def describe(self) -> str:
        """One short line: ``delay 500 us, preferred 8, 2 instances`` (``, 2 threads`` when set)."""
        delay = (
            "no dynamic batching"
            if self.max_queue_delay_us is None
            else f"delay {self.max_queue_delay_us} us"
        )
        preferred = ",".join(str(s) for s in self.preferred_batch_sizes) or "-"
        plural = "" if self.instance_count == 1 else "s"
        text = f"{delay}, preferred {preferred}, {self.instance_count} instance{plural}"
        if self.backend_threads == 0:
            text += ", onnxruntime's threads"
        elif self.backend_threads is not None:
            text += f", {self.backend_threads} thread{'' if self.backend_threads == 1 else 's'}"
        return text

    def as_dict(self) -> dict[str, Any]:
        """JSON form; ``backend_threads`` only when set."""
        data: dict[str, Any] = {
            "max_queue_delay_us": self.max_queue_delay_us,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
            "instance_count": self.instance_count,
        }
        if self.backend_threads is not None:
            data["backend_threads"] = self.backend_threads
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchingConfig:
        delay = data.get("max_queue_delay_us")
        return cls(
            max_queue_delay_us=None if delay is None else int(delay),
            preferred_batch_sizes=tuple(int(s) for s in data.get("preferred_batch_sizes") or ()),
            instance_count=int(data["instance_count"]),
            backend_threads=None if data.get("backend_threads") is None else int(data["backend_threads"]),
        )


def _values(name: str, values: Iterable[int], *, low: int, high: int) -> tuple[int, ...]:
    """``values`` without repeats (first one kept), each within ``low..high``; at least one."""
    unique = tuple(dict.fromkeys(values))
    if not unique:
        raise _invalid(f"{name} needs at least one value")
    if len(unique) > MAX_VALUES_PER_DIMENSION:
        raise _invalid(f"{name} has {len(unique)} values; at most {MAX_VALUES_PER_DIMENSION}")
    for value in unique:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _invalid(f"{name}: {value!r} is outside {low}..{high}")
    return unique


@dataclass(frozen=True)
class SweepSpec:
    """What a tuning run measures and against which objective."""

    p99_ms: float
    delays_us: tuple[int, ...] = DEFAULT_DELAYS_US
    preferred_batch_sizes: tuple[int, ...] = DEFAULT_PREFERRED_SIZES
    instance_counts: tuple[int, ...] = DEFAULT_INSTANCE_COUNTS
    concurrency: int = DEFAULT_CONCURRENCY
    seconds_per_config: float = DEFAULT_SECONDS_PER_CONFIG
    backend_threads: tuple[int, ...] = ()
    """Intra-op threads to sweep (onnxruntime backend only); empty: each keeps the version's own."""

    def validate(self) -> SweepSpec:
        """This spec without repeated values; InvalidInput (``invalid_tuning_request``) naming a bad one."""
        if not isinstance(self.p99_ms, int | float) or not math.isfinite(self.p99_ms):
            raise _invalid(f"p99_ms must be a number, got {self.p99_ms!r}")
        if not 0 < self.p99_ms <= MAX_P99_MS:
            raise _invalid(f"p99_ms must be above 0 and at most {MAX_P99_MS:g}, got {self.p99_ms:g}")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise _invalid(f"concurrency must be 1..{MAX_CONCURRENCY}, got {self.concurrency}")
        seconds = self.seconds_per_config
        if not math.isfinite(seconds) or not MIN_SECONDS_PER_CONFIG <= seconds <= MAX_SECONDS_PER_CONFIG:
            raise _invalid(
                f"seconds_per_config must be {MIN_SECONDS_PER_CONFIG:g}..{MAX_SECONDS_PER_CONFIG:g}, "
                f"got {seconds:g}"
            )
        return SweepSpec(
            p99_ms=float(self.p99_ms),
            delays_us=_values("delays_us", self.delays_us, low=0, high=MAX_DELAY_US),
            preferred_batch_sizes=_values(
                "preferred_batch_sizes", self.preferred_batch_sizes, low=0, high=MAX_BATCH_SIZE
            ),
            instance_counts=_values("instance_counts", self.instance_counts, low=1, high=MAX_INSTANCE_COUNT),
            concurrency=self.concurrency,
            seconds_per_config=float(seconds),
            backend_threads=(
                _values("backend_threads", self.backend_threads, low=0, high=MAX_BACKEND_THREADS)
                if self.backend_threads
                else ()
            ),
        )

    @property
    def warmup_seconds(self) -> float:
        """Load sent to each candidate before it is measured (its first batches, lazy allocations)."""
        return min(MAX_WARMUP_SECONDS, self.seconds_per_config / 2)

    def as_dict(self) -> dict[str, Any]:
        return {
            "p99_ms": self.p99_ms,
            "delays_us": list(self.delays_us),
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
            "instance_counts": list(self.instance_counts),
            "concurrency": self.concurrency,
            "seconds_per_config": self.seconds_per_config,
            "backend_threads": list(self.backend_threads),
        }


def plan(spec: SweepSpec, *, max_batch_size: int, backend: str | None = None) -> list[BatchingConfig]:
    """Every configuration ``spec`` sweeps: threads outermost, then instance counts, preferred sizes, delays.

    InvalidInput when the model cannot batch (``max_batch_size`` 0:
    ``batching_not_supported``), a preferred size is over ``max_batch_size``,
    threads are swept for a ``backend`` other than onnxruntime
    (``threads_not_supported``), or the sweep is over ``MAX_CONFIGURATIONS``
    or ``MAX_SWEEP_SECONDS``.
    """
    spec = spec.validate()
    if spec.backend_threads and backend != THREADS_BACKEND:
        raise InvalidInput(
            f"backend_threads set the {THREADS_BACKEND} backend's session threads; this model runs on "
            f"the {backend or 'unnamed'} backend",
            code="threads_not_supported",
        )
    if max_batch_size <= 0:
        raise InvalidInput(
            "the model's max_batch_size is 0: Triton cannot batch its requests, so there is nothing to tune",
            code="batching_not_supported",
        )
    too_large = [s for s in spec.preferred_batch_sizes if s > max_batch_size]
    if too_large:
        raise _invalid(
            f"preferred batch sizes {too_large} are over the model's max_batch_size {max_batch_size}"
        )
    threads: tuple[int | None, ...] = spec.backend_threads or (None,)
    count = len(spec.delays_us) * len(spec.preferred_batch_sizes) * len(spec.instance_counts) * len(threads)
    if count > MAX_CONFIGURATIONS:
        raise _invalid(f"the sweep has {count} configurations; at most {MAX_CONFIGURATIONS}")
    if count * spec.seconds_per_config > MAX_SWEEP_SECONDS:
        raise _invalid(
            f"{count} configurations of {spec.seconds_per_config:g} s measure for "
            f"{count * spec.seconds_per_config:g} s; at most {MAX_SWEEP_SECONDS:g} s"
        )
    return [
        BatchingConfig(
            max_queue_delay_us=delay,
            preferred_batch_sizes=() if size == NO_PREFERRED_SIZE else (size,),
            instance_count=instances,
            backend_threads=thread_count,
        )
        for thread_count, instances, size, delay in itertools.product(
            threads, spec.instance_counts, spec.preferred_batch_sizes, spec.delays_us
        )
    ]


@dataclass(frozen=True)
class LoadTarget:
    """One model version on one Triton gRPC endpoint (``host:port``)."""

    url: str
    model: str
    version: int
    signature: ModelSignature


@dataclass(frozen=True)
class LoadShape:
    """How much load: requests in flight, seconds measured, warm-up seconds before them, per-call timeout."""

    concurrency: int
    seconds: float
    warmup_seconds: float = 0.0
    timeout: float = 10.0


@dataclass(frozen=True)
class Measurement:
    """What the load generator saw for one configuration: ``requests`` answered, ``errors`` failed."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    first_error: str | None = None

    @property
    def throughput_rps(self) -> float:
        """Answered requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.throughput_rps, 2),
            "p50_ms": None if self.p50_ms is None else round(self.p50_ms, 3),
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3),
            "first_error": self.first_error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        return cls(
            requests=int(data["requests"]),
            errors=int(data["errors"]),
            seconds=float(data["seconds"]),
            p50_ms=None if data.get("p50_ms") is None else float(data["p50_ms"]),
            p99_ms=None if data.get("p99_ms") is None else float(data["p99_ms"]),
            first_error=data.get("first_error"),
        )


@dataclass(frozen=True)
class Trial:
    """One configuration and what it gave: a measurement, or why it could not be measured (``failure``).

    ``index`` 0 is the version's own configuration (the baseline); 1.. the
    swept ones in plan order.
    """

    index: int
    config: BatchingConfig
    measurement: Measurement | None = None
    failure: str | None = None

    @property
    def baseline(self) -> bool:
        return self.index == 0

    def meets(self, p99_ms: float) -> bool:
        """Answered every request (at least one) with a p99 within ``p99_ms``."""
        m = self.measurement
        return (
            self.failure is None
            and m is not None
            and m.errors == 0
            and m.requests > 0
            and m.p99_ms is not None
            and m.p99_ms <= p99_ms
        )

    def as_dict(self, p99_ms: float | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "index": self.index,
            "baseline": self.baseline,
            "config": self.config.as_dict(),
            "description": self.config.describe(),
            "measurement": None if self.measurement is None else self.measurement.as_dict(),
            "failure": self.failure,
        }
        if p99_ms is not None:
            data["meets_objective"] = self.meets(p99_ms)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trial:
        measured = data.get("measurement")
        return cls(
            index=int(data["index"]),
            config=BatchingConfig.from_dict(data["config"]),
            measurement=None if measured is None else Measurement.from_dict(measured),
            failure=data.get("failure"),
        )


def choose_best(trials: Sequence[Trial], *, p99_ms: float) -> Trial:
    """The swept trial with the highest throughput among those meeting ``p99_ms``; ties: the lower p99.

    The baseline (the version's own configuration) competes too. ControlPlaneError
    ``objective_not_met`` (details: the lowest p99 seen) when no trial meets the objective.
    """
    candidates = list(trials)
    eligible = [t for t in candidates if t.meets(p99_ms)]
    if eligible:
        return max(eligible, key=lambda t: (_throughput(t), -_p99(t), -t.index))
    measured = [t for t in candidates if t.measurement is not None and t.measurement.p99_ms is not None]
    closest = min(measured, key=_p99, default=None)
    message = f"no configuration met the objective p99 <= {p99_ms:g} ms"
    if closest is not None:
        message += f"; the lowest p99 was {_p99(closest):.2f} ms ({closest.config.describe()})"
    failing = sum(1 for t in candidates if t.failure is not None or (t.measurement and t.measurement.errors))
    if failing:
        message += f"; {failing} configuration(s) failed requests or did not load"
    raise ControlPlaneError(
        message + "; nothing was written",
        code="objective_not_met",
        details={"objective_p99_ms": p99_ms, "closest": None if closest is None else closest.as_dict()},
        retryable=False,
    )


def _throughput(trial: Trial) -> float:
    return trial.measurement.throughput_rps if trial.measurement is not None else 0.0


def _p99(trial: Trial) -> float:
    m = trial.measurement
    return m.p99_ms if m is not None and m.p99_ms is not None else math.inf


@dataclass(frozen=True)
class Provenance:
    """Where a tuned version comes from, as the labels it is pushed with."""

    tuned_from: int
    run_id: str
    best: Trial
    baseline: Trial | None
    spec: SweepSpec
    extra: Mapping[str, str] = field(default_factory=dict)

    def labels(self) -> dict[str, str]:
        """``tuning.*`` labels: source version, configuration, its figures, the objective, the baseline's."""
        labels = {
            "tuning.tuned_from": str(self.tuned_from),
            "tuning.run": self.run_id,
            "tuning.config": _compact(self.best.config.as_dict()),
            **_figures("tuning.", self.best.measurement),
            "tuning.objective_p99_ms": f"{self.spec.p99_ms:g}",
            "tuning.load": (
                f"{self.spec.concurrency} concurrent batch-1 requests, "
                f"{self.spec.seconds_per_config:g} s per configuration"
            ),
        }
        if self.baseline is not None:
            labels["tuning.default_config"] = _compact(self.baseline.config.as_dict())
            labels.update(_figures("tuning.default_", self.baseline.measurement))
        labels.update(self.extra)
        return labels


def _figures(prefix: str, m: Measurement | None) -> dict[str, str]:
    if m is None:
        return {f"{prefix}throughput_rps": "n/a", f"{prefix}p99_ms": "n/a"}
    return {
        f"{prefix}throughput_rps": f"{m.throughput_rps:.1f}",
        f"{prefix}p99_ms": "n/a" if m.p99_ms is None else f"{m.p99_ms:.3f}",
    }


def _compact(data: Mapping[str, Any]) -> str:
    return json.dumps(dict(data), separators=(",", ":"), sort_keys=True)
