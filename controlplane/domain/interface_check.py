"""Does config.pbtxt describe the ONNX graph it serves? A pure comparison over plain data.

Triton's native onnxruntime backend refuses to load a model whose config
disagrees with its graph, and the CPU stand-in would load it and fail every
request; either way the version can never serve, so a push is refused with
every difference listed.

The graph side is a :class:`GraphInterface` (read from the file by
``controlplane.artifacts.onnx_interface``). Rules, for each tensor the config
declares (``kind`` input or output):

* ``not_in_graph``: the graph has no tensor of that kind with that name.
* ``data_type``: the config's type is not the graph's (see :data:`TRITON_TO_ONNX`).
* ``rank``: config dims, plus a leading batch dimension when ``max_batch_size``
  > 0, do not have as many axes as the graph's shape.
* ``batch_dimension``: with ``max_batch_size`` > 0 the graph's first axis is a
  fixed size; Triton batches requests along it, so it must be dynamic.
* ``dims``: a fixed config dim differs from a fixed graph dim, or a config
  ``-1`` meets a fixed graph dim. A dynamic graph dim accepts any config dim.

And for each graph input the config does not declare: ``not_in_config``
(Triton feeds only declared inputs, and the graph needs all of them). Graph
outputs the config leaves out are fine: Triton serves a subset of outputs.

A graph tensor whose type or shape the file does not give is not compared on
that point. ``config`` and ``graph`` in each difference hold what was compared:
names (``not_in_graph``: the config's name and the graph's names of that kind;
``not_in_config``: the config's names and the graph's name), type names,
shapes (a config batch axis and a graph dynamic axis as ``-1`` / the symbol /
``None``), ``max_batch_size`` and the fixed first dim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controlplane.domain.models import ModelSignature, TensorSpec
from controlplane.errors import InvalidModelConfig

GraphDim = int | str | None
"""One axis of a graph tensor: a fixed size, a symbol (dynamic), or None (dynamic, unnamed)."""

# Triton's data types (config.pbtxt TYPE_<name>; BYTES is the wire name of TYPE_STRING) and the
# ONNX TensorProto element type each one is. Types only one side has are not listed: they never match.
TRITON_TO_ONNX: Mapping[str, str] = {
    "BOOL": "BOOL",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "FP16": "FLOAT16",
    "FP32": "FLOAT",
    "FP64": "DOUBLE",
    "BF16": "BFLOAT16",
    "STRING": "STRING",
    "BYTES": "STRING",
}
# The config spelling of each ONNX type, for messages ("the graph has INT64, TYPE_INT64 in config.pbtxt").
ONNX_TO_TRITON: Mapping[str, str] = {
    onnx: triton for triton, onnx in TRITON_TO_ONNX.items() if triton != "BYTES"
}

MAX_REPORTED = 100
"""Differences listed in an error's details; a hostile graph may have thousands."""
_NAMES_SHOWN = 10
_NAME_CHARS = 200


@dataclass(frozen=True)
class GraphTensor:
    """One input or output of an ONNX graph.

    ``data_type`` is the ONNX element type name ("FLOAT", "STRING"), the kind of
    a value that is not a tensor ("sequence", "map", "optional",
    "sparse_tensor"), or None when the file does not say. ``shape`` is None when
    the file gives no shape (rank unknown).
    """

    name: str
    data_type: str | None
    shape: tuple[GraphDim, ...] | None


@dataclass(frozen=True)
class GraphInterface:
    """The real inputs (initializers excluded) and the outputs of an ONNX graph."""

    inputs: tuple[GraphTensor, ...]
    outputs: tuple[GraphTensor, ...]


@dataclass(frozen=True)
class InterfaceDifference:
    """One way config.pbtxt and the graph disagree, with a sentence naming the tensor."""

    tensor: str
    kind: str
    problem: str
    config: object
    graph: object
    message: str

    def as_dict(self) -> dict[str, object]:
        return {
            "tensor": _clip(self.tensor),
            "kind": self.kind,
            "problem": self.problem,
            "config": self.config,
            "graph": self.graph,
        }


