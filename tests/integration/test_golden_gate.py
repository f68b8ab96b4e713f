"""Golden sets on real Triton pools behind a real HAProxy: proven on the idle pool before any traffic.

``mlp`` version 1 serves; version 2 (other weights) carries a golden set.
Clients send requests through the proxy the whole time. The engine, registry
(SQLite), pools and proxy are the objects ``controlplane up`` wires; only an
observer is put around the candidate checks, to read Triton's own statistics
of the candidate straight from the target pool the moment the check has
ended (the failed candidate is unloaded right after).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from rollout_load import FIXED_INPUT, Load, rollout_spec
from triton_helpers import load_examples_module

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.golden_records import GoldenFormat
from controlplane.domain.models import VersionMetadata, VersionState
from controlplane.domain.rollouts import Rollout, RolloutState, Strategy
from controlplane.pools import Pool
from controlplane.runtime.local import LocalStack
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import Services, local_services
from controlplane.settings import Settings

pytestmark = pytest.mark.integration

examples = load_examples_module()
MAX_BATCH_SIZE = 64  # what build_examples writes into mlp's config.pbtxt


@dataclass
class Env:
    services: Services
    stack: LocalStack
    grpc_url: str
    folders: dict[str, Path]
    outputs: dict[str, np.ndarray]
    root: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("golden")
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(state_dir=root / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port)
    with local_services(settings, pool_names=("blue", "green")) as (stack, services):
        folders = {
            "v1": examples.build_mlp(root / "v1", seed=1),
            "v2": examples.build_mlp(root / "v2", seed=2),
        }
        for name in ("v1", "v2"):
            archive = pack_directory(folders[name], root / f"{name}.tar.gz")
            services.registry.push(model="mlp", archive=archive, metadata=VersionMetadata())
        services.deployer.deploy("mlp", 1)
        outputs = {
            name: examples.reference_outputs(folders[name], {"INPUT0": FIXED_INPUT})["OUTPUT0"]
            for name in ("v1", "v2")
        }
        yield Env(services, stack, f"127.0.0.1:{grpc_port}", folders, outputs, root)


def attach_golden(env: Env, number: int, inputs: np.ndarray, expected: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{"inputs/INPUT0": inputs, "outputs/OUTPUT0": expected})
    upload = env.root / f"golden-{time.monotonic_ns()}.npz"
    upload.write_bytes(buffer.getvalue())
    env.services.golden.attach("mlp", number, upload=upload, fmt=GoldenFormat.NPZ, actor="tests")


def triton_statistics(env: Env, pool: str, version: int) -> dict[str, int]:
    """Triton's own counters of mlp ``version`` on ``pool``'s Triton, asked with the pool's admin key."""
    stack_pool = env.stack.pools[pool]
    client = grpcclient.InferenceServerClient(stack_pool.grpc_urls[0])
    try:
        stats = client.get_inference_statistics(
            "mlp", str(version), headers=stack_pool.admin_headers, as_json=True
        )
    finally:
        client.close()
    (model,) = stats["model_stats"]
    return {
        "requests": int(model["inference_stats"]["success"].get("count", 0)),
        "rows": int(model.get("inference_count", 0)),
        "failed": int(model["inference_stats"]["fail"].get("count", 0)),
    }


def settled_statistics(env: Env, pool: str, version: int, *, rows: int, timeout: float = 5) -> dict[str, int]:
    """``triton_statistics`` once they count ``rows`` rows or more (or after ``timeout``).

    Triton counts a request after its response went out: on a busy machine
    the counters of the last one may lag the answer a little.
    """
    deadline = time.monotonic() + timeout
    while True:
        stats = triton_statistics(env, pool, version)
        if stats["rows"] >= rows or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def _failure(rollout: Rollout) -> Mapping[str, Any]:
    return next(e.measurements for e in rollout.events if e.to_state == RolloutState.FAILED.value)


