"""Backend directory build, and the stand-in ONNX Runtime backend's logic with a fake pb_utils."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from controlplane.triton.backend_dir import (
    PYTHON_BACKEND_LIBRARY,
    PYTHON_BACKEND_STUB,
    PYTHON_BACKEND_UTILS,
    backend_sources,
    build_backend_directory,
    onnxruntime_backend_model_file,
)

EXPECTED_FILES = [
    f"python/{PYTHON_BACKEND_LIBRARY}",
    f"python/{PYTHON_BACKEND_UTILS}",
    f"python/{PYTHON_BACKEND_STUB}",
    "onnxruntime/model.py",
]


def _assert_real_copies(target: Path) -> None:
    sources = backend_sources()
    for relative in EXPECTED_FILES:
        path = target / relative
        assert not path.is_symlink(), relative
        assert path.is_file(), relative
        assert path.read_bytes() == sources[relative].read_bytes(), relative
    assert os.access(target / "python" / PYTHON_BACKEND_STUB, os.X_OK)
    assert not (target / "python").is_symlink()


def test_build_copies_all_files(tmp_path: Path) -> None:
    target = build_backend_directory(tmp_path / "backends")
    assert target == (tmp_path / "backends").absolute()
    _assert_real_copies(target)
    leftovers = [p.name for p in target.rglob(".*")]
    assert leftovers == [], "temporary files must not remain"


def test_build_twice_leaves_identical_files_alone(tmp_path: Path) -> None:
    target = build_backend_directory(tmp_path / "backends")
    inodes = {rel: (target / rel).stat().st_ino for rel in EXPECTED_FILES}
    assert build_backend_directory(tmp_path / "backends") == target
    _assert_real_copies(target)
    # Same inodes: a running server mapping these files is not disturbed.
    assert {rel: (target / rel).stat().st_ino for rel in EXPECTED_FILES} == inodes


def test_build_repairs_an_older_build_with_symlinks_and_stale_files(tmp_path: Path) -> None:
    target = tmp_path / "backends"
    sources = backend_sources()
    (target / "python").mkdir(parents=True)
    (target / "python" / PYTHON_BACKEND_LIBRARY).symlink_to(sources[f"python/{PYTHON_BACKEND_LIBRARY}"])
    (target / "python" / PYTHON_BACKEND_UTILS).write_text("# stale\n")
    real_onnx_dir = tmp_path / "elsewhere"
    real_onnx_dir.mkdir()
    (target / "onnxruntime").symlink_to(real_onnx_dir, target_is_directory=True)

    build_backend_directory(target)
    _assert_real_copies(target)
    assert not (target / "onnxruntime").is_symlink()
    assert list(real_onnx_dir.iterdir()) == [], "must not write through an old symlink"


# --- the onnxruntime backend's model.py, run outside Triton ---------------------------


def _load_backend_module() -> ModuleType:
    path = onnxruntime_backend_model_file()
    spec = importlib.util.spec_from_file_location("ort_backend_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


backend = _load_backend_module()


@dataclass
class FakeTensor:
    name: str
    array: np.ndarray

    def as_numpy(self) -> np.ndarray:
        return self.array


@dataclass
class FakeResponse:
    output_tensors: list[FakeTensor]
    error: Any = None


class FakeError:
    INVALID_ARG = "INVALID_ARG"
    INTERNAL = "INTERNAL"

    def __init__(self, message: str, code: str | None = None) -> None:
        self.message = message
        self.code = code


def _fake_pb_utils() -> SimpleNamespace:
    return SimpleNamespace(
        get_input_tensor_by_name=lambda request, name: (
            FakeTensor(name, request[name]) if name in request else None
        ),
        Tensor=FakeTensor,
        InferenceResponse=FakeResponse,
        TritonError=FakeError,
    )


@pytest.fixture
def fake_pb_utils(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "pb_utils", _fake_pb_utils())


def _scale_model(path: Path) -> None:
    """Y = 2 * X with a fully dynamic shape ``[batch, n]``; counts runs via nothing but outputs."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "X"], ["Y"])],
        "double",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, path)


