"""A closed-loop load generator speaking Triton's gRPC inference protocol.

``concurrency`` requests are in flight at all times for ``seconds``: each of
that many coroutines sends a request, waits for its answer and sends the
next, over one ``grpc.aio`` channel with the raw ``GRPCInferenceService``
stub (no tritonclient objects per request, so the client costs as little
as a Python client can). Requests carry batch size 1 with random inputs of
the model's declared data types and dims (a variable dim is 1), prepared
before the clock starts. A latency is measured from the call to its answer;
a request that fails is counted as an error, never as a latency.

Used by the tuner against one Triton replica of the idle pool (never
through the proxy); callers run it in a thread of their own (it runs its
own event loop with ``asyncio.run``). ``stop`` ends it early: requests
already in flight finish, none is sent after it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import serialize_byte_tensor, triton_to_np_dtype

from controlplane.domain.models import TensorSpec
from controlplane.domain.tuning import LoadShape, LoadTarget, Measurement
from controlplane.errors import InvalidInput

PREPARED_REQUESTS = 16
"""Distinct random requests cycled through (inputs vary without costing time on the clock)."""
ERROR_PAUSE_SECONDS = 0.01
"""A coroutine whose request failed waits this long, so a refusing server is not hammered in a tight loop."""
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None


def _random_tensor(spec: TensorSpec, batched: bool, rng: np.random.Generator) -> tuple[list[int], bytes]:
    """Shape and raw bytes of one random input of batch size 1 (a variable dim counts 1)."""
    shape = [1 if d == -1 else d for d in spec.dims]
    if batched:
        shape = [1, *shape]
    if spec.data_type == "BYTES":
        words = rng.integers(0, 1 << 30, size=int(np.prod(shape)))
        array = np.array([str(w).encode() for w in words], dtype=np.object_).reshape(shape)
        serialized = serialize_byte_tensor(array)
        return shape, serialized.item() if serialized.size > 0 else b""
    dtype = triton_to_np_dtype(spec.data_type)
    if dtype is None:
        raise InvalidInput(
            f"input {spec.name!r} has a data type ({spec.data_type}) the load generator cannot fill",
            code="batching_not_supported",
        )
    if spec.data_type == "BOOL":
        values = rng.integers(0, 2, size=shape).astype(bool)
    elif np.issubdtype(np.dtype(dtype), np.integer):
        values = rng.integers(0, 100, size=shape).astype(dtype)
    else:
        values = rng.standard_normal(size=shape).astype(dtype)
    return shape, values.tobytes()


def prepare_requests(target: LoadTarget, *, count: int = PREPARED_REQUESTS, seed: int = 0) -> list[object]:
    """``count`` ready ``ModelInferRequest`` messages of batch size 1 with random inputs."""
    rng = np.random.default_rng(seed)
    batched = target.signature.max_batch_size > 0
    requests: list[object] = []
    for _ in range(count):
        request = service_pb2.ModelInferRequest(model_name=target.model, model_version=str(target.version))
        for spec in target.signature.inputs:
            shape, raw = _random_tensor(spec, batched, rng)
            tensor = request.inputs.add()
            tensor.name = spec.name
            tensor.datatype = spec.data_type
            tensor.shape.extend(shape)
            request.raw_input_contents.append(raw)
        requests.append(request)
    return requests


async def _worker(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    requests: list[object],
    offset: int,
    deadline: float,
    tally: _Tally,
    stop: threading.Event,
    timeout: float,
) -> None:
    sent = offset
    while time.perf_counter() < deadline and not stop.is_set():
        request = requests[sent % len(requests)]
        sent += 1
        started = time.perf_counter()
        try:
            await stub.ModelInfer(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            tally.errors += 1
            if tally.first_error is None:
                tally.first_error = f"{exc.code().name}: {exc.details()}"
            await asyncio.sleep(ERROR_PAUSE_SECONDS)
            continue
        tally.latencies.append(time.perf_counter() - started)


async def _phase(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    requests: list[object],
    shape: LoadShape,
    seconds: float,
    stop: threading.Event,
) -> tuple[_Tally, float]:
    tally = _Tally()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(_worker(stub, requests, i, deadline, tally, stop, shape.timeout) for i in range(shape.concurrency))
    )
    return tally, time.perf_counter() - started


async def run_load(
    target: LoadTarget, shape: LoadShape, *, stop: threading.Event, seed: int = 0
) -> Measurement:
    """Warm up, then measure; see the module docstring."""
    requests = prepare_requests(target, seed=seed)
    options = [
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ]
    async with grpc.aio.insecure_channel(target.url, options=options) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        if shape.warmup_seconds > 0:
            await _phase(stub, requests, shape, shape.warmup_seconds, stop)
        tally, elapsed = await _phase(stub, requests, shape, shape.seconds, stop)
    return summarize(tally.latencies, errors=tally.errors, seconds=elapsed, first_error=tally.first_error)


def summarize(
    latencies_seconds: list[float], *, errors: int, seconds: float, first_error: str | None = None
) -> Measurement:
    """A measurement from answered requests' latencies (seconds) and the count of failed ones."""
    p50: float | None = None
    p99: float | None = None
    if latencies_seconds:
        ms = np.asarray(latencies_seconds) * 1000.0
        p50, p99 = (float(v) for v in np.percentile(ms, [50, 99]))
    return Measurement(
        requests=len(latencies_seconds),
        errors=errors,
        seconds=seconds,
        p50_ms=p50,
        p99_ms=p99,
        first_error=first_error,
    )


def measure(
    target: LoadTarget, shape: LoadShape, *, stop: threading.Event | None = None, seed: int = 0
) -> Measurement:
    """Run the load in an event loop of its own (call it from a worker thread): the measured figures."""
    return asyncio.run(run_load(target, shape, stop=stop or threading.Event(), seed=seed))
