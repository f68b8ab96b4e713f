"""Warm-up: inferences on every replica of a staged candidate before it gets traffic.

A model's first inferences after a load are often slow (lazy allocation,
graph optimisation, a Python backend importing its libraries); without a
warm-up the first client requests routed to the candidate pay for that.
Triton runs a model's own ``model_warmup`` samples at load when its
configuration declares them; the requests are sent anyway, and the report
says whether the model declared its own, so an operator can compare.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from controlplane.domain.models import ModelVersion
from controlplane.errors import CandidateRejected, ControlPlaneError
from controlplane.pools import Pool
from controlplane.triton.client import zero_inputs
from controlplane.triton.replicas import TritonControl, each_replica


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def declares_model_warmup(pool: Pool, version: ModelVersion) -> bool:
    """Whether the configuration Triton runs for the version's model declares ``model_warmup`` samples."""
    return bool(pool.triton.model_config(version.model).get("model_warmup"))


def _rejected(version: ModelVersion, replica: str, number: int, requests: int, why: str) -> CandidateRejected:
    return CandidateRejected(
        f"warm-up inference {number} of {requests} on {replica} failed for {version.model!r}"
        f" version {version.number}: {why}",
        code="warmup_failed",
        details={"warmup": {"replica": replica, "request": number, "requests": requests, "error": why}},
    )


def _warm_one(
    replica: TritonControl,
    name: str,
    version: ModelVersion,
    requests: int,
    clock: Callable[[], float],
) -> dict[str, float]:
    """``requests`` zero-input inferences on one replica; their first, median, last and total durations."""
    try:
        inputs = zero_inputs(version.signature)
    except ControlPlaneError as exc:
        raise _rejected(version, name, 1, requests, exc.message) from exc
    outputs = [spec.name for spec in version.signature.outputs]
    durations: list[float] = []
    for number in range(1, requests + 1):
        started = clock()
        try:
            replica.infer(version.model, version.number, inputs, outputs)
        except ControlPlaneError as exc:
            if exc.retryable:
                # The replica did not answer: waited out like any outage, not a verdict on the version.
                raise type(exc)(
                    f"{name}: {exc.message}", code=exc.code, details=exc.details, retryable=True
                ) from exc
            raise _rejected(version, name, number, requests, exc.message) from exc
        durations.append(clock() - started)
    return {
        "first_ms": _ms(durations[0]),
        "p50_ms": _ms(statistics.median(durations)),
        "last_ms": _ms(durations[-1]),
        # What the warm-up added to the rollout on this replica.
        "total_ms": _ms(sum(durations)),
    }


def warm_up(
    pool: Pool,
    version: ModelVersion,
    requests: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Send ``requests`` inferences to ``version`` on every replica of ``pool``; what was measured.

    Each is a batch of one with zero-filled inputs shaped from the version's
    signature (as the smoke test sends), straight to the replica. Returns
    ``{"warmup": {"requests", "replicas": {name: {"first_ms", "p50_ms",
    "last_ms", "total_ms"}}, "model_warmup"}}``. CandidateRejected (code
    ``warmup_failed``) names the replica and the request that failed;
    TritonUnavailable (retryable) when a replica does not answer.
    """
    model_warmup = declares_model_warmup(pool, version)
    replicas = (
        {
            name: _warm_one(replica, name, version, requests, clock)
            for name, replica in each_replica(pool.triton)
        }
        if requests > 0
        else {}
    )
    return {"warmup": {"requests": requests, "replicas": replicas, "model_warmup": model_warmup}}