def _instance(tmp_path: Path, *, max_batch_size: int, inputs: str = "X", filename: str | None = None) -> Any:
    model_dir = tmp_path / "double"
    _scale_model(model_dir / "1" / (filename or "model.onnx"))
    config: dict[str, Any] = {
        "name": "double",
        "max_batch_size": max_batch_size,
        "input": [{"name": inputs, "data_type": "TYPE_FP32", "dims": [-1]}],
        "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [-1]}],
    }
    if filename:
        config["default_model_filename"] = filename
    model = backend.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_repository": str(model_dir),
            "model_version": "1",
            "model_name": "double",
        }
    )
    return model


def _counting_runs(model: Any) -> list[int]:
    calls: list[int] = []
    original = model._session.run

    def run(names: Any, feed: dict[str, np.ndarray]) -> Any:
        calls.append(next(iter(feed.values())).shape[0])
        return original(names, feed)

    model._session = SimpleNamespace(run=run)
    return calls


@pytest.mark.usefixtures("fake_pb_utils")
def test_batch_runs_once_and_splits_per_request(tmp_path: Path) -> None:
    model = _instance(tmp_path, max_batch_size=8)
    calls = _counting_runs(model)
    requests = [{"X": np.full((n, 3), n, np.float32)} for n in (1, 2, 3)]
    responses = model.execute(requests)
    assert calls == [6]
    for request, response in zip(requests, responses, strict=True):
        assert response.error is None
        [tensor] = response.output_tensors
        assert tensor.name == "Y"
        np.testing.assert_array_equal(tensor.array, request["X"] * 2)


@pytest.mark.usefixtures("fake_pb_utils")
def test_mismatched_shapes_fall_back_to_one_run_per_request(tmp_path: Path) -> None:
    model = _instance(tmp_path, max_batch_size=8)
    calls = _counting_runs(model)
    requests = [{"X": np.ones((1, 3), np.float32)}, {"X": np.ones((2, 5), np.float32)}]
    responses = model.execute(requests)
    assert calls == [1, 2]
    assert [r.output_tensors[0].array.shape for r in responses] == [(1, 3), (2, 5)]


@pytest.mark.usefixtures("fake_pb_utils")
def test_one_bad_request_does_not_fail_the_others(tmp_path: Path) -> None:
    model = _instance(tmp_path, max_batch_size=8)
    requests = [
        {"X": np.ones((1, 3), np.float32)},
        {"WRONG": np.ones((1, 3), np.float32)},
        {"X": np.ones((2, 3), np.float64)},  # wrong dtype: onnxruntime rejects it
        {"X": np.ones((2, 3), np.float32)},
    ]
    responses = model.execute(requests)
    assert responses[0].error is None and responses[3].error is None
    assert responses[1].error.code == "INVALID_ARG"
    assert "missing input 'X'" in responses[1].error.message
    assert responses[2].error is not None
    assert responses[2].error.code == "INVALID_ARG"
    np.testing.assert_array_equal(responses[3].output_tensors[0].array, np.full((2, 3), 2.0))


@pytest.mark.usefixtures("fake_pb_utils")
def test_max_batch_size_zero_runs_each_request_as_is(tmp_path: Path) -> None:
    model = _instance(tmp_path, max_batch_size=0)
    calls = _counting_runs(model)
    requests = [{"X": np.ones((2, 3), np.float32)}, {"X": np.ones((2, 3), np.float32)}]
    responses = model.execute(requests)
    assert calls == [2, 2]
    assert all(r.error is None for r in responses)


@pytest.mark.usefixtures("fake_pb_utils")
def test_default_model_filename_is_respected(tmp_path: Path) -> None:
    model = _instance(tmp_path, max_batch_size=4, filename="weights.onnx")
    [response] = model.execute([{"X": np.ones((1, 2), np.float32)}])
    assert response.error is None


