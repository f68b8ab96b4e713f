"""Build the example Triton model folders from seeded numpy weights.

No model hub is reachable from the build machines, so the examples are
generated: small float32 ONNX graphs made with ``onnx.helper`` and a
``config.pbtxt`` written through Triton's own protobuf schema. The same seed
gives byte-identical files.

Usage::

    python model_repository/build_examples.py [--out DIR]

Tests import this file (it is not a package) for :func:`build_mlp`,
:func:`build_two_inputs`, :func:`build_faulty` and :func:`reference_outputs`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

# Opset 17 / IR 8 load in onnxruntime 1.32 here and in the older onnxruntime
# builds of GPU Triton images that use the native backend for the same folder.
OPSET = 17
IR_VERSION = 8
PRODUCER = "triton-controlplane/model_repository/build_examples.py"
BACKEND = "onnxruntime"
MAX_BATCH_SIZE = 64

MLP_SEED = 1
TWO_INPUTS_SEED = 2


def _write_if_changed(path: Path, data: bytes) -> None:
    # Leave identical files untouched (mtime included): Triton treats a changed
    # config.pbtxt as a new config on the next load.
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        # Atomic swap so a server loading the folder never reads half a file.
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tensor_io(name: str, dims: Sequence[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims])


def _weights(rng: np.random.Generator, name: str, shape: Sequence[int]) -> onnx.TensorProto:
    # Scaled so activations stay around 1 and outputs are easy to compare.
    scale = 1.0 / np.sqrt(shape[0]) if len(shape) > 1 else 0.1
    values = (rng.standard_normal(shape) * scale).astype(np.float32)
    return numpy_helper.from_array(values, name=name)


def _model_bytes(graph: onnx.GraphProto, doc: str) -> bytes:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def _config(
    name: str,
    inputs: Sequence[tuple[str, Sequence[int]]],
    outputs: Sequence[tuple[str, Sequence[int]]],
) -> bytes:
    config = mc.ModelConfig(
        name=name,
        backend=BACKEND,
        max_batch_size=MAX_BATCH_SIZE,
        input=[mc.ModelInput(name=n, data_type=mc.TYPE_FP32, dims=list(d)) for n, d in inputs],
        output=[mc.ModelOutput(name=n, data_type=mc.TYPE_FP32, dims=list(d)) for n, d in outputs],
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)],
    )
    config.dynamic_batching.SetInParent()
    return text_format.MessageToString(config).encode()


def _write_model(out_dir: Path, name: str, version: int, config: bytes, model: bytes) -> Path:
    model_dir = Path(out_dir) / name
    _write_if_changed(model_dir / "config.pbtxt", config)
    _write_if_changed(model_dir / str(version) / "model.onnx", model)
    return model_dir


def mlp_model_bytes(*, seed: int) -> bytes:
    """ONNX bytes of the MLP: INPUT0[16] -> 32 ReLU -> OUTPUT0[4], weights from ``seed``."""
    rng = np.random.default_rng(seed)
    initializers = [
        _weights(rng, "W1", [16, 32]),
        _weights(rng, "B1", [32]),
        _weights(rng, "W2", [32, 4]),
        _weights(rng, "B2", [4]),
    ]
    nodes = [
        helper.make_node("MatMul", ["INPUT0", "W1"], ["h_mm"]),
        helper.make_node("Add", ["h_mm", "B1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        helper.make_node("MatMul", ["h", "W2"], ["o_mm"]),
        helper.make_node("Add", ["o_mm", "B2"], ["OUTPUT0"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [_tensor_io("INPUT0", [16])], [_tensor_io("OUTPUT0", [4])], initializers
    )
    return _model_bytes(graph, f"mlp 16-32-4 seed={seed}")


def build_mlp(out_dir: Path, *, seed: int = MLP_SEED, name: str = "mlp", version: int = 1) -> Path:
    """Write ``out_dir/name/{config.pbtxt, <version>/model.onnx}`` for the MLP; return the folder.

    Call again with another ``seed`` and ``version`` to add a version whose
    outputs differ, e.g. to tell which version served a request.
    """
    config = _config(name, [("INPUT0", [16])], [("OUTPUT0", [4])])
    return _write_model(out_dir, name, version, config, mlp_model_bytes(seed=seed))


def two_inputs_model_bytes(*, seed: int) -> bytes:
    """ONNX bytes of ``OUT[4] = A @ W1 + B @ W2 + BIAS`` and ``SUM[8] = A + B``."""
    rng = np.random.default_rng(seed)
    initializers = [
        _weights(rng, "W1", [8, 4]),
        _weights(rng, "W2", [8, 4]),
        _weights(rng, "BIAS", [4]),
    ]
    nodes = [
        helper.make_node("MatMul", ["A", "W1"], ["a_mm"]),
        helper.make_node("MatMul", ["B", "W2"], ["b_mm"]),
        helper.make_node("Add", ["a_mm", "b_mm"], ["ab"]),
        helper.make_node("Add", ["ab", "BIAS"], ["OUT"]),
        helper.make_node("Add", ["A", "B"], ["SUM"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [_tensor_io("A", [8]), _tensor_io("B", [8])],
        [_tensor_io("OUT", [4]), _tensor_io("SUM", [8])],
        initializers,
    )
    return _model_bytes(graph, f"two_inputs linear 8+8->4 seed={seed}")


def build_two_inputs(
    out_dir: Path, *, seed: int = TWO_INPUTS_SEED, name: str = "two_inputs", version: int = 1
) -> Path:
    """Write the two-input, two-output example under ``out_dir/name``; return the folder."""
    config = _config(name, [("A", [8]), ("B", [8])], [("OUT", [4]), ("SUM", [8])])
    return _write_model(out_dir, name, version, config, two_inputs_model_bytes(seed=seed))


def faulty_model_bytes() -> bytes:
    """ONNX bytes with the MLP's inputs and outputs whose only node is an operator no runtime has."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["INPUT0"], ["OUTPUT0"])],
        "faulty",
        [_tensor_io("INPUT0", [16])],
        [_tensor_io("OUTPUT0", [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
    model.ir_version = IR_VERSION
    return model.SerializeToString(deterministic=True)


def build_faulty(out_dir: Path, name: str, *, version: int = 1) -> Path:
    """Write a folder with a valid MLP config and a ``model.onnx`` no runtime can load; return it.

    Its inputs and outputs match the config, so a push accepts it; Triton fails
    to load it (INVALID_GRAPH: no such operator) and reports the model
    UNAVAILABLE with a reason.
    """
    config = _config(name, [("INPUT0", [16])], [("OUTPUT0", [4])])
    return _write_model(out_dir, name, version, config, faulty_model_bytes())


FLAKY_MODEL_PY = b'''"""A 16-in, 4-out model that fails every request whose first input value is above 0.5."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if (data[..., 0] > 0.5).any():
                error = pb_utils.TritonError("flaky example model: first input value above 0.5")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            out = np.repeat(data.sum(axis=-1, keepdims=True), 4, axis=-1).astype(np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", out)]))
        return responses
'''


def build_flaky(out_dir: Path, name: str = "mlp", *, version: int = 1) -> Path:
    """Write a Python-backend model with the MLP's inputs and outputs that fails some requests.

    Requests whose ``INPUT0[..., 0] > 0.5`` get an error response (about 30% of
    standard-normal inputs); zero inputs succeed, so it passes a smoke test and
    only a canary's analysis can catch it.
    """
    config = mc.ModelConfig(
        name=name,
        backend="python",
        max_batch_size=MAX_BATCH_SIZE,
        input=[mc.ModelInput(name="INPUT0", data_type=mc.TYPE_FP32, dims=[16])],
        output=[mc.ModelOutput(name="OUTPUT0", data_type=mc.TYPE_FP32, dims=[4])],
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)],
    )
    model_dir = Path(out_dir) / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    _write_if_changed(model_dir / "config.pbtxt", text_format.MessageToString(config).encode())
    _write_if_changed(model_dir / str(version) / "model.py", FLAKY_MODEL_PY)
    return model_dir


def _default_model_filename(model_dir: Path) -> str:
    config_path = model_dir / "config.pbtxt"
    if config_path.is_file():
        config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
        if config.default_model_filename:
            return config.default_model_filename
    return "model.onnx"


def reference_outputs(
    model_dir: Path, inputs: dict[str, np.ndarray], *, version: int | None = None
) -> dict[str, np.ndarray]:
    """Run a model folder's ONNX file with onnxruntime directly: the outputs Triton should give.

    ``model_dir`` is the model folder (``<repo>/<name>``); ``version`` defaults
    to the highest numeric version folder. Returns every graph output by name.
    """
    model_dir = Path(model_dir)
    if version is None:
        versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        if not versions:
            raise FileNotFoundError(f"no version folder in {model_dir}")
        version = max(versions)
    path = model_dir / str(version) / _default_model_filename(model_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    """Build ``mlp`` and ``two_inputs`` into ``--out`` (default: this folder)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    for folder in (build_mlp(args.out), build_two_inputs(args.out)):
        print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
