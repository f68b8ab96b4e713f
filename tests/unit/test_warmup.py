"""Warm-up of a staged candidate: zero-filled inferences on every replica, timed, before any traffic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fakes import FakeClock, FakeTriton, build_world

from controlplane.domain.models import ModelSignature, ModelVersion, TensorSpec
from controlplane.errors import CandidateRejected, SmokeTestFailed, TritonUnavailable
from controlplane.pools import Pool, install
from controlplane.rollout.warmup import warm_up
from controlplane.staging.repository import PoolRepository
from controlplane.triton.client import zero_inputs
from controlplane.triton.replicas import ReplicatedTriton
from controlplane.triton.wire import Zeros

# -- zero_inputs ---------------------------------------------------------------------------


def test_zero_inputs_are_batch_one_with_variable_dims_one_and_the_declared_types() -> None:
    signature = ModelSignature(
        backend="onnxruntime",
        max_batch_size=8,
        inputs=(TensorSpec("IMAGE", "FP16", (3, -1, 4)), TensorSpec("IDS", "INT64", (-1,))),
        outputs=(TensorSpec("OUT", "FP32", (2,)),),
    )
    inputs = zero_inputs(signature)
    assert inputs == {"IMAGE": Zeros("FP16", (1, 3, 1, 4)), "IDS": Zeros("INT64", (1, 1))}
    assert inputs["IMAGE"].raw() == bytes(2 * 12)
    assert inputs["IDS"].raw() == bytes(8)


def test_zero_inputs_of_a_model_without_batching_keep_the_declared_shape_and_bytes_are_empty() -> None:
    signature = ModelSignature(
        backend="onnxruntime",
        max_batch_size=0,
        inputs=(TensorSpec("TEXT", "BYTES", (2,)),),
        outputs=(TensorSpec("OUT", "FP32", (1,)),),
    )
    text = zero_inputs(signature)["TEXT"]
    assert text.shape == (2,)
    # Two BYTES elements of length 0: a 4-byte length each, no content.
    assert text.raw() == b"\0\0\0\0" * 2


def test_an_input_of_a_type_triton_does_not_know_fails_the_smoke_test_by_name() -> None:
    signature = ModelSignature(
        backend="onnxruntime",
        max_batch_size=0,
        inputs=(TensorSpec("X", "COMPLEX64", (2,)),),
        outputs=(TensorSpec("OUT", "FP32", (1,)),),
    )
    with pytest.raises(SmokeTestFailed, match=r"input 'X' has a data type \(COMPLEX64\)"):
        zero_inputs(signature)


# -- warm_up -------------------------------------------------------------------------------


@pytest.fixture
def staged(tmp_path: Path) -> tuple[Pool, ModelVersion, list[FakeTriton]]:
    """Version 1 of ``mlp`` loaded on a pool of two fake replicas over one repository."""
    world = build_world(tmp_path)
    try:
        world.push("mlp", b"weights of version 1")
        version = world.registry.get_version("mlp", 1)
        repository = PoolRepository(tmp_path / "pools" / "two")
        replicas = [FakeTriton(repository), FakeTriton(repository)]
        pool = Pool(name="two", repository=repository, triton=ReplicatedTriton(replicas))
        install(pool, version, world.blobs, previous=None, load_timeout=1.0)
    finally:
        world.close()
    return pool, version, replicas


def test_every_replica_gets_the_requests_and_the_report_gives_first_median_last_and_total_durations(
    staged: tuple[Pool, ModelVersion, list[FakeTriton]],
) -> None:
    pool, version, replicas = staged
    clock = FakeClock(start=0.0)
    for replica in replicas:
        served: list[int] = []

        def slow_at_first(
            model: str, v: int, inputs: dict, outputs: list[str], served: list[int] = served
        ) -> dict:
            served.append(1)
            # 300 ms for the first two inferences on each replica, 2 ms after.
            clock.advance(0.3 if len(served) <= 2 else 0.002)
            return {name: np.zeros((1, 2), dtype=np.float32) for name in outputs}

        replica.answer = slow_at_first

    report = warm_up(pool, version, 5, clock=clock)

    timings = {"first_ms": 300.0, "p50_ms": 2.0, "last_ms": 2.0, "total_ms": 606.0}
    assert report == {
        "warmup": {
            "requests": 5,
            "replicas": {"replica 1": timings, "replica 2": timings},
            "model_warmup": False,
        }
    }
    for replica in replicas:
        assert [c for c in replica.calls if c[0] == "infer"] == [("infer", "mlp", 1)] * 5


def test_a_model_that_declares_its_own_model_warmup_is_still_warmed_and_the_report_says_so(
    staged: tuple[Pool, ModelVersion, list[FakeTriton]],
) -> None:
    pool, version, replicas = staged
    for replica in replicas:
        replica.overrides["mlp"] = {"model_warmup": [{"name": "zeros", "batch_size": 1}]}

    report = warm_up(pool, version, 2)

    assert report["warmup"]["model_warmup"] is True
    assert all(len([c for c in r.calls if c[0] == "infer"]) == 2 for r in replicas)


def test_zero_requests_send_nothing(staged: tuple[Pool, ModelVersion, list[FakeTriton]]) -> None:
    pool, version, replicas = staged

    report = warm_up(pool, version, 0)

    assert report == {"warmup": {"requests": 0, "replicas": {}, "model_warmup": False}}
    assert all(c[0] != "infer" for r in replicas for c in r.calls)


def test_a_failed_inference_is_a_rejected_candidate_naming_the_replica_and_the_request(
    staged: tuple[Pool, ModelVersion, list[FakeTriton]],
) -> None:
    pool, version, replicas = staged
    served: list[int] = []

    def fourth_fails(model: str, v: int, inputs: dict, outputs: list[str]) -> dict:
        served.append(1)
        if len(served) == 4:
            raise SmokeTestFailed("inference on 'mlp' version 1 failed: CUDA error")
        return {name: np.zeros((1, 2), dtype=np.float32) for name in outputs}

    replicas[1].answer = fourth_fails

    with pytest.raises(CandidateRejected) as info:
        warm_up(pool, version, 5)

    assert info.value.code == "warmup_failed"
    assert info.value.message.startswith("warm-up inference 4 of 5 on replica 2 failed for 'mlp' version 1:")
    assert "CUDA error" in info.value.message
    assert info.value.details["warmup"]["replica"] == "replica 2"
    assert info.value.details["warmup"]["request"] == 4


def test_a_replica_that_does_not_answer_is_an_outage_to_wait_out_not_a_rejection(
    staged: tuple[Pool, ModelVersion, list[FakeTriton]],
) -> None:
    pool, version, replicas = staged

    def silent(model: str, v: int | None) -> None:
        raise TritonUnavailable("Triton did not answer an inference on 'mlp': connection refused")

    replicas[1].before["infer"] = silent

    with pytest.raises(TritonUnavailable, match="replica 2"):
        warm_up(pool, version, 3)
