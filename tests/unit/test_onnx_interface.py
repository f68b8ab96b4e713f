"""Real ONNX files against config.pbtxt: read with ``onnx``, compared, refused at ingest before storing."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from triton_helpers import load_examples_module

from controlplane.artifacts.archive import ArchiveLimits, pack_directory
from controlplane.artifacts.blobs import BlobStore
from controlplane.artifacts.ingest import ingest_archive
from controlplane.artifacts.model_config import read_signature
from controlplane.artifacts.onnx_interface import check_onnx_model, graph_interface, load_model
from controlplane.domain.interface_check import GraphTensor
from controlplane.errors import InvalidInput, InvalidModelConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
examples = load_examples_module()

CONFIG = """name: "{name}"
{backend}
max_batch_size: {mbs}
input {{ name: "INPUT0" data_type: TYPE_FP32 dims: 16 }}
output {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: 4 }}
{extra}
"""

Shape = Sequence[int | str | None]


def value(
    name: str, elem: int = TensorProto.FLOAT, shape: Shape | None = ("batch", 16)
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def model_bytes(
    inputs: Sequence[onnx.ValueInfoProto] = (),
    outputs: Sequence[onnx.ValueInfoProto] = (),
    initializers: Sequence[onnx.TensorProto] = (),
) -> bytes:
    inputs = inputs or [value("INPUT0")]
    outputs = outputs or [value("OUTPUT0", shape=("batch", 4))]
    weights = initializers or [numpy_helper.from_array(np.zeros((16, 4), np.float32), "W")]
    graph = helper.make_graph(
        [helper.make_node("MatMul", [inputs[0].name, "W"], [outputs[0].name])], "g", inputs, outputs, weights
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def folder_with(
    root: Path,
    onnx_bytes: bytes,
    *,
    name: str = "m",
    backend: str = 'backend: "onnxruntime"',
    mbs: int = 8,
    extra: str = "",
    filename: str = "model.onnx",
) -> Path:
    folder = root / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(CONFIG.format(name=name, backend=backend, mbs=mbs, extra=extra))
    (folder / "1" / filename).parent.mkdir(parents=True, exist_ok=True)
    (folder / "1" / filename).write_bytes(onnx_bytes)
    return folder


def check_folder(folder: Path, filename: str = "model.onnx") -> None:
    signature = read_signature((folder / "config.pbtxt").read_bytes(), model_name=folder.name)
    check_onnx_model(folder, "1", filename, signature)


def mismatch(folder: Path) -> InvalidModelConfig:
    with pytest.raises(InvalidModelConfig) as caught:
        check_folder(folder)
    assert caught.value.code == "interface_mismatch"
    return caught.value


def invalid(folder: Path) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        check_folder(folder)
    assert caught.value.code == "invalid_onnx_model"
    return caught.value


def test_a_model_that_matches_its_config_passes(tmp_path: Path) -> None:
    check_folder(folder_with(tmp_path, model_bytes()))


@pytest.mark.parametrize("name", ["mlp", "two_inputs"])
def test_the_committed_example_models_pass(name: str) -> None:
    check_folder(REPO_ROOT / "model_repository" / name)


@pytest.mark.parametrize("build", ["build_mlp", "build_two_inputs", "build_faulty"])
def test_every_onnx_example_the_build_script_writes_passes(tmp_path: Path, build: str) -> None:
    builder = getattr(examples, build)
    folder = builder(tmp_path, name="example") if build != "build_faulty" else builder(tmp_path, "example")
    check_folder(folder)


def test_a_renamed_graph_input_is_refused_naming_both_names(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, model_bytes(inputs=[value("input_1")]))
    error = mismatch(folder)
    assert "input 'INPUT0' is not in the ONNX graph (graph inputs: 'input_1')" in error.message
    assert {(d["tensor"], d["problem"]) for d in error.details} == {
        ("INPUT0", "not_in_graph"),
        ("input_1", "not_in_config"),
    }


def test_a_data_type_mismatch_is_refused(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, model_bytes(inputs=[value("INPUT0", TensorProto.DOUBLE)]))
    error = mismatch(folder)
    assert error.details == [
        {"tensor": "INPUT0", "kind": "input", "problem": "data_type", "config": "FP32", "graph": "DOUBLE"}
    ]
    assert "TYPE_FP32 in config.pbtxt but DOUBLE in the ONNX graph (TYPE_FP64" in error.message


def test_a_rank_mismatch_is_refused(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, model_bytes(outputs=[value("OUTPUT0", shape=("batch", 2, 2))]))
    error = mismatch(folder)
    assert error.details == [
        {
            "tensor": "OUTPUT0",
            "kind": "output",
            "problem": "rank",
            "config": [-1, 4],
            "graph": ["batch", 2, 2],
        }
    ]


def test_a_fixed_batch_dimension_is_refused_naming_it(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, model_bytes(inputs=[value("INPUT0", shape=(1, 16))]))
    error = mismatch(folder)
    assert "max_batch_size is 8, so the first dimension of the ONNX graph must be dynamic" in error.message
    assert error.details[0]["problem"] == "batch_dimension" and error.details[0]["graph"] == 1


def test_unnamed_unknown_and_negative_dims_count_as_dynamic(tmp_path: Path) -> None:
    model = onnx.load_from_string(model_bytes())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[1].dim_value = -1
    check_folder(folder_with(tmp_path, model.SerializeToString()))
    assert graph_interface(model).inputs == (GraphTensor("INPUT0", "FLOAT", (None, None)),)


def test_without_batching_the_graph_shape_is_the_config_dims(tmp_path: Path) -> None:
    unbatched = model_bytes(inputs=[value("INPUT0", shape=(16,))], outputs=[value("OUTPUT0", shape=(4,))])
    check_folder(folder_with(tmp_path / "a", unbatched, mbs=0))
    assert mismatch(folder_with(tmp_path / "b", model_bytes(), mbs=0)).details[0]["problem"] == "rank"


def test_initializers_listed_as_graph_inputs_are_not_inputs_the_config_must_declare(tmp_path: Path) -> None:
    weights = numpy_helper.from_array(np.zeros((16, 4), np.float32), "W")
    listed = model_bytes(inputs=[value("INPUT0"), value("W", shape=(16, 4))], initializers=[weights])
    check_folder(folder_with(tmp_path, listed))


@pytest.mark.parametrize(
    "content",
    [
        b"this is not an ONNX model\n" + bytes(range(256)),
        b"\x08",
        b"",
        model_bytes()[:-7],
    ],
    ids=["garbage", "one-byte", "empty", "truncated"],
)
def test_a_file_that_is_not_an_onnx_model_is_refused(tmp_path: Path, content: bytes) -> None:
    error = invalid(folder_with(tmp_path, content))
    assert error.message.startswith("1/model.onnx is not a valid ONNX model")
    assert error.details["file"] == "1/model.onnx"


def test_a_text_format_model_under_a_text_file_name_is_still_read_as_protobuf(tmp_path: Path) -> None:
    text = text_format.MessageToString(onnx.load_from_string(model_bytes())).encode()
    assert onnx.load_model_from_string(text, format="textproto").graph.input[0].name == "INPUT0"
    folder = folder_with(
        tmp_path, text, extra='default_model_filename: "model.textproto"', filename="model.textproto"
    )
    with pytest.raises(InvalidInput) as caught:
        check_folder(folder, "model.textproto")
    assert caught.value.code == "invalid_onnx_model"


def _external(location: str) -> bytes:
    model = onnx.load_from_string(model_bytes())
    weights = model.graph.initializer[0]
    weights.ClearField("raw_data")
    weights.ClearField("float_data")
    weights.data_location = TensorProto.EXTERNAL
    weights.external_data.add(key="location", value=location)
    return model.SerializeToString()


@pytest.mark.parametrize("location", ["../../outside.bin", "/etc/passwd", "missing.bin", "..\\x.bin", ""])
def test_external_data_outside_the_pushed_folder_is_refused(tmp_path: Path, location: str) -> None:
    error = invalid(folder_with(tmp_path, _external(location)))
    assert "tensor 'W' keeps its data in" in error.message
    assert error.details["location"] == location


def test_external_data_outside_the_folder_is_never_opened(tmp_path: Path) -> None:
    # Opening a FIFO for reading blocks until a writer comes: a read would hang the check.
    fifo = tmp_path / "outside.fifo"
    os.mkfifo(fifo)
    folder = folder_with(tmp_path / "push", _external(str(fifo)))
    outcome: list[BaseException] = []
    worker = threading.Thread(target=lambda: outcome.append(_raised(folder)), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the check opened the external data file"
    assert isinstance(outcome[0], InvalidInput) and outcome[0].code == "invalid_onnx_model"


def _raised(folder: Path) -> BaseException:
    try:
        check_folder(folder)
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        return exc
    raise AssertionError("the check passed")


def test_external_data_in_a_pushed_file_next_to_the_model_passes_unread(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, _external("weights.bin"))
    (folder / "1" / "weights.bin").write_bytes(b"\0" * 256)
    check_folder(folder)


def test_a_graph_with_thousands_of_inputs_is_refused_quickly(tmp_path: Path) -> None:
    many = [value("INPUT0"), *(value(f"extra_{i}") for i in range(5_000))]
    folder = folder_with(tmp_path, model_bytes(inputs=many))
    started = time.monotonic()
    error = mismatch(folder)
    assert time.monotonic() - started < 5.0
    assert "and 4999 more differences" in error.message
    assert len(error.message) < 2_000


def test_odd_tensor_names_are_shown_escaped(tmp_path: Path) -> None:
    odd = "in\x00put\x1b[2J\n"
    folder = folder_with(tmp_path, model_bytes(inputs=[value("INPUT0"), value(odd)]))
    error = mismatch(folder)
    assert repr(odd) in error.message
    assert not any(ch in error.message for ch in "\x00\x1b\n")


def test_a_model_file_of_another_backend_is_not_checked(tmp_path: Path) -> None:
    # The check is the onnxruntime backend's: a python-backend folder's model.onnx is opaque.
    folder = folder_with(tmp_path, b"not onnx", backend='backend: "python"')
    stored = _ingest(folder, tmp_path, allowed=("onnxruntime", "python"))
    assert any(e.path == "1/model.onnx" for e in stored.manifest)


def _ingest(folder: Path, tmp_path: Path, allowed: Sequence[str] = ("onnxruntime",)):  # type: ignore[no-untyped-def]
    archive = pack_directory(folder, tmp_path / "push.tar.gz")
    store = BlobStore(tmp_path / "blobs")
    return ingest_archive(
        archive,
        model_name=folder.name,
        store=store,
        work_dir=tmp_path / "work",
        limits=ArchiveLimits(),
        allowed_backends=allowed,
    )


def _stored_blobs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "blobs" / "sha256"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_ingest_refuses_a_mismatched_folder_before_any_blob_is_stored(tmp_path: Path) -> None:
    folder = folder_with(tmp_path / "src", model_bytes(inputs=[value("input_1")]))
    with pytest.raises(InvalidModelConfig) as caught:
        _ingest(folder, tmp_path)
    assert caught.value.code == "interface_mismatch"
    assert _stored_blobs(tmp_path) == []


def test_ingest_refuses_a_garbage_model_before_any_blob_is_stored(tmp_path: Path) -> None:
    folder = folder_with(tmp_path / "src", b"garbage" * 100)
    with pytest.raises(InvalidInput) as caught:
        _ingest(folder, tmp_path)
    assert caught.value.code == "invalid_onnx_model"
    assert _stored_blobs(tmp_path) == []


def test_ingest_checks_the_file_default_model_filename_names(tmp_path: Path) -> None:
    extra = 'default_model_filename: "net.onnx"'
    folder = folder_with(tmp_path / "src", model_bytes(inputs=[value("x")]), extra=extra, filename="net.onnx")
    with pytest.raises(InvalidModelConfig) as caught:
        _ingest(folder, tmp_path)
    assert "input 'INPUT0' is not in the ONNX graph (graph inputs: 'x')" in caught.value.message


def test_ingest_checks_a_model_selected_by_the_onnxruntime_onnx_platform(tmp_path: Path) -> None:
    folder = folder_with(
        tmp_path / "src", model_bytes(inputs=[value("x")]), backend='platform: "onnxruntime_onnx"'
    )
    with pytest.raises(InvalidModelConfig) as caught:
        _ingest(folder, tmp_path)
    assert caught.value.code == "interface_mismatch"


def test_ingest_checks_model_onnx_inside_a_model_directory(tmp_path: Path) -> None:
    folder = folder_with(tmp_path / "src", model_bytes(inputs=[value("x")]), filename="model.onnx/model.onnx")
    with pytest.raises(InvalidModelConfig) as caught:
        _ingest(folder, tmp_path)
    assert caught.value.code == "interface_mismatch"


def test_ingest_accepts_a_matching_folder_and_stores_it(tmp_path: Path) -> None:
    folder = folder_with(tmp_path / "src", model_bytes())
    artifact = _ingest(folder, tmp_path)
    assert {e.path for e in artifact.manifest} == {"config.pbtxt", "1/model.onnx"}
    assert len(_stored_blobs(tmp_path)) == 2


def test_load_model_names_the_file_as_pushed(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\xff" * 10)
    with pytest.raises(InvalidInput) as caught:
        load_model(path, "3/model.onnx")
    assert caught.value.message.startswith("3/model.onnx is not a valid ONNX model")