def _clip(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else f"{name[:_NAME_CHARS]}… ({len(name)} characters)"


def _shown(name: str) -> str:
    """A name as a message shows it: quoted, escaped (no control characters), bounded in length."""
    if len(name) <= _NAME_CHARS:
        return repr(name)
    return f"{name[:_NAME_CHARS]!r}… ({len(name)} characters)"


def _names(names: Sequence[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(_shown(n) for n in names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def _dim_text(dim: GraphDim) -> str:
    if dim is None:
        return "?"
    return _shown(dim) if isinstance(dim, str) else str(dim)


def _shape_text(shape: Sequence[GraphDim]) -> str:
    return "[" + ", ".join(_dim_text(d) for d in shape) + "]"


def _graph_shape(shape: Sequence[GraphDim]) -> list[GraphDim]:
    return [_clip(d) if isinstance(d, str) else d for d in shape]


def _data_type(spec: TensorSpec, kind: str, tensor: GraphTensor) -> InterfaceDifference | None:
    if tensor.data_type is None or TRITON_TO_ONNX.get(spec.data_type) == tensor.data_type:
        return None
    equivalent = ONNX_TO_TRITON.get(tensor.data_type)
    spelled = f"TYPE_{equivalent} in config.pbtxt" if equivalent else "no Triton equivalent"
    return InterfaceDifference(
        tensor=spec.name,
        kind=kind,
        problem="data_type",
        config=spec.data_type,
        graph=tensor.data_type,
        message=f"{kind} {_shown(spec.name)} is TYPE_{spec.data_type} in config.pbtxt but "
        f"{tensor.data_type} in the ONNX graph ({spelled})",
    )


def _shape(
    spec: TensorSpec, kind: str, tensor: GraphTensor, max_batch_size: int
) -> InterfaceDifference | None:
    if tensor.shape is None:
        return None
    batched = max_batch_size > 0
    expected = ([-1] if batched else []) + list(spec.dims)
    graph = tensor.shape
    name = _shown(spec.name)
    if len(expected) != len(graph):
        batch_note = f" (dims {list(spec.dims)} plus the batch dimension)" if batched else ""
        return InterfaceDifference(
            tensor=spec.name,
            kind=kind,
            problem="rank",
            config=expected,
            graph=_graph_shape(graph),
            message=f"{kind} {name} has {len(expected)} dimensions in config.pbtxt{batch_note} "
            f"but {len(graph)} in the ONNX graph {_shape_text(graph)}",
        )
    if batched and isinstance(graph[0], int):
        return InterfaceDifference(
            tensor=spec.name,
            kind=kind,
            problem="batch_dimension",
            config=max_batch_size,
            graph=graph[0],
            message=f"{kind} {name}: max_batch_size is {max_batch_size}, so the first dimension of the "
            f"ONNX graph must be dynamic, but it is fixed to {graph[0]} (shape {_shape_text(graph)})",
        )
    inner = graph[1:] if batched else graph
    for axis, (want, have) in enumerate(zip(spec.dims, inner, strict=True), start=1 if batched else 0):
        if not isinstance(have, int) or want == have:
            continue
        why = "accepts any size" if want == -1 else f"is {want}"
        return InterfaceDifference(
            tensor=spec.name,
            kind=kind,
            problem="dims",
            config=list(spec.dims),
            graph=_graph_shape(inner),
            message=f"{kind} {name} has dims {list(spec.dims)} in config.pbtxt but the ONNX graph has "
            f"{_shape_text(graph)} (axis {axis}: the config {why}, the graph fixes {have})",
        )
    return None


def _compare_kind(
    kind: str, specs: Sequence[TensorSpec], tensors: Sequence[GraphTensor], max_batch_size: int
) -> list[InterfaceDifference]:
    by_name: dict[str, GraphTensor] = {}
    for graph_tensor in tensors:
        by_name.setdefault(graph_tensor.name, graph_tensor)
    graph_names = list(by_name)
    found: list[InterfaceDifference] = []
    for spec in specs:
        tensor = by_name.get(spec.name)
        if tensor is None:
            found.append(
                InterfaceDifference(
                    tensor=spec.name,
                    kind=kind,
                    problem="not_in_graph",
                    config=spec.name,
                    graph=[_clip(n) for n in graph_names[:_NAMES_SHOWN]],
                    message=f"{kind} {_shown(spec.name)} is not in the ONNX graph "
                    f"(graph {kind}s: {_names(graph_names)})",
                )
            )
            continue
        for check in (_data_type(spec, kind, tensor), _shape(spec, kind, tensor, max_batch_size)):
            if check is not None:
                found.append(check)
    return found


def _undeclared_inputs(
    specs: Sequence[TensorSpec], tensors: Sequence[GraphTensor]
) -> list[InterfaceDifference]:
    declared = [s.name for s in specs]
    declared_set = set(declared)
    seen: set[str] = set()
    found = []
    for tensor in tensors:
        if tensor.name in declared_set or tensor.name in seen:
            continue
        seen.add(tensor.name)
        found.append(
            InterfaceDifference(
                tensor=tensor.name,
                kind="input",
                problem="not_in_config",
                config=[_clip(n) for n in declared[:_NAMES_SHOWN]],
                graph=tensor.name,
                message=f"the ONNX graph needs input {_shown(tensor.name)}, which config.pbtxt does not "
                f"declare (config inputs: {_names(declared)})",
            )
        )
    return found


def compare_interface(signature: ModelSignature, graph: GraphInterface) -> list[InterfaceDifference]:
    """Every difference between the config's inputs/outputs and the graph's (empty: they agree)."""
    mbs = signature.max_batch_size
    return [
        *_compare_kind("input", signature.inputs, graph.inputs, mbs),
        *_undeclared_inputs(signature.inputs, graph.inputs),
        *_compare_kind("output", signature.outputs, graph.outputs, mbs),
    ]


def check_interface(signature: ModelSignature, graph: GraphInterface) -> None:
    """Raise InvalidModelConfig ``interface_mismatch`` naming the first difference, listing them all."""
    differences = compare_interface(signature, graph)
    if not differences:
        return
    message = f"config.pbtxt does not match the ONNX graph: {differences[0].message}"
    if len(differences) > 1:
        more = len(differences) - 1
        message += f"; and {more} more difference{'s' if more > 1 else ''}"
        if len(differences) > MAX_REPORTED:
            message += f" (the first {MAX_REPORTED} are listed)"
    raise InvalidModelConfig(
        message,
        code="interface_mismatch",
        details=[d.as_dict() for d in differences[:MAX_REPORTED]],
    )
