"""config.pbtxt checks: what the control plane refuses before anything is stored."""

from __future__ import annotations

import pytest

from controlplane.artifacts.config_fields import DEFAULT_ALLOWED_BACKENDS, FolderFiles
from controlplane.artifacts.model_config import (
    ConfigReview,
    code_runners_of,
    read_signature,
    review_model_folder,
)
from controlplane.errors import InvalidModelConfig

GOOD = b"""
name: "mlp"
backend: "onnxruntime"
max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]
"""


def test_a_complete_config_gives_the_io_signature() -> None:
    sig = read_signature(GOOD, model_name="mlp")
    assert sig.backend == "onnxruntime"
    assert sig.max_batch_size == 8
    assert [(t.name, t.data_type, t.dims) for t in sig.inputs] == [("INPUT0", "FP32", (16,))]
    assert [(t.name, t.data_type, t.dims) for t in sig.outputs] == [("OUTPUT0", "FP32", (-1,))]


def test_platform_counts_as_a_backend() -> None:
    text = GOOD.replace(b'backend: "onnxruntime"', b'platform: "onnxruntime_onnx"')
    assert read_signature(text, model_name="mlp").backend == "onnxruntime_onnx"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"input [ { name: ", "malformed"),
        (b'backend: "onnxruntime"\nnot_a_field: 3', "malformed"),
        (GOOD.replace(b'name: "mlp"', b'name: "other"'), "names the model 'other'"),
        (GOOD.replace(b'backend: "onnxruntime"', b""), "neither backend nor platform"),
        (b'backend: "onnxruntime"\noutput [{ name: "O" data_type: TYPE_FP32 dims: [1] }]', "no input"),
        (b'backend: "onnxruntime"\ninput [{ name: "I" data_type: TYPE_FP32 dims: [1] }]', "no output"),
        (GOOD.replace(b"data_type: TYPE_FP32 dims: [ 16 ]", b"dims: [ 16 ]"), "no data_type"),
        (GOOD.replace(b"dims: [ 16 ]", b""), "no dims"),
        (GOOD.replace(b"dims: [ 16 ]", b"dims: [ 0 ]"), "invalid dims"),
        (GOOD.replace(b'name: "INPUT0" ', b""), "has no name"),
        (GOOD + b"version_policy: { specific: { versions: [1] } }", "version_policy"),
        (b"\xff\xfe", "not UTF-8"),
        (GOOD.replace(b"max_batch_size: 8", b"max_batch_size: -1"), "must not be negative"),
    ],
)
def test_incomplete_or_malformed_configs_are_refused_naming_the_problem(text: bytes, problem: str) -> None:
    with pytest.raises(InvalidModelConfig, match=problem) as refused:
        read_signature(text, model_name="mlp")
    assert refused.value.code == "invalid_model_config"


# -- fields that name files, libraries or backends ------------------------------------------------

FILES = FolderFiles(
    paths={"config.pbtxt", "1/model.onnx", "labels.txt", "warmup/input0.bin", "1/savedmodel/saved.pb"},
    version_dir="1",
)


def review(
    extra: bytes, *, base: bytes = GOOD, allowed: tuple[str, ...] = DEFAULT_ALLOWED_BACKENDS
) -> ConfigReview:
    return review_model_folder(base + extra, model_name="mlp", files=FILES, allowed_backends=allowed)


def test_path_fields_that_name_pushed_files_are_accepted() -> None:
    result = review(
        b'default_model_filename: "model.onnx"\n'
        b'cc_model_filenames { key: "7.5" value: "savedmodel" }\n'
        b'model_warmup [{ name: "w" batch_size: 1 inputs { key: "INPUT0" value: '
        b'{ data_type: TYPE_FP32 dims: [16] input_data_file: "input0.bin" } } }]\n',
        base=GOOD.replace(b"dims: [ -1 ] }", b'dims: [ -1 ] label_filename: "labels.txt" }'),
    )
    assert result.code_runners == ()


