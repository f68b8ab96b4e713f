"""Triton adapter over tritonclient gRPC: load, poll, smoke-test, unload.

tritonclient exceptions never leave this module: they become
``TritonUnavailable`` (retryable: the server did not answer) or
``ModelLoadFailed`` / ``SmokeTestFailed`` (permanent for that version).

A pool's Triton restricts its admin APIs (repository, config, shared
memory, statistics, trace, logging) to requests carrying the pool's admin
key, so the client sends ``headers`` (see
``controlplane.triton.server_command.admin_headers``) on every call. A
refusal for a missing or wrong key comes back over gRPC as UNAVAILABLE; it
becomes ``TritonAccessDenied``, not ``TritonUnavailable``: retrying cannot
help.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from controlplane.domain.models import ModelSignature
from controlplane.errors import (
    ModelLoadFailed,
    SmokeTestFailed,
    TritonAccessDenied,
    TritonUnavailable,
)

_UNREACHABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
# Triton's words when a restricted API is called without the right header.
_RESTRICTED = "is restricted, expecting header"


@dataclass(frozen=True)
class ModelStatus:
    """One row of Triton's repository index."""

    name: str
    version: str
    state: str
    reason: str


def _translate(exc: InferenceServerException, what: str) -> Exception:
    status = exc.status() or ""
    if _RESTRICTED in (exc.message() or ""):
        return TritonAccessDenied(f"Triton refused {what}: the admin key is missing or wrong")
    if status in _UNREACHABLE or "failed to connect" in (exc.message() or "").lower():
        return TritonUnavailable(f"Triton did not answer {what}: {exc.message()}")
    return ModelLoadFailed(f"{what}: {exc.message()}")


def zero_inputs(signature: ModelSignature) -> dict[str, np.ndarray]:
    """A zero-filled input per declared input, batch 1 (variable dims 1; BYTES as empty strings).

    SmokeTestFailed when an input's data type has no numpy form.
    """
    arrays: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = [1 if d == -1 else d for d in spec.dims]
        if signature.max_batch_size > 0:
            shape = [1, *shape]
        dtype = triton_to_np_dtype(spec.data_type)
        if dtype is None:
            raise SmokeTestFailed(
                f"input {spec.name!r} has a data type ({spec.data_type}) with no numpy form"
            )
        data = np.zeros(shape, dtype=np.object_ if spec.data_type == "BYTES" else dtype)
        if spec.data_type == "BYTES":
            data.fill(b"")
        arrays[spec.name] = data
    return arrays


