"""Python-based Triton backend named ``onnxruntime``: a CPU stand-in for the native one.

Triton's Python backend imports this file as ``<backend-directory>/onnxruntime/model.py``
for every model whose config says ``backend: "onnxruntime"`` when no native
``libtriton_onnxruntime.so`` is installed. A standard model folder
(``config.pbtxt`` + ``<version>/model.onnx``) therefore loads and infers here
unchanged, and the same folder uses the native backend on a GPU Triton image.

Behaviour kept close to the native backend:

* the model file is ``<model dir>/<version>/<default_model_filename or model.onnx>``;
* a config whose input/output names do not match the ONNX graph fails to load
  (the native backend refuses it too) instead of failing every request later;
* the native backend's ``intra_op_thread_count`` and ``inter_op_thread_count``
  parameters set the session's threads (0: onnxruntime's default, one per
  core); without them each instance runs one of each. Measured on 2 cores
  (``bench/backend_threads.py``), one thread serves a small model best (a
  second one cost 14-25 % of its throughput, as Triton's frontend needs the
  other core) while one of about ten million weights gained 28-57 % with
  two: a per-model choice, so it is the config's;
* a dynamic batch runs as ONE ``session.run``: inputs are concatenated along
  axis 0 and outputs split back by each request's batch size. Requests that
  cannot be concatenated (different trailing shapes) or a batch whose run
  fails are retried one request at a time, so one bad request only fails itself.

This file runs inside ``triton_python_backend_stub``; it must only import
modules available there (numpy, onnxruntime, ``triton_python_backend_utils``).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside the stub (unit tests of the pure helpers below)
    pb_utils = None

DEFAULT_MODEL_FILENAME = "model.onnx"
DEFAULT_THREADS = 1
"""Session threads (intra- and inter-op) of an instance whose config does not set them."""
THREAD_PARAMETERS = ("intra_op_thread_count", "inter_op_thread_count")
MAX_THREADS = 1024


class BatchingNotPossible(Exception):
    """The requests of a batch cannot be run as one ``session.run``."""


def model_file_path(model_dir: str, version: str, config: dict[str, Any]) -> str:
    """Path of the ONNX file for ``version`` of the model in ``model_dir``."""
    filename = config.get("default_model_filename") or DEFAULT_MODEL_FILENAME
    return os.path.join(model_dir, str(version), filename)


def thread_counts(config: dict[str, Any]) -> tuple[int, int]:
    """(intra-op, inter-op) session threads from the config's parameters, as the native backend reads them.

    A value that is not a whole number from 0 to MAX_THREADS is refused, so
    the model fails to load naming it.
    """
    parameters = config.get("parameters") or {}
    counts = []
    for key in THREAD_PARAMETERS:
        text = str((parameters.get(key) or {}).get("string_value", "")).strip()
        if not text:
            counts.append(DEFAULT_THREADS)
            continue
        if not text.isdigit() or int(text) > MAX_THREADS:
            raise ValueError(f"parameter {key} is {text!r}: give a whole number from 0 to {MAX_THREADS}")
        counts.append(int(text))
    return counts[0], counts[1]


def io_names(config: dict[str, Any], key: str) -> list[str]:
    """Names of the ``input`` or ``output`` entries of a model config (JSON form)."""
    return [str(entry["name"]) for entry in config.get(key, [])]


def check_io_names(
    config_inputs: Sequence[str],
    config_outputs: Sequence[str],
    model_inputs: Sequence[str],
    model_outputs: Sequence[str],
) -> list[str]:
    """Return the mismatches between config and graph names (empty if they agree).

    Every required graph input must be fed, and every configured tensor must
    exist in the graph; otherwise each request would fail at run time.
    """
    problems = []
    unknown_inputs = sorted(set(config_inputs) - set(model_inputs))
    if unknown_inputs:
        problems.append(f"config inputs not in the model: {unknown_inputs}")
    missing_inputs = sorted(set(model_inputs) - set(config_inputs))
    if missing_inputs:
        problems.append(f"model inputs missing from the config: {missing_inputs}")
    unknown_outputs = sorted(set(config_outputs) - set(model_outputs))
    if unknown_outputs:
        problems.append(f"config outputs not in the model: {unknown_outputs}")
    return problems


def concatenate_feeds(
    feeds: Sequence[dict[str, np.ndarray]], input_names: Sequence[str]
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Concatenate per-request feeds along axis 0; return the batch feed and batch sizes.

    Raises :class:`BatchingNotPossible` when the requests disagree on anything
    but the batch dimension (then they must run one by one).
    """
    # A dynamic batch is many requests of a few rows: numpy checks dtypes and
    # trailing shapes in C (casting="no" refuses any dtype but the first
    # request's), so Python only visits each request once per input.
    if not input_names:
        raise BatchingNotPossible("a model without inputs has no batch to concatenate")
    first, *others = input_names
    try:
        sizes = [feed[first].shape[0] for feed in feeds]
    except IndexError:  # a 0-d input has no batch axis
        raise BatchingNotPossible(f"input {first!r} has no batch dimension") from None
    for name in others:
        if [feed[name].shape[0] if feed[name].ndim else -1 for feed in feeds] != sizes:
            raise BatchingNotPossible("inputs of one request disagree on the batch size")
    merged = {}
    for name in input_names:
        arrays = [feed[name] for feed in feeds]
        try:
            merged[name] = np.concatenate(arrays, axis=0, dtype=arrays[0].dtype, casting="no")
        except (TypeError, ValueError) as exc:
            raise BatchingNotPossible(f"input {name!r} differs in shape or type across requests") from exc
    return merged, sizes