def test_config_with_unknown_input_name_fails_to_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config inputs not in the model"):
        _instance(tmp_path, max_batch_size=4, inputs="NOPE")


def test_split_outputs_rejects_a_graph_without_batch_axis() -> None:
    with pytest.raises(backend.BatchingNotPossible):
        backend.split_outputs({"Y": np.ones((3,))}, [1, 1])
    parts = backend.split_outputs({"Y": np.arange(6).reshape(3, 2)}, [1, 2])
    assert [p["Y"].shape for p in parts] == [(1, 2), (2, 2)]


def test_concatenate_feeds_checks_batch_sizes_within_a_request() -> None:
    feeds = [{"A": np.ones((2, 1)), "B": np.ones((3, 1))}]
    with pytest.raises(backend.BatchingNotPossible):
        backend.concatenate_feeds(feeds, ["A", "B"])


def test_concatenate_feeds_refuses_requests_whose_types_differ() -> None:
    # numpy would promote float32 + float64 to float64 and the graph would reject the batch.
    feeds = [{"X": np.ones((1, 3), np.float32)}, {"X": np.ones((1, 3), np.float64)}]
    with pytest.raises(backend.BatchingNotPossible):
        backend.concatenate_feeds(feeds, ["X"])


def test_concatenate_feeds_refuses_an_input_without_batch_axis() -> None:
    feeds = [{"X": np.ones((), np.float32)}, {"X": np.ones((1,), np.float32)}]
    with pytest.raises(backend.BatchingNotPossible):
        backend.concatenate_feeds(feeds, ["X"])


def test_concatenate_feeds_keeps_request_order_and_sizes() -> None:
    feeds = [{"A": np.full((n, 2), n, np.int64), "B": np.full((n,), -n, np.int64)} for n in (2, 1, 3)]
    merged, sizes = backend.concatenate_feeds(feeds, ["A", "B"])
    assert sizes == [2, 1, 3]
    np.testing.assert_array_equal(merged["A"][:, 0], [2, 2, 1, 3, 3, 3])
    np.testing.assert_array_equal(merged["B"], [-2, -2, -1, -3, -3, -3])
    assert merged["A"].dtype == np.int64


def test_split_outputs_hands_out_views_of_the_batch_without_copying() -> None:
    batch = np.arange(12, dtype=np.float32).reshape(6, 2)
    parts = backend.split_outputs({"Y": batch}, [2, 0, 4])
    assert [p["Y"].shape for p in parts] == [(2, 2), (0, 2), (4, 2)]
    assert all(np.shares_memory(p["Y"], batch) for p in (parts[0], parts[2]))
    assert all(p["Y"].flags.c_contiguous for p in parts)
    np.testing.assert_array_equal(np.concatenate([p["Y"] for p in parts]), batch)


def test_model_file_path() -> None:
    assert backend.model_file_path("/r/m", "3", {}) == "/r/m/3/model.onnx"
    config = {"default_model_filename": "w.onnx"}
    assert backend.model_file_path("/r/m", "3", config) == "/r/m/3/w.onnx"


def test_session_threads_default_to_one_each_and_follow_the_native_backends_parameters() -> None:
    assert backend.thread_counts({}) == (1, 1)
    assert backend.thread_counts({"parameters": {"intra_op_thread_count": {"string_value": "2"}}}) == (2, 1)
    both = {
        "intra_op_thread_count": {"string_value": "0"},
        "inter_op_thread_count": {"string_value": " 3 "},
    }
    assert backend.thread_counts({"parameters": both}) == (0, 3)


@pytest.mark.parametrize("value", ["-1", "two", "1.5", "100000"])
def test_a_thread_count_that_is_not_a_small_whole_number_fails_the_load_naming_it(value: str) -> None:
    config = {"parameters": {"inter_op_thread_count": {"string_value": value}}}
    with pytest.raises(ValueError, match=f"parameter inter_op_thread_count is {value!r}"):
        backend.thread_counts(config)
