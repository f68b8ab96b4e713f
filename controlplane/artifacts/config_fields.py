"""Fields of config.pbtxt that name files, directories, libraries or backends, and what they may hold.

Triton resolves these fields against the model folder, its version directory,
its backend directory or the library search path. A value with ``..``, an
absolute path or a NUL byte lets a pushed folder make Triton open (or
``dlopen``) any file on the server, so each such field is checked here
before anything is stored. Fields whose file must come with the folder are
also checked against the pushed files.

Some settings make Triton run code that came with the folder (the Python
backend's ``model.py``, a backend that is not one of the native ones, a
Python ``runtime``, custom operation libraries, repository agents):
:func:`code_runners` names them so that policy can refuse them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from controlplane.artifacts.protobuf_modules import model_config_pb2

# Re-exported: the checks here default to it, and callers import it from here.
from controlplane.domain.policy import DEFAULT_ALLOWED_BACKENDS as DEFAULT_ALLOWED_BACKENDS
from controlplane.errors import InvalidModelConfig

# Backends whose implementation ships with Triton and runs no code from the model folder.
NATIVE_BACKENDS = frozenset({"onnxruntime", "tensorrt", "pytorch", "tensorflow", "openvino", "ensemble"})
# Triton's platform names and the backend each one selects.
PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "pytorch_libtorch": "pytorch",
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
    "ensemble": "ensemble",
}
# Triton substitutes this for the model folder in parameter values (Python backend's EXECUTION_ENV_PATH).
MODEL_DIRECTORY_VARIABLE = "$$TRITON_MODEL_DIRECTORY"
PATH_PARAMETERS = frozenset({"EXECUTION_ENV_PATH"})


@dataclass(frozen=True)
class FolderFiles:
    """The pushed files (paths relative to the model folder) and the version directory among them."""

    paths: Collection[str]
    version_dir: str

    def holds(self, path: str) -> bool:
        """A file at ``path``, or a directory with files under it."""
        prefix = path.rstrip("/") + "/"
        return path in self.paths or any(p.startswith(prefix) for p in self.paths)


def _refuse(field: str, value: str, why: str) -> InvalidModelConfig:
    return InvalidModelConfig(
        f"config.pbtxt: {field} {value!r} {why}", details={"field": field, "value": value}
    )


def check_no_nul(field: str, value: str) -> None:
    if "\0" in value:
        raise _refuse(field, value, "contains a NUL byte")


def check_relative(field: str, value: str) -> None:
    """A path that stays inside the folder it is resolved against: relative, no ``..``, no NUL."""
    check_no_nul(field, value)
    if value.startswith(("/", "\\", "~")) or (len(value) > 1 and value[1] == ":"):
        raise _refuse(field, value, "is an absolute path; name a file inside the model folder")
    if "\\" in value:
        raise _refuse(field, value, "contains a backslash; use '/' between path components")
    if ".." in value.split("/"):
        raise _refuse(field, value, "has a '..' component; name a file inside the model folder")


def check_bare_name(field: str, value: str) -> None:
    """A single name (a backend, a library, an agent): no path separator at all."""
    check_relative(field, value)
    if "/" in value or value in (".", ""):
        raise _refuse(field, value, "must be a plain name, not a path")


def _check_in_folder(field: str, value: str, base: str, files: FolderFiles) -> None:
    check_relative(field, value)
    path = "/".join(part for part in (base, value) if part and part != ".")
    path = "/".join(part for part in path.split("/") if part not in ("", "."))
    if not files.holds(path):
        raise _refuse(field, value, f"names {path!r}, which is not in the pushed folder")


def _check_parameter(field: str, value: str, files: FolderFiles | None) -> None:
    check_no_nul(field, value)
    if not value.startswith(MODEL_DIRECTORY_VARIABLE):
        check_relative(field, value)
        return
    rest = value.removeprefix(MODEL_DIRECTORY_VARIABLE).lstrip("/")
    try:
        if files is not None:
            _check_in_folder(field, rest, "", files)
        else:
            check_relative(field, rest)
    except InvalidModelConfig as exc:
        # Name the value as written in config.pbtxt, variable included.
        raise InvalidModelConfig(
            exc.message.replace(repr(rest), repr(value), 1), details={"field": field, "value": value}
        ) from None


def backend_of(config: model_config_pb2.ModelConfig) -> str:
    """The backend Triton will use: ``backend``, else the one ``platform`` selects, else the platform."""
    return config.backend or PLATFORM_BACKENDS.get(config.platform, config.platform)


def check_backend(config: model_config_pb2.ModelConfig, allowed: Collection[str]) -> None:
    """``backend`` and ``platform`` must be (or select) an allowed backend."""
    allowed_set = set(allowed)
    if config.backend:
        check_bare_name("backend", config.backend)
        if config.backend not in allowed_set:
            known = ", ".join(sorted(allowed_set))
            raise _refuse("backend", config.backend, f"is not an allowed backend ({known})")
    if config.platform:
        check_bare_name("platform", config.platform)
        selected = PLATFORM_BACKENDS.get(config.platform)
        if selected is None or selected not in allowed_set:
            platforms = sorted(p for p, b in PLATFORM_BACKENDS.items() if b in allowed_set)
            raise _refuse("platform", config.platform, f"is not an allowed platform ({', '.join(platforms)})")
    if config.runtime:
        check_bare_name("runtime", config.runtime)


def _parameter_values(config: model_config_pb2.ModelConfig) -> Iterable[tuple[str, str, str]]:
    """(field, key, value) of every free-form string parameter Triton passes to a backend or agent."""
    for key, param in config.parameters.items():
        yield f"parameters[{key!r}]", key, param.string_value
    accelerators = config.optimization.execution_accelerators
    for kind, group in (
        ("gpu_execution_accelerator", accelerators.gpu_execution_accelerator),
        ("cpu_execution_accelerator", accelerators.cpu_execution_accelerator),
    ):
        for accelerator in group:
            check_no_nul(f"optimization.execution_accelerators.{kind}.name", accelerator.name)
            for key, value in accelerator.parameters.items():
                yield f"optimization.execution_accelerators.{kind}[{accelerator.name!r}][{key!r}]", key, value
    for agent in config.model_repository_agents.agents:
        for key, value in agent.parameters.items():
            yield f"model_repository_agents[{agent.name!r}].parameters[{key!r}]", key, value


def check_path_fields(config: model_config_pb2.ModelConfig, files: FolderFiles) -> None:
    """Every field that names a file, directory or library: inside the folder, and present where required."""
    version = files.version_dir
    if config.default_model_filename:
        _check_in_folder("default_model_filename", config.default_model_filename, version, files)
    for arch, filename in config.cc_model_filenames.items():
        check_no_nul("cc_model_filenames", arch)
        _check_in_folder(f"cc_model_filenames[{arch!r}]", filename, version, files)
    for output in config.output:
        if output.label_filename:
            _check_in_folder(f"output[{output.name!r}].label_filename", output.label_filename, "", files)
    for warmup in config.model_warmup:
        for name, data in warmup.inputs.items():
            if data.HasField("input_data_file"):
                field = f"model_warmup[{warmup.name!r}].inputs[{name!r}].input_data_file"
                _check_in_folder(field, data.input_data_file, "warmup", files)
    for state in config.sequence_batching.state:
        for initial in state.initial_state:
            if initial.HasField("data_file"):
                field = f"sequence_batching.state[{state.input_name!r}].initial_state.data_file"
                _check_in_folder(field, initial.data_file, "initial_state", files)
    for library in config.model_operations.op_library_filename:
        check_relative("model_operations.op_library_filename", library)
    for agent in config.model_repository_agents.agents:
        check_bare_name("model_repository_agents.agents.name", agent.name)
    for step in config.ensemble_scheduling.step:
        check_bare_name("ensemble_scheduling.step.model_name", step.model_name)
        if step.model_namespace:
            check_bare_name("ensemble_scheduling.step.model_namespace", step.model_namespace)
    for field, key, value in _parameter_values(config):
        _check_parameter(field, value, files if key in PATH_PARAMETERS else None)


def code_runners(config: model_config_pb2.ModelConfig) -> tuple[str, ...]:
    """What in this config makes Triton run code that came with the model folder (empty: nothing)."""
    found: list[str] = []
    backend = backend_of(config)
    if backend and backend not in NATIVE_BACKENDS:
        found.append(f"backend {backend!r}")
    if config.runtime.endswith(".py"):
        found.append(f"runtime {config.runtime!r}")
    if config.model_operations.op_library_filename:
        found.append("model_operations.op_library_filename")
    for agent in config.model_repository_agents.agents:
        found.append(f"model repository agent {agent.name!r}")
    return tuple(found)
