"""A candidate asked its golden set on every replica, its answers judged (numpy: loaded by the first set).

The candidate is loaded on the idle pool (weight 0), so what is sent here
reaches it straight, never through the proxy, and no client request does.
A replica that answers differently (another build of a backend, a corrupted
copy) fails the rollout as surely as a wrong version.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from controlplane.artifacts.blobs import BlobStore
from controlplane.artifacts.golden_file import read_golden_blob
from controlplane.domain.golden import (
    Array,
    GoldenReport,
    GoldenSet,
    as_bytes_array,
    compare,
    is_bytes,
    merge_reports,
)
from controlplane.domain.golden_records import GoldenRecord
from controlplane.domain.models import ModelVersion
from controlplane.errors import CandidateRejected, InvalidInput, SmokeTestFailed
from controlplane.pools import Pool
from controlplane.triton.replicas import TritonControl, each_replica


def run_golden(pool: Pool, version: ModelVersion, record: GoldenRecord, blobs: BlobStore) -> dict[str, Any]:
    """Ask every replica of ``pool`` the golden set: the pass report, or CandidateRejected naming one."""
    try:
        golden = read_golden_blob(
            blobs, digest=record.digest, size=record.size, fmt=record.format, signature=version.signature
        )
    except InvalidInput as exc:
        raise CandidateRejected(
            f"the golden set of {version.model} version {version.number} cannot be used: {exc.message}",
            details={"golden": {"digest": record.digest, "error": exc.message}},
        ) from exc
    started = time.monotonic()
    reports: list[GoldenReport] = []
    replicas = each_replica(pool.triton)
    requests = 0
    for name, replica in replicas:
        try:
            actual, sent = ask(replica, version, golden)
        except SmokeTestFailed as exc:
            raise CandidateRejected(
                f"golden set failed on {name}: {exc.message}",
                details={"golden": {"replica": name, "digest": record.digest, "error": exc.message}},
            ) from exc
        requests = sent
        report = compare(golden, actual)
        if not report.passed:
            raise CandidateRejected(
                f"golden set failed on {name}: {report.describe()}",
                details={
                    "golden": {
                        **report.as_dict(),
                        "replica": name,
                        "digest": record.digest,
                        "source": record.source.value,
                        "seconds": round(time.monotonic() - started, 3),
                    }
                },
            )
        reports.append(report)
    return {
        "rows": golden.rows,
        "seconds": round(time.monotonic() - started, 3),
        "replicas": len(replicas),
        "requests_per_replica": requests,
        "digest": record.digest,
        "source": record.source.value,
        "outputs": merge_reports(reports),
    }


def ask(replica: TritonControl, version: ModelVersion, golden: GoldenSet) -> tuple[dict[str, Array], int]:
    """Send the golden inputs to ``version`` on one replica; its answers (rows axis first) and the requests.

    Rows go in batches of the model's ``max_batch_size``; a model without
    batching (0) gets one row per request, without the rows axis.
    """
    inputs = {name: _sendable(array) for name, array in golden.inputs.items()}
    outputs = list(golden.outputs)
    batch = version.signature.max_batch_size
    parts: dict[str, list[Array]] = {name: [] for name in outputs}
    requests = 0
    if batch > 0:
        for start in range(0, golden.rows, batch):
            answer = replica.infer(
                version.model,
                version.number,
                {n: a[start : start + batch] for n, a in inputs.items()},
                outputs,
            )
            requests += 1
            for name in outputs:
                parts[name].append(answer[name])
    else:
        for row in range(golden.rows):
            answer = replica.infer(
                version.model, version.number, {n: a[row] for n, a in inputs.items()}, outputs
            )
            requests += 1
            for name in outputs:
                parts[name].append(answer[name])
    return {name: _joined(name, chunks, stacked=batch == 0) for name, chunks in parts.items()}, requests


def _sendable(array: Array) -> Array:
    """Text as the object array of bytes Triton takes for BYTES; numbers as they are, contiguous."""
    return as_bytes_array(array) if is_bytes(array) else np.ascontiguousarray(array)


def _joined(name: str, chunks: list[Array], *, stacked: bool) -> Array:
    try:
        return np.stack(chunks) if stacked else np.concatenate(chunks)
    except ValueError as exc:
        raise SmokeTestFailed(f"output {name!r} came back in shapes that do not line up: {exc}") from exc
