"""Read an ONNX model's inputs and outputs (ONNX's protobuf schema) and check them against config.pbtxt.

The comparison itself is ``controlplane.domain.interface_check``; this module
only turns a model file into a :class:`GraphInterface`. The file is parsed
as a protobuf whatever its name (Triton's backend does the same), and
external data is never loaded: its ``location`` is taken from the pushed
file, so reading it would open whatever path the pusher chose. Such a
location must name a file of the pushed folder, next to the model file.

Only ONNX's generated protobuf schema is loaded (``onnx_ml_pb2``), not the
``onnx`` package around it, which brings numpy into the control plane's
process for good.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from controlplane.artifacts.model_config import DEFAULT_ONNX_FILENAME
from controlplane.artifacts.protobuf_modules import load_generated
from controlplane.domain.interface_check import GraphDim, GraphInterface, GraphTensor, check_interface
from controlplane.domain.models import ModelSignature
from controlplane.errors import InvalidInput

if TYPE_CHECKING:
    from onnx import onnx_ml_pb2 as onnx
else:
    onnx = load_generated("onnx.onnx_ml_pb2")

_NAME_CHARS = 200


def _invalid(path_in_folder: str, why: str, **details: object) -> InvalidInput:
    return InvalidInput(
        f"{path_in_folder} is not a valid ONNX model: {why}",
        code="invalid_onnx_model",
        details={"file": path_in_folder, **details},
    )


def _element_type(elem_type: int) -> str | None:
    if elem_type == onnx.TensorProto.UNDEFINED:
        return None
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"element type {elem_type}"


def _dim(dim: onnx.TensorShapeProto.Dimension) -> GraphDim:
    which = dim.WhichOneof("value")
    if which == "dim_value":
        # Some exporters write -1 for a dynamic axis; onnxruntime treats it as one.
        return int(dim.dim_value) if dim.dim_value >= 0 else None
    if which == "dim_param":
        return str(dim.dim_param) or None
    return None


def _tensor(value: onnx.ValueInfoProto) -> GraphTensor:
    which = value.type.WhichOneof("value")
    if which is None:
        return GraphTensor(name=value.name, data_type=None, shape=None)
    if which != "tensor_type":
        return GraphTensor(name=value.name, data_type=which.removesuffix("_type"), shape=None)
    tensor_type = value.type.tensor_type
    shape = tuple(_dim(d) for d in tensor_type.shape.dim) if tensor_type.HasField("shape") else None
    return GraphTensor(name=value.name, data_type=_element_type(tensor_type.elem_type), shape=shape)


def graph_interface(model: onnx.ModelProto) -> GraphInterface:
    """The graph's real inputs (an initializer listed as an input has a default) and its outputs."""
    graph = model.graph
    initialized = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    return GraphInterface(
        inputs=tuple(_tensor(v) for v in graph.input if v.name not in initialized),
        outputs=tuple(_tensor(v) for v in graph.output),
    )


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (If/Loop/Scan bodies) under it, without recursion."""
    pending = [graph]
    while pending:
        current = pending.pop()
        yield current
        for node in current.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    pending.append(attribute.g)
                pending.extend(attribute.graphs)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor that may hold data: initializers and constant attributes, subgraphs included."""
    for current in _graphs(graph):
        yield from current.initializer
        for sparse in current.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in current.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("sparse_tensor"):
                    yield attribute.sparse_tensor.values
                    yield attribute.sparse_tensor.indices
                for sparse in attribute.sparse_tensors:
                    yield sparse.values
                    yield sparse.indices


def _location_in_folder(location: str, model_dir: Path, folder: Path) -> bool:
    if not location or "\0" in location or "\\" in location:
        return False
    relative = PurePosixPath(location)
    if relative.is_absolute() or ".." in relative.parts or (len(location) > 1 and location[1] == ":"):
        return False
    # The archive held no links (extraction refuses them), so a path without '..' stays in the folder.
    target = model_dir.joinpath(*relative.parts)
    return target.is_relative_to(folder) and target.is_file()


def check_external_data(model: onnx.ModelProto, model_file: Path, folder: Path, path_in_folder: str) -> None:
    """Each tensor stored outside the model file must name a pushed file next to it (never read here)."""
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not _location_in_folder(location, model_file.parent, folder):
            name, where = tensor.name[:_NAME_CHARS], location[:_NAME_CHARS]
            raise _invalid(
                path_in_folder,
                f"tensor {name!r} keeps its data in {where!r}, which is not a file of the pushed folder "
                "next to the model file",
                tensor=name,
                location=where,
            )


def load_model(model_file: Path, path_in_folder: str) -> onnx.ModelProto:
    """Parse ``model_file`` as an ONNX protobuf without its external data; refuse what is not one."""
    try:
        data = model_file.read_bytes()
        model = onnx.ModelProto()
        # As onnx.load does: a parse that stops short of the end is not the file.
        if model.ParseFromString(data) != len(data):
            raise DecodeError("the protobuf ends before the file does")
    except (DecodeError, ValueError, RecursionError) as exc:
        raise _invalid(path_in_folder, "the file does not parse as an ONNX protobuf") from exc
    if model.ir_version <= 0:
        raise _invalid(path_in_folder, "it has no IR version")
    if not model.HasField("graph"):
        raise _invalid(path_in_folder, "it has no graph")
    return model


def model_file_of(version_dir: Path, filename: str) -> Path | None:
    """The ONNX file Triton's onnxruntime backend loads: the file, or ``model.onnx`` inside that directory."""
    path = version_dir / filename
    if path.is_dir():
        path = path / DEFAULT_ONNX_FILENAME
    return path if path.is_file() else None


def check_onnx_model(folder: Path, version_dir: str, filename: str, signature: ModelSignature) -> None:
    """Check the version's ONNX file (if the folder has one) against the config's signature.

    Raises InvalidInput ``invalid_onnx_model`` for a file that is not an ONNX
    model (or keeps data outside the folder) and InvalidModelConfig
    ``interface_mismatch`` listing every difference with the config.
    """
    model_file = model_file_of(folder / version_dir, filename)
    if model_file is None:
        return
    path_in_folder = model_file.relative_to(folder).as_posix()
    model = load_model(model_file, path_in_folder)
    check_external_data(model, model_file, folder, path_in_folder)
    check_interface(signature, graph_interface(model))
