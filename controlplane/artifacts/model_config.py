"""config.pbtxt parsing with Triton's own protobuf schema (tritonclient's ``model_config_pb2``)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from google.protobuf import text_format

from controlplane.artifacts.config_fields import (
    DEFAULT_ALLOWED_BACKENDS,
    FolderFiles,
    backend_of,
    check_backend,
    check_path_fields,
    code_runners,
)
from controlplane.artifacts.protobuf_modules import model_config_pb2
from controlplane.domain.models import ModelSignature, TensorSpec
from controlplane.errors import InvalidModelConfig

MAX_CONFIG_BYTES = 1024 * 1024
ONNX_BACKEND = "onnxruntime"
DEFAULT_ONNX_FILENAME = "model.onnx"


def parse_model_config(text: str) -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt text; InvalidModelConfig names the line and problem if it is malformed."""
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise InvalidModelConfig(f"config.pbtxt is malformed: {exc}") from exc
    return config


def _tensor(kind: str, tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput) -> TensorSpec:
    if not tensor.name:
        raise InvalidModelConfig(f"config.pbtxt: an {kind} has no name")
    if tensor.data_type == model_config_pb2.TYPE_INVALID:
        raise InvalidModelConfig(f"config.pbtxt: {kind} {tensor.name!r} has no data_type")
    if not tensor.dims:
        raise InvalidModelConfig(f"config.pbtxt: {kind} {tensor.name!r} has no dims")
    if any(d == 0 or d < -1 for d in tensor.dims):
        raise InvalidModelConfig(f"config.pbtxt: {kind} {tensor.name!r} has invalid dims {list(tensor.dims)}")
    data_type = model_config_pb2.DataType.Name(tensor.data_type).removeprefix("TYPE_")
    return TensorSpec(name=tensor.name, data_type=data_type, dims=tuple(int(d) for d in tensor.dims))


def model_signature(config: model_config_pb2.ModelConfig, *, model_name: str) -> ModelSignature:
    """Check what the control plane relies on and return the model's I/O signature.

    Requires a backend or platform, at least one input and one output, each
    with a name, a data type and dims; a ``name`` that, if given, equals the
    model's name (Triton refuses a mismatch at load time); and no
    ``version_policy: specific`` (the control plane chooses which version serves).
    """
    if config.name and config.name != model_name:
        raise InvalidModelConfig(
            f"config.pbtxt names the model {config.name!r} but it is pushed as {model_name!r}"
        )
    backend = config.backend or config.platform
    if not backend:
        raise InvalidModelConfig("config.pbtxt sets neither backend nor platform")
    if not config.input:
        raise InvalidModelConfig("config.pbtxt declares no input")
    if not config.output:
        raise InvalidModelConfig("config.pbtxt declares no output")
    if config.max_batch_size < 0:
        raise InvalidModelConfig("config.pbtxt: max_batch_size must not be negative")
    if config.HasField("version_policy") and config.version_policy.HasField("specific"):
        raise InvalidModelConfig(
            "config.pbtxt: version_policy 'specific' is not allowed; the control plane picks the version"
        )
    inputs = tuple(_tensor("input", t) for t in config.input)
    outputs = tuple(_tensor("output", t) for t in config.output)
    for kind, tensors in (("input", inputs), ("output", outputs)):
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise InvalidModelConfig(f"config.pbtxt: duplicate {kind} names {names}")
    return ModelSignature(
        backend=backend, max_batch_size=int(config.max_batch_size), inputs=inputs, outputs=outputs
    )


def decode_config(config_text: bytes) -> model_config_pb2.ModelConfig:
    """Decode and parse config.pbtxt bytes (size, encoding and syntax checked)."""
    if len(config_text) > MAX_CONFIG_BYTES:
        raise InvalidModelConfig(f"config.pbtxt is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = config_text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidModelConfig(f"config.pbtxt is not UTF-8 text: {exc}") from exc
    return parse_model_config(text)


def read_signature(config_text: bytes, *, model_name: str) -> ModelSignature:
    """Decode, parse and check config.pbtxt bytes."""
    return model_signature(decode_config(config_text), model_name=model_name)


@dataclass(frozen=True)
class ConfigReview:
    """A config.pbtxt that passed every check: its I/O signature and what in it runs the folder's code.

    ``onnx_model_filename``: the file (in the version directory) Triton's
    onnxruntime backend loads, None when another backend serves the model.
    """

    signature: ModelSignature
    code_runners: tuple[str, ...]
    onnx_model_filename: str | None = None


def review_model_folder(
    config_text: bytes,
    *,
    model_name: str,
    files: FolderFiles,
    allowed_backends: Collection[str] = DEFAULT_ALLOWED_BACKENDS,
) -> ConfigReview:
    """Check config.pbtxt against the pushed folder: I/O signature, allowed backend, path-bearing fields.

    InvalidModelConfig names the field and its value; nothing is stored before this passes.
    """
    config = decode_config(config_text)
    check_backend(config, allowed_backends)
    signature = model_signature(config, model_name=model_name)
    check_path_fields(config, files)
    onnx_file = None
    if backend_of(config) == ONNX_BACKEND:
        onnx_file = config.default_model_filename or DEFAULT_ONNX_FILENAME
    return ConfigReview(signature=signature, code_runners=code_runners(config), onnx_model_filename=onnx_file)


def code_runners_of(config_text: bytes) -> tuple[str, ...]:
    """What in a stored config.pbtxt runs the folder's code (see ``config_fields.code_runners``)."""
    return code_runners(decode_config(config_text))
