"""Client load through the proxy and rollout specs, shared by the rollout and fault tests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import tritonclient.grpc as grpcclient

from controlplane.domain.analysis import Gates
from controlplane.domain.rollouts import RolloutSpec, Strategy

FIXED_INPUT = np.full((1, 16), 0.25, dtype=np.float32)


@dataclass
class Load:
    """Client threads sending requests through the proxy, recording what answered when."""

    url: str
    outputs: dict[str, np.ndarray]
    threads: int = 8
    random_inputs: bool = False
    answers: list[tuple[datetime, str]] = field(default_factory=list)
    failures: list[tuple[datetime, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _loop(self, seed: int) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        rng = np.random.default_rng(seed)
        while not self._stop.is_set():
            data = rng.standard_normal((1, 16)).astype(np.float32) if self.random_inputs else FIXED_INPUT
            tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
            tensor.set_data_from_numpy(data)
            try:
                out = client.infer("mlp", [tensor]).as_numpy("OUTPUT0")
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and asserted on
                with self._lock:
                    self.failures.append((datetime.now(UTC), str(exc)))
                continue
            kind = next((k for k, v in self.outputs.items() if np.allclose(out, v, rtol=1e-5)), "other")
            with self._lock:
                self.answers.append((datetime.now(UTC), kind))
        client.close()

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._loop, args=(i,)) for i in range(self.threads)]
        for w in self._workers:
            w.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for w in self._workers:
            w.join()

    def kinds_between(self, start: datetime, end: datetime) -> set[str]:
        with self._lock:
            return {k for at, k in self.answers if start <= at <= end}


def rollout_spec(version: int, strategy: Strategy, steps: tuple[int, ...], **kw: object) -> RolloutSpec:
    return RolloutSpec(
        model="mlp",
        version=version,
        strategy=strategy,
        steps=steps,
        step_seconds=float(kw.get("step_seconds", 1.0)),  # type: ignore[arg-type]
        bake_seconds=float(kw.get("bake_seconds", 0.5)),  # type: ignore[arg-type]
        gates=kw.get("gates", Gates(max_error_rate=0.01, min_requests=10)),  # type: ignore[arg-type]
    ).validate()