@pytest.mark.parametrize(
    ("extra", "field", "value"),
    [
        (b'default_model_filename: "../../../../etc/passwd"', "default_model_filename",
         "../../../../etc/passwd"),
        (b'default_model_filename: "/etc/passwd"', "default_model_filename", "/etc/passwd"),
        (b'default_model_filename: "model.onnx\\000x"', "default_model_filename", "model.onnx\0x"),
        (b'default_model_filename: "other.onnx"', "default_model_filename", "other.onnx"),
        (b'cc_model_filenames { key: "7.5" value: "../2/model.plan" }', "cc_model_filenames['7.5']",
         "../2/model.plan"),
        (b'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "/opt/envs/evil.tar.gz" } }',
         "parameters['EXECUTION_ENV_PATH']", "/opt/envs/evil.tar.gz"),
        (b'parameters { key: "EXECUTION_ENV_PATH" value: '
         b'{ string_value: "$$TRITON_MODEL_DIRECTORY/../../env.tar.gz" } }',
         "parameters['EXECUTION_ENV_PATH']", "$$TRITON_MODEL_DIRECTORY/../../env.tar.gz"),
        (b'parameters { key: "cache" value: { string_value: "/var/lib/cache" } }',
         "parameters['cache']", "/var/lib/cache"),
        (b'model_warmup [{ name: "w" batch_size: 1 inputs { key: "INPUT0" value: '
         b'{ data_type: TYPE_FP32 dims: [16] input_data_file: "../../../etc/shadow" } } }]',
         "model_warmup['w'].inputs['INPUT0'].input_data_file", "../../../etc/shadow"),
        (b'optimization { execution_accelerators { gpu_execution_accelerator [{ name: "tensorrt" '
         b'parameters { key: "trt_engine_cache_path" value: "/etc/cron.d" } }] } }',
         "optimization.execution_accelerators.gpu_execution_accelerator['tensorrt']['trt_engine_cache_path']",
         "/etc/cron.d"),
        (b'model_operations { op_library_filename: "/tmp/evil.so" }',
         "model_operations.op_library_filename", "/tmp/evil.so"),
        (b'model_repository_agents { agents [{ name: "../../../tmp/x" }] }',
         "model_repository_agents.agents.name", "../../../tmp/x"),
        (b'runtime: "../../../tmp/evil.so"', "runtime", "../../../tmp/evil.so"),
        (b'sequence_batching { state [{ input_name: "S" output_name: "S_OUT" data_type: TYPE_FP32 dims: [1] '
         b'initial_state [{ data_type: TYPE_FP32 dims: [1] data_file: "/etc/passwd" name: "i" }] }] }',
         "sequence_batching.state['S'].initial_state.data_file", "/etc/passwd"),
    ],
)
def test_a_path_field_that_leaves_the_model_folder_is_refused_naming_field_and_value(
    extra: bytes, field: str, value: str
) -> None:
    with pytest.raises(InvalidModelConfig) as refused:
        review(extra)
    assert refused.value.code == "invalid_model_config"
    assert refused.value.details == {"field": field, "value": value}
    assert field in refused.value.message and repr(value) in refused.value.message


def test_a_label_file_outside_the_folder_is_refused() -> None:
    config = GOOD.replace(b"dims: [ -1 ] }", b'dims: [ -1 ] label_filename: "../../../etc/hosts" }')
    with pytest.raises(InvalidModelConfig, match=r"label_filename '\.\./\.\./\.\./etc/hosts' has a '\.\.'"):
        review(b"", base=config)


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        (GOOD.replace(b'backend: "onnxruntime"', b'backend: "../../../../tmp/evil"'), "backend", "'..'"),
        (GOOD.replace(b'backend: "onnxruntime"', b'backend: "vllm"'), "backend", "not an allowed backend"),
        (GOOD.replace(b'backend: "onnxruntime"', b'platform: "custom"'), "platform", "allowed platform"),
    ],
)
def test_backends_and_platforms_come_from_the_allowlist(text: bytes, field: str, problem: str) -> None:
    with pytest.raises(InvalidModelConfig, match=problem) as refused:
        review(b"", base=text)
    assert refused.value.details["field"] == field


def test_the_allowlist_is_configurable_and_platforms_follow_their_backend() -> None:
    onnx_platform = GOOD.replace(b'backend: "onnxruntime"', b'platform: "onnxruntime_onnx"')
    assert review(b"", base=onnx_platform).signature.backend == "onnxruntime_onnx"
    with pytest.raises(InvalidModelConfig, match="platform 'onnxruntime_onnx' is not an allowed platform"):
        review(b"", base=onnx_platform, allowed=("python",))
    assert review(b"", base=GOOD.replace(b"onnxruntime", b"vllm"), allowed=("vllm",)).code_runners == (
        "backend 'vllm'",
    )


@pytest.mark.parametrize(
    ("text", "runner"),
    [
        (GOOD.replace(b'backend: "onnxruntime"', b'backend: "python"'), "backend 'python'"),
        (GOOD.replace(b'backend: "onnxruntime"', b'backend: "pytorch"\nruntime: "model.py"'),
         "runtime 'model.py'"),
        (GOOD + b'model_operations { op_library_filename: "libcustom_ops.so" }',
         "model_operations.op_library_filename"),
        (GOOD + b'model_repository_agents { agents [{ name: "checksum" }] }',
         "model repository agent 'checksum'"),
    ],
)
def test_configs_that_run_the_folders_code_are_named(text: bytes, runner: str) -> None:
    assert runner in review(b"", base=text).code_runners
    assert runner in code_runners_of(text)


def test_native_backends_run_no_folder_code() -> None:
    assert code_runners_of(GOOD) == ()
    assert code_runners_of(GOOD.replace(b'backend: "onnxruntime"', b'platform: "tensorrt_plan"')) == ()