class TritonClient:
    """Control calls to one Triton server (its own gRPC port, never through the proxy)."""

    def __init__(self, url: str, *, timeout: float = 10.0, headers: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self._headers = dict(headers) if headers else None
        self._client = grpcclient.InferenceServerClient(url=url)

    def close(self) -> None:
        self._client.close()

    def is_ready(self) -> bool:
        """Server readiness; False (never an exception) when it does not answer."""
        try:
            return bool(self._client.is_server_ready(client_timeout=self.timeout, headers=self._headers))
        except InferenceServerException:
            return False

    def wait_server_ready(self, timeout: float, *, sleep: Callable[[float], None] = time.sleep) -> None:
        """Poll until the server is ready; TritonUnavailable after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise TritonUnavailable(f"Triton at {self.url} not ready after {timeout:.0f} s")
            sleep(0.1)

    def ready_anywhere(self) -> set[str]:
        """Names of the models with a READY version."""
        return {s.name for s in self.repository_index() if s.state == "READY"}

    def repository_index(self) -> list[ModelStatus]:
        """Every model Triton knows of, with state and reason."""
        try:
            index = self._client.get_model_repository_index(
                as_json=True, client_timeout=self.timeout, headers=self._headers
            )
        except InferenceServerException as exc:
            raise _translate(exc, "repository index") from exc
        return [
            ModelStatus(
                name=m.get("name", ""),
                version=m.get("version", ""),
                state=m.get("state", ""),
                reason=m.get("reason", ""),
            )
            for m in index.get("models", [])
        ]

    def model_config(self, model: str) -> dict[str, Any]:
        """The configuration Triton runs for ``model`` (get_model_config's "config" object, as JSON).

        ModelLoadFailed when Triton has no such loaded model.
        """
        try:
            answer = self._client.get_model_config(
                model, as_json=True, client_timeout=self.timeout, headers=self._headers
            )
        except InferenceServerException as exc:
            raise _translate(exc, f"config of {model!r}") from exc
        return dict(answer.get("config", {}))

    def model_status(self, model: str) -> list[ModelStatus]:
        return [m for m in self.repository_index() if m.name == model]

    def is_model_ready(self, model: str, version: int | None = None) -> bool:
        try:
            return bool(
                self._client.is_model_ready(
                    model,
                    "" if version is None else str(version),
                    client_timeout=self.timeout,
                    headers=self._headers,
                )
            )
        except InferenceServerException:
            return False

    def load(self, model: str, version: int, *, timeout: float) -> None:
        """Load (or reload) ``model`` from the repository and wait until ``version`` is READY.

        ModelLoadFailed carries Triton's reason; what served before keeps serving.
        """
        try:
            self._client.load_model(model, client_timeout=timeout, headers=self._headers)
        except InferenceServerException as exc:
            if _RESTRICTED in (exc.message() or ""):
                raise _translate(exc, f"loading {model!r}") from exc
            # The index has the precise reason; the load call's message is often generic.
            reason = self._unavailable_reason(model, version) or exc.message()
            if exc.status() in _UNREACHABLE and not self.is_ready():
                raise TritonUnavailable(f"Triton did not answer loading {model!r}: {reason}") from exc
            raise ModelLoadFailed(f"Triton failed to load {model!r} version {version}: {reason}") from exc
        self.wait_model_ready(model, version, timeout=timeout)

    def _unavailable_reason(self, model: str, version: int) -> str | None:
        try:
            statuses = self.model_status(model)
        except TritonUnavailable:
            return None
        for s in statuses:
            if s.version in ("", str(version)) and s.reason:
                return s.reason
        return None

    def wait_model_ready(self, model: str, version: int, *, timeout: float) -> None:
        """Poll the repository index until ``version`` is READY; ModelLoadFailed when UNAVAILABLE."""
        deadline = time.monotonic() + timeout
        while True:
            for s in self.model_status(model):
                if s.version != str(version):
                    continue
                if s.state == "READY":
                    return
                if s.state == "UNAVAILABLE":
                    raise ModelLoadFailed(
                        f"Triton failed to load {model!r} version {version}: {s.reason or 'no reason given'}"
                    )
            if time.monotonic() > deadline:
                raise ModelLoadFailed(f"{model!r} version {version} not READY after {timeout:.0f} s")
            time.sleep(0.05)

    def unload(self, model: str) -> None:
        """Unload a model. Callers make sure it gets no traffic first: requests after this fail."""
        try:
            self._client.unload_model(model, client_timeout=self.timeout, headers=self._headers)
        except InferenceServerException as exc:
            raise _translate(exc, f"unload of {model!r}") from exc

    def infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        *,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """One inference on ``version`` straight to this server: the named outputs as arrays.

        The arrays are sent with their own shapes (batch dimension included);
        the data type is the one numpy's type maps to in Triton. Raises
        TritonUnavailable when the server does not answer, SmokeTestFailed
        (with Triton's words) when it refuses or fails the request.
        """
        tensors = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        wanted = [grpcclient.InferRequestedOutput(name) for name in outputs]
        try:
            result = self._client.infer(
                model,
                tensors,
                model_version=str(version),
                outputs=wanted,
                client_timeout=timeout or self.timeout,
                headers=self._headers,
            )
        except InferenceServerException as exc:
            if exc.status() in _UNREACHABLE and not self.is_ready():
                raise TritonUnavailable(
                    f"Triton did not answer an inference on {model!r}: {exc.message()}"
                ) from exc
            raise SmokeTestFailed(
                f"inference on {model!r} version {version} failed: {exc.message()}"
            ) from exc
        answers: dict[str, np.ndarray] = {}
        for name in outputs:
            array = result.as_numpy(name)
            if array is None:
                raise SmokeTestFailed(f"inference on {model!r} version {version} returned no {name!r}")
            answers[name] = array
        return answers

    def smoke_test(self, model: str, version: int, signature: ModelSignature) -> None:
        """One real inference on ``version`` with zero-filled inputs; every declared output must come back."""
        inputs = []
        arrays = zero_inputs(signature)
        for spec in signature.inputs:
            data = arrays[spec.name]
            # The declared type, not numpy's: some (BF16) travel as another numpy type.
            tensor = grpcclient.InferInput(spec.name, list(data.shape), spec.data_type)
            tensor.set_data_from_numpy(data)
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(spec.name) for spec in signature.outputs]
        try:
            result = self._client.infer(
                model,
                inputs,
                model_version=str(version),
                outputs=outputs,
                client_timeout=self.timeout,
                headers=self._headers,
            )
        except InferenceServerException as exc:
            if exc.status() in _UNREACHABLE and not self.is_ready():
                # The server itself is silent, which says nothing about the version; a hung model does not
                # stop the server answering readiness, so it still fails the smoke test.
                raise TritonUnavailable(
                    f"Triton did not answer the smoke inference on {model!r}: {exc.message()}"
                ) from exc
            raise SmokeTestFailed(
                f"smoke inference on {model!r} version {version} failed: {exc.message()}"
            ) from exc
        for spec in signature.outputs:
            if result.as_numpy(spec.name) is None:
                raise SmokeTestFailed(
                    f"smoke inference on {model!r} version {version} returned no {spec.name!r}"
                )