def test_a_canary_whose_golden_set_fails_never_gets_a_client_request(env: Env) -> None:
    engine = env.services.engine
    rows = 200
    inputs = np.random.default_rng(7).standard_normal((rows, 16)).astype(np.float32)
    # Version 1's answers: version 2 (other weights) cannot reproduce them.
    attach_golden(
        env, 2, inputs, examples.reference_outputs(env.folders["v1"], {"INPUT0": inputs})["OUTPUT0"]
    )
    weights_before = engine.router.weights()
    target = next(pool for pool, weight in weights_before.items() if weight == 0)
    observed: dict[str, Any] = {}
    checks = engine.candidate_checks
    assert checks is not None

    def observing(rollout: Rollout, pool: Pool) -> Mapping[str, object]:
        try:
            return checks(rollout, pool)
        finally:
            observed["statistics"] = settled_statistics(env, pool.name, 2, rows=rows + 1)
            observed["weights"] = engine.router.weights()

    engine.candidate_checks = observing
    try:
        with Load(env.grpc_url, env.outputs) as load:
            rollout = engine.start(rollout_spec(2, Strategy.CANARY, (25, 100)), actor="tests")
            rollout = engine.wait(rollout.id, 120)
            time.sleep(0.5)
    finally:
        engine.candidate_checks = checks

    assert rollout.state is RolloutState.FAILED, rollout.reason
    assert f"golden set failed on replica 1 ({env.stack.pools[target].http_urls[0]})" in rollout.reason
    assert "output 'OUTPUT0' max abs error" in rollout.reason and "first failing row 0" in rollout.reason
    report = _failure(rollout)["golden"]
    assert report["passed"] is False and report["rows"] == rows
    assert report["outputs"]["OUTPUT0"]["rows_failing"] == rows
    assert report["outputs"]["OUTPUT0"]["max_abs_error"] > 1e-3
    print(f"golden set refused the candidate: {rollout.reason}")

    assert load.failures == []
    assert len(load.answers) > 50
    assert {kind for _at, kind in load.answers} == {"v1"}
    assert observed["weights"][target] == 0
    assert engine.router.weights() == weights_before
    assert [e.to_state for e in rollout.events] == ["pending", "staging", "failed"]
    # Exactly the golden set's requests (batches of max_batch_size) and the smoke test, nothing else.
    golden_requests = math.ceil(rows / MAX_BATCH_SIZE)
    assert observed["statistics"] == {"requests": golden_requests + 1, "rows": rows + 1, "failed": 0}
    print(
        f"candidate on {target}: Triton counted {observed['statistics']['requests']} requests "
        f"({golden_requests} golden + 1 smoke) while {len(load.answers)} client requests went to version 1"
    )
    assert env.services.registry.get_version("mlp", 2).state is VersionState.FAILED


def test_a_golden_set_of_a_thousand_rows_the_candidate_reproduces_lets_it_roll_out(env: Env) -> None:
    engine = env.services.engine
    rows = 1000
    inputs = np.random.default_rng(11).standard_normal((rows, 16)).astype(np.float32)
    attach_golden(
        env, 2, inputs, examples.reference_outputs(env.folders["v2"], {"INPUT0": inputs})["OUTPUT0"]
    )

    with Load(env.grpc_url, env.outputs) as load:
        rollout = engine.start(rollout_spec(2, Strategy.CANARY, (25, 100)), actor="tests")
        rollout = engine.wait(rollout.id, 120)

    assert rollout.state is RolloutState.SUCCEEDED, rollout.reason
    assert load.failures == []
    checked = next(e for e in rollout.events if e.reason.startswith("candidate checks passed on"))
    golden = checked.measurements["golden"]
    assert golden["rows"] == rows and golden["requests_per_replica"] == math.ceil(rows / MAX_BATCH_SIZE)
    assert golden["outputs"]["OUTPUT0"]["max_abs_error"] <= 1e-5
    print(
        f"golden set of {rows} rows on mlp: {golden['seconds']:.3f} s on {golden['replicas']} replica(s), "
        f"{golden['requests_per_replica']} requests each; max abs error "
        f"{golden['outputs']['OUTPUT0']['max_abs_error']:.2g}"
    )
