"""Triton adapter over its HTTP API (KServe v2 and the repository extension): load, poll, smoke-test, unload.

The control calls travel over HTTP with the httpx the control plane already
holds, so it needs neither grpc nor numpy to run a pool: a smoke test or a
warm-up sends zero-filled inputs as raw bytes (``wire.Zeros``). numpy is
imported only by callers that send or read real arrays (golden checks).

httpx errors and Triton's error answers never leave this module: they
become ``TritonUnavailable`` (retryable: the server did not answer) or
``ModelLoadFailed`` / ``SmokeTestFailed`` (permanent for that version).

A pool's Triton restricts its admin APIs (repository, config, shared
memory, statistics, trace, logging) to requests carrying the pool's admin
key, so the client sends ``headers`` (see
``controlplane.triton.server_command.admin_headers``) on every call. A
refusal for a missing or wrong key is HTTP 403; it becomes
``TritonAccessDenied``, not ``TritonUnavailable``: retrying cannot help.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from controlplane.domain.models import ModelSignature
from controlplane.errors import (
    ModelLoadFailed,
    SmokeTestFailed,
    TritonAccessDenied,
    TritonUnavailable,
)
from controlplane.triton.wire import (
    HEADER_LENGTH,
    MalformedAnswer,
    Tensor,
    Zeros,
    infer_request,
    is_known_datatype,
    split_infer_answer,
)

if TYPE_CHECKING:
    import numpy as np

# Triton's words when a restricted API is called without the right header.
_RESTRICTED = "is restricted, expecting header"


@dataclass(frozen=True)
class ModelStatus:
    """One row of Triton's repository index."""

    name: str
    version: str
    state: str
    reason: str


class _Refused(Exception):
    """Triton answered with an error status: its code and its words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def zero_inputs(signature: ModelSignature) -> dict[str, Zeros]:
    """A zero-filled input per declared input, batch 1 (variable dims 1; BYTES as empty strings).

    SmokeTestFailed when an input's data type is not one Triton's protocol knows.
    """
    inputs: dict[str, Zeros] = {}
    for spec in signature.inputs:
        shape = tuple(1 if d == -1 else d for d in spec.dims)
        if signature.max_batch_size > 0:
            shape = (1, *shape)
        if not is_known_datatype(spec.data_type):
            raise SmokeTestFailed(
                f"input {spec.name!r} has a data type ({spec.data_type}) Triton does not know"
            )
        inputs[spec.name] = Zeros(spec.data_type, shape)
    return inputs


def _base_url(url: str) -> str:
    return url.rstrip("/") if "://" in url else f"http://{url}"


def _path(model: str, version: int | None = None) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    return path if version is None else f"{path}/versions/{version}"


def _words(exc: httpx.HTTPError) -> str:
    return str(exc) or type(exc).__name__


class TritonClient:
    """Control calls to one Triton server (its own HTTP port, never through the proxy)."""

    def __init__(self, url: str, *, timeout: float = 10.0, headers: Mapping[str, str] | None = None) -> None:
        """``url`` is the server's HTTP address: ``http://host:port`` or ``host:port``."""
        self.url = _base_url(url)
        self.timeout = timeout
        self._client = httpx.Client(base_url=self.url, headers=dict(headers or {}), timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One request; _Refused for an error status (403 for a restricted API), httpx errors as raised."""
        send = functools.partial(
            self._client.request, method, path, content=body, headers=headers, timeout=timeout or self.timeout
        )
        try:
            answer = send()
        except httpx.RemoteProtocolError:
            # A kept-alive connection the server dropped (a restarted Triton) ends without an answer.
            # Every call here can run twice (a load reloads, an unload of an unloaded model does
            # nothing, an inference changes nothing), so it is sent once more on a new connection.
            answer = send()
        if answer.status_code >= 400:
            raise _Refused(answer.status_code, _error_words(answer))
        return answer

    def _admin(self, method: str, path: str, what: str) -> httpx.Response:
        """An admin call; its refusal or silence as the control plane's errors (see ``_refusal``)."""
        try:
            return self._call(method, path, body=b"{}" if method == "POST" else None)
        except httpx.HTTPError as exc:
            raise TritonUnavailable(f"Triton did not answer {what}: {_words(exc)}") from exc
        except _Refused as exc:
            raise _refusal(exc, what) from exc

    def _json(self, method: str, path: str, what: str) -> Any:
        answer = self._admin(method, path, what)
        try:
            return answer.json()
        except ValueError as exc:
            raise TritonUnavailable(f"Triton's answer to {what} is not JSON") from exc

    def is_ready(self) -> bool:
        """Server readiness; False (never an exception) when it does not answer."""
        try:
            self._call("GET", "/v2/health/ready")
        except (httpx.HTTPError, _Refused):
            return False
        return True

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
        index = self._json("POST", "/v2/repository/index", "repository index")
        if not isinstance(index, list):
            raise TritonUnavailable("Triton's repository index is not a list")
        return [
            ModelStatus(
                name=str(m.get("name", "")),
                version=str(m.get("version", "")),
                state=str(m.get("state", "")),
                reason=str(m.get("reason", "")),
            )
            for m in index
            if isinstance(m, dict)
        ]

    def model_config(self, model: str) -> dict[str, Any]:
        """The configuration Triton runs for ``model``, as JSON.

        ModelLoadFailed when Triton has no such loaded model.
        """
        config = self._json("GET", f"{_path(model)}/config", f"config of {model!r}")
        return dict(config) if isinstance(config, dict) else {}

    def model_status(self, model: str) -> list[ModelStatus]:
        return [m for m in self.repository_index() if m.name == model]

    def is_model_ready(self, model: str, version: int | None = None) -> bool:
        try:
            self._call("GET", f"{_path(model, version)}/ready")
        except (httpx.HTTPError, _Refused):
            return False
        return True

    def load(self, model: str, version: int, *, timeout: float) -> None:
        """Load (or reload) ``model`` from the repository and wait until ``version`` is READY.

        ModelLoadFailed carries Triton's reason; what served before keeps serving.
        """
        path = f"/v2/repository/models/{quote(model, safe='')}/load"
        try:
            self._call("POST", path, body=b"{}", timeout=timeout)
        except _Refused as exc:
            if exc.status == 403:
                raise _refusal(exc, f"loading {model!r}") from exc
            # The index has the precise reason; the load call's message is often generic.
            reason = self._unavailable_reason(model, version) or exc.message
            raise ModelLoadFailed(f"Triton failed to load {model!r} version {version}: {reason}") from exc
        except httpx.HTTPError as exc:
            reason = self._unavailable_reason(model, version) or _words(exc)
            if not self.is_ready():
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
        self._admin("POST", f"/v2/repository/models/{quote(model, safe='')}/unload", f"unload of {model!r}")

    def infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray | Zeros],
        outputs: Sequence[str],
        *,
        timeout: float | None = None,
    ) -> Mapping[str, np.ndarray]:
        """One inference on ``version`` straight to this server: the named outputs as arrays.

        Arrays are sent with their own shapes (batch dimension included) and
        the Triton type numpy's type maps to; ``Zeros`` with its declared type.
        Raises TritonUnavailable when the server does not answer,
        SmokeTestFailed (with Triton's words) when it refuses or fails the
        request or an output is missing. The arrays are decoded when read.
        """
        what = f"inference on {model!r} version {version}"
        tensors = [wire_tensor(name, value) for name, value in inputs.items()]
        found = self._infer(model, version, tensors, outputs, what, timeout)
        return InferOutputs(found)

    def smoke_test(self, model: str, version: int, signature: ModelSignature) -> None:
        """One real inference on ``version`` with zero-filled inputs; every declared output must come back."""
        tensors = [wire_tensor(name, zeros) for name, zeros in zero_inputs(signature).items()]
        outputs = [spec.name for spec in signature.outputs]
        self._infer(model, version, tensors, outputs, f"smoke inference on {model!r} version {version}", None)

    def _infer(
        self,
        model: str,
        version: int,
        tensors: Sequence[Tensor],
        outputs: Sequence[str],
        what: str,
        timeout: float | None,
    ) -> dict[str, Tensor]:
        body, header_length = infer_request(tensors, outputs)
        headers = {HEADER_LENGTH: str(header_length), "Content-Type": "application/octet-stream"}
        try:
            path = f"{_path(model, version)}/infer"
            answer = self._call("POST", path, body=body, headers=headers, timeout=timeout)
            length = answer.headers.get(HEADER_LENGTH)
            found = split_infer_answer(answer.content, int(length) if length is not None else None)
        except httpx.HTTPError as exc:
            if not self.is_ready():
                # The server itself is silent, which says nothing about the version; a hung model does not
                # stop the server answering readiness, so it still fails the smoke test.
                raise TritonUnavailable(f"Triton did not answer the {what}: {_words(exc)}") from exc
            raise SmokeTestFailed(f"{what} failed: {_words(exc)}") from exc
        except _Refused as exc:
            raise SmokeTestFailed(f"{what} failed: {exc.message}") from exc
        except (MalformedAnswer, ValueError) as exc:
            raise SmokeTestFailed(f"{what} failed: {exc}") from exc
        for name in outputs:
            if name not in found:
                raise SmokeTestFailed(f"{what} returned no {name!r}")
        return found