def split_outputs(outputs: dict[str, np.ndarray], sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Split batched outputs back into one dict per request, by batch sizes.

    Each part is a view of the batched output (no copy). Raises
    :class:`BatchingNotPossible` if an output's first dimension is not the
    total batch size (a graph that does not keep the batch axis).
    """
    bounds = list(itertools.accumulate(sizes, initial=0))
    total = bounds[-1]
    per_request: list[dict[str, np.ndarray]] = [{} for _ in sizes]
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise BatchingNotPossible(f"output {name!r} has shape {value.shape}, expected a batch of {total}")
        # Plain slices: np.split costs several microseconds per part in Python.
        for part, start, stop in zip(per_request, bounds, bounds[1:], strict=False):
            part[name] = value[start:stop]
    return per_request


def to_onnx_strings(array: np.ndarray) -> np.ndarray:
    """Turn Triton BYTES elements (``bytes`` objects) into ``str`` for onnxruntime."""
    flat = [item.decode("utf-8") if isinstance(item, bytes) else item for item in array.ravel()]
    return np.array(flat, dtype=object).reshape(array.shape)


class TritonPythonModel:
    """One model instance: an onnxruntime CPU session over the version's ONNX file."""

    def initialize(self, args: dict[str, str]) -> None:
        """Open the ONNX file and check it against the model config."""
        config = json.loads(args["model_config"])
        self._model_name = args.get("model_name", "")
        self._max_batch_size = int(config.get("max_batch_size", 0))
        path = model_file_path(args["model_repository"], args["model_version"], config)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model file not found: {path}")

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = thread_counts(config)
        self._session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

        model_inputs = [node.name for node in self._session.get_inputs()]
        model_outputs = [node.name for node in self._session.get_outputs()]
        self._input_names = io_names(config, "input") or model_inputs
        self._output_names = io_names(config, "output") or model_outputs
        problems = check_io_names(self._input_names, self._output_names, model_inputs, model_outputs)
        if problems:
            raise ValueError(f"config does not match {path}: " + "; ".join(problems))
        self._string_inputs = {
            node.name for node in self._session.get_inputs() if node.type == "tensor(string)"
        }

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run all ``requests`` (one dynamic batch) and return one response per request."""
        responses: list[Any] = [None] * len(requests)
        # The readable requests' feeds, and their places in ``requests``.
        feeds: list[dict[str, np.ndarray]] = []
        pending: list[int] = []
        for index, request in enumerate(requests):
            try:
                feeds.append(self._read_inputs(request))
            except Exception as exc:  # noqa: BLE001 - a bad request gets an error response, not a crash
                responses[index] = self._error_response(exc, invalid_arg=True)
            else:
                pending.append(index)

        if self._max_batch_size > 0 and len(feeds) > 1:
            try:
                batch_outputs = self._run_batched(feeds)
            except Exception:  # noqa: BLE001
                # Fall through to one run per request: the failure then lands
                # only on the request(s) that cause it.
                pass
            else:
                for index, outputs in zip(pending, batch_outputs, strict=True):
                    responses[index] = self._response(outputs)
                return responses

        for index, feed in zip(pending, feeds, strict=True):
            try:
                outputs = self._run(feed)
            except Exception as exc:  # noqa: BLE001 - becomes this request's error response
                # onnxruntime says InvalidArgument for bad shapes/types in the
                # request itself; anything else is the model's or our fault.
                responses[index] = self._error_response(exc, invalid_arg=isinstance(exc, InvalidArgument))
            else:
                responses[index] = self._response(outputs)
        return responses

    def finalize(self) -> None:
        """Release the onnxruntime session."""
        self._session = None

    def _read_inputs(self, request: Any) -> dict[str, np.ndarray]:
        feed = {}
        for name in self._input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"request is missing input {name!r}")
            array = tensor.as_numpy()
            if name in self._string_inputs and array.dtype == np.object_:
                array = to_onnx_strings(array)
            feed[name] = array
        return feed

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, feed)
        return dict(zip(self._output_names, values, strict=True))

    def _run_batched(self, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        merged, sizes = concatenate_feeds(feeds, self._input_names)
        return split_outputs(self._run(merged), sizes)

    def _response(self, outputs: dict[str, np.ndarray]) -> Any:
        try:
            # No np.ascontiguousarray: the parts are row slices of a C-ordered output, and
            # the stub makes any other array contiguous itself before it copies it out.
            tensors = [pb_utils.Tensor(name, value) for name, value in outputs.items()]
        except Exception as exc:  # noqa: BLE001 - becomes this response's error
            # An output numpy type Triton cannot carry fails this response only.
            return self._error_response(exc, invalid_arg=False)
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _error_response(self, exc: Exception, *, invalid_arg: bool) -> Any:
        message = f"{self._model_name}: {type(exc).__name__}: {exc}"
        code_name = "INVALID_ARG" if invalid_arg else "INTERNAL"
        code = getattr(pb_utils.TritonError, code_name, None)
        error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
        return pb_utils.InferenceResponse(output_tensors=[], error=error)
