"""Canary judgment on evidence and warm-up before traffic, on two real Triton pools behind a real HAProxy.

Version 1 of ``mlp`` (the ONNX MLP) serves; the candidates are ONNX and
Python-backend versions with the same interface. Clients are tritonclient
gRPC clients on the proxy port; the engine is the one ``controlplane up``
wires (its candidate checks warm the candidate up).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from rollout_load import FIXED_INPUT, Load, rollout_spec
from triton_helpers import load_examples_module
from tritonclient.grpc import model_config_pb2 as mc

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.analysis import Gates
from controlplane.domain.models import VersionMetadata, VersionState
from controlplane.domain.policy import ModelPolicy
from controlplane.domain.rollouts import Rollout, RolloutState, Strategy
from controlplane.registry import store
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import Services, local_services
from controlplane.settings import Settings

pytestmark = pytest.mark.integration

examples = load_examples_module()

COLD_EXECUTIONS = 5
"""Executions per model instance that are slow in the cold-start model."""
COLD_SECONDS = 0.5
# Long enough that a scheduling hiccup on a busy machine stays well inside the 1.2x margin.
STEADY_SECONDS = 0.1
FIRST_REQUESTS = 10
"""How many client requests after the switch count as "the first"."""

PYTHON_MODEL = '''"""The MLP's interface in Python: OUTPUT0 = FACTOR * sum(INPUT0), after a delay."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils

COLD_EXECUTIONS = {cold_executions}
COLD_SECONDS = {cold_seconds}
STEADY_SECONDS = {steady_seconds}
FACTOR = {factor}