def _error_words(answer: httpx.Response) -> str:
    try:
        error = answer.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error) if error else f"HTTP {answer.status_code}"


def _refusal(exc: _Refused, what: str) -> Exception:
    if exc.status == 403 and _RESTRICTED in exc.message:
        return TritonAccessDenied(f"Triton refused {what}: the admin key is missing or wrong")
    if exc.status >= 500:
        return TritonUnavailable(f"Triton could not answer {what}: {exc.message}")
    return ModelLoadFailed(f"{what}: {exc.message}")


def wire_tensor(name: str, value: np.ndarray | Zeros) -> Tensor:
    """An input as it travels: described zeros as they are, an array with the Triton type of its dtype."""
    if isinstance(value, Zeros):
        return Tensor(name, value.datatype, value.shape, value.raw())
    from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

    datatype = np_to_triton_dtype(value.dtype)
    if datatype is None:
        raise SmokeTestFailed(f"input {name!r} has a numpy type ({value.dtype}) Triton does not know")
    if datatype == "BYTES":
        # A 0-d object array holding the length-prefixed elements (empty for an empty tensor).
        serialized = serialize_byte_tensor(value)
        raw = bytes(serialized.item()) if serialized.size else b""
    else:
        raw = value.tobytes(order="C")
    return Tensor(name, datatype, tuple(int(d) for d in value.shape), raw)


class InferOutputs(Mapping[str, "np.ndarray"]):
    """An inference's outputs as numpy arrays, each decoded (and numpy imported) on first read."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        self._tensors = dict(tensors)
        self._arrays: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = _array(self._tensors[name])
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def _array(tensor: Tensor) -> np.ndarray:
    import numpy as np
    from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

    if tensor.datatype == "BYTES":
        flat = deserialize_bytes_tensor(tensor.raw)
    else:
        flat = np.frombuffer(tensor.raw, dtype=triton_to_np_dtype(tensor.datatype))
    return flat.reshape(tensor.shape)