class TritonPythonModel:
    def initialize(self, args):
        self.executions = 0

    def execute(self, requests):
        # Slow for this instance's first executions, as a model that builds its caches lazily.
        self.executions += 1
        time.sleep(COLD_SECONDS if self.executions <= COLD_EXECUTIONS else STEADY_SECONDS)
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = np.repeat(FACTOR * data.sum(axis=-1, keepdims=True), 4, axis=-1).astype(np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", out)]))
        return responses
'''


def build_python_mlp(
    out_dir: Path,
    *,
    factor: float,
    steady_seconds: float,
    cold_executions: int = 0,
    cold_seconds: float = 0.0,
) -> Path:
    """A Python-backend ``mlp`` folder (one CPU instance) answering ``factor * sum(INPUT0)`` after a delay."""
    config = mc.ModelConfig(
        name="mlp",
        backend="python",
        max_batch_size=examples.MAX_BATCH_SIZE,
        input=[mc.ModelInput(name="INPUT0", data_type=mc.TYPE_FP32, dims=[16])],
        output=[mc.ModelOutput(name="OUTPUT0", data_type=mc.TYPE_FP32, dims=[4])],
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)],
    )
    folder = out_dir / "mlp"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config), encoding="utf-8")
    code = PYTHON_MODEL.format(
        cold_executions=cold_executions,
        cold_seconds=cold_seconds,
        steady_seconds=steady_seconds,
        factor=factor,
    )
    (folder / "1" / "model.py").write_text(code, encoding="utf-8")
    return folder


def python_output(factor: float) -> np.ndarray:
    return np.repeat(factor * FIXED_INPUT.sum(axis=-1, keepdims=True), 4, axis=-1).astype(np.float32)


@dataclass
class Env:
    services: Services
    grpc_url: str
    outputs: dict[str, np.ndarray]
    versions: dict[str, int]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("canary-evidence")
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(state_dir=root / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port)
    with local_services(settings, pool_names=("blue", "green")) as (_stack, services):
        folders = {
            "onnx-v1": examples.build_mlp(root / "onnx-v1", seed=1),
            "onnx-v2": examples.build_mlp(root / "onnx-v2", seed=2),
            # 20 ms a request: far under any absolute latency gate, far above the ONNX baseline.
            "slow": build_python_mlp(root / "slow", factor=3.0, steady_seconds=0.02),
            "cold-a": build_python_mlp(
                root / "cold-a",
                factor=1.0,
                steady_seconds=STEADY_SECONDS,
                cold_executions=COLD_EXECUTIONS,
                cold_seconds=COLD_SECONDS,
            ),
            "cold-b": build_python_mlp(
                root / "cold-b",
                factor=2.0,
                steady_seconds=STEADY_SECONDS,
                cold_executions=COLD_EXECUTIONS,
                cold_seconds=COLD_SECONDS,
            ),
        }
        # Folder code runs only with the model's explicit consent.
        services.signing.set_policy(
            "mlp", ModelPolicy(allow_code_backends=True, code_backends_require_signature=False), actor="tests"
        )
        versions: dict[str, int] = {}
        for name, folder in folders.items():
            archive = pack_directory(folder, root / f"{name}.tar.gz")
            version, _created = services.registry.push(
                model="mlp", archive=archive, metadata=VersionMetadata()
            )
            versions[name] = version.number
        services.deployer.deploy("mlp", versions["onnx-v1"])
        outputs = {
            "v1": examples.reference_outputs(folders["onnx-v1"], {"INPUT0": FIXED_INPUT})["OUTPUT0"],
            "cold-a": python_output(1.0),
            "cold-b": python_output(2.0),
        }
        yield Env(services, f"127.0.0.1:{grpc_port}", outputs, versions)


def _analysis_events(rollout: Rollout) -> list[dict]:
    return [dict(e.measurements) for e in rollout.events if "requests" in e.measurements]


def _serving(env: Env) -> int:
    with env.services.db.transaction() as session:
        return store.get_model(session, "mlp").deployments[0].version


def test_a_canary_without_client_traffic_holds_then_rolls_back_saying_why(env: Env) -> None:
    engine = env.services.engine
    live_before = engine.router.weights()
    gates = Gates(max_error_rate=0.01, min_requests=20, max_hold_seconds=3.0)
    started = time.monotonic()

    rollout = engine.start(
        rollout_spec(env.versions["onnx-v2"], Strategy.CANARY, (25, 100), step_seconds=1.0, gates=gates),
        actor="test",
    )
    done = engine.wait(rollout.id, 120)
    took = time.monotonic() - started

    assert done.state is RolloutState.ROLLED_BACK, done.reason
    assert re.fullmatch(
        rf"rolled back: no evidence: 0 requests < min 20 on {done.target_pool}"
        r" after holding [34] s at step 1/2; set on_no_data=promote to go on without traffic",
        done.reason,
    ), done.reason
    windows = _analysis_events(done)
    holds = [e.reason for e in done.events if e.reason.startswith("holding: ")]
    assert holds[0] == "holding: 0 of 20 requests at step 1/2, 0 s held of max 3 s"
    assert len(holds) >= 3
    assert all(w["requests"] == 0 and w["passed"] is False for w in windows)
    # The window kept its start while it held: the last one spans the whole step and its hold.
    assert windows[-1]["window_seconds"] >= 4.0
    assert engine.router.weights() == live_before
    assert _serving(env) == env.versions["onnx-v1"]
    with env.services.db.transaction() as session:
        assert store.get_version(session, "mlp", env.versions["onnx-v2"]).state is not VersionState.FAILED
    print(
        f"\nno traffic: held and rolled back after {took:.1f} s; {len(holds)} holding events; {done.reason}"
    )


@pytest.mark.exclusive
def test_a_canary_slower_than_the_baseline_but_under_the_absolute_gate_is_rolled_back_by_the_ratio(
    env: Env,
) -> None:
    engine = env.services.engine
    live_before = engine.router.weights()
    gates = Gates(max_error_rate=0.05, max_p99_ms=2000.0, max_p99_ratio=3.0, min_requests=20)
    with Load(env.grpc_url, env.outputs, threads=8) as load:
        rollout = engine.start(
            rollout_spec(env.versions["slow"], Strategy.CANARY, (50, 100), step_seconds=3.0, gates=gates),
            actor="test",
        )
        done = engine.wait(rollout.id, 120)
        time.sleep(0.5)

    assert done.state is RolloutState.ROLLED_BACK, done.reason
    assert done.reason.startswith("rolled back: gate breached: p99 ratio "), done.reason
    (window,) = _analysis_events(done)
    assert window["breaches"] and all(b.startswith("p99 ratio ") for b in window["breaches"])
    assert window["requests"] >= 20
    assert window["baseline"]["requests"] >= 20
    candidate_p99, baseline_p99 = window["p99_ms"], window["baseline"]["p99_ms"]
    assert 20.0 <= candidate_p99 < 2000.0, "slower, but within the absolute gate"
    assert candidate_p99 / baseline_p99 > 3.0
    assert engine.router.weights() == live_before
    assert load.failures == []
    with env.services.db.transaction() as session:
        assert store.get_version(session, "mlp", env.versions["slow"]).state is VersionState.FAILED
    print(
        f"\nrelative gate: candidate p99 {candidate_p99:.1f} ms vs baseline {baseline_p99:.2f} ms"
        f" over {window['requests']} / {window['baseline']['requests']} requests: {done.reason}"
    )


@dataclass
class Probe:
    """One client sending requests through the proxy one after another, timing each answer."""

    url: str
    outputs: dict[str, np.ndarray]
    answers: list[tuple[float, float, str]] = field(default_factory=list)
    """(monotonic time answered, seconds it took, which version answered)."""
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        while not self._stop.is_set():
            tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
            tensor.set_data_from_numpy(FIXED_INPUT)
            sent = time.monotonic()
            try:
                out = client.infer("mlp", [tensor]).as_numpy("OUTPUT0")
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and asserted on
                self.failures.append(str(exc))
                continue
            answered = time.monotonic()
            kind = next((k for k, v in self.outputs.items() if np.allclose(out, v, rtol=1e-5)), "other")
            self.answers.append((answered, answered - sent, kind))
        client.close()

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self._loop)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def latencies(self, kind: str) -> list[float]:
        return [took for _at, took, k in self.answers if k == kind]


def _p99_ms(seconds: list[float]) -> float:
    return float(np.percentile(np.array(seconds) * 1000.0, 99))


def _switch_to(env: Env, version: int, warmup_requests: int) -> Rollout:
    """A blue-green rollout (no analysis) that warms up ``warmup_requests`` per replica; once ended."""
    engine = env.services.engine
    gates = Gates(min_requests=0, warmup_requests=warmup_requests)
    # The old pool keeps its release for a while after the switch: nothing loads while the first requests run.
    spec = rollout_spec(version, Strategy.BLUEGREEN, (100,), step_seconds=0.0, bake_seconds=3.0, gates=gates)
    done = engine.wait(engine.start(spec, actor="test").id, 120)
    assert done.state is RolloutState.SUCCEEDED, done.reason
    return done


@pytest.mark.exclusive
def test_a_warm_up_spares_the_first_client_requests_the_candidates_cold_start(env: Env) -> None:
    with Probe(env.grpc_url, env.outputs) as probe:
        time.sleep(1.0)
        cold = _switch_to(env, env.versions["cold-a"], warmup_requests=0)
        time.sleep(4.0)
        warmed = _switch_to(env, env.versions["cold-b"], warmup_requests=COLD_EXECUTIONS)
        time.sleep(4.0)
    assert probe.failures == []
    without, with_warmup = probe.latencies("cold-a"), probe.latencies("cold-b")
    assert len(without) > 2 * FIRST_REQUESTS and len(with_warmup) > 2 * FIRST_REQUESTS
    first_without, steady_without = _p99_ms(without[:FIRST_REQUESTS]), _p99_ms(without[FIRST_REQUESTS:])
    first_with, steady_with = _p99_ms(with_warmup[:FIRST_REQUESTS]), _p99_ms(with_warmup[FIRST_REQUESTS:])

    report = next(e.measurements for e in warmed.events if e.reason.startswith("candidate checks passed"))
    (timings,) = report["warmup"]["replicas"].values()
    assert report["warmup"]["requests"] == COLD_EXECUTIONS
    assert report["warmup"]["model_warmup"] is False
    # The smoke test took the first cold execution; the warm-up the next ones.
    assert timings["first_ms"] >= COLD_SECONDS * 1000 * 0.9
    assert not any(e.reason.startswith("candidate checks passed") for e in cold.events)

    print(
        f"\nfirst {FIRST_REQUESTS} client requests after the switch, p99:"
        f" without warm-up {first_without:.1f} ms (steady state {steady_without:.1f} ms),"
        f" with {COLD_EXECUTIONS} warm-up requests {first_with:.1f} ms (steady state {steady_with:.1f} ms);"
        f" the warm-up added {timings['total_ms'] / 1000:.2f} s to staging"
    )
    assert first_with <= 1.2 * steady_with
    assert first_without > 1.2 * steady_without
