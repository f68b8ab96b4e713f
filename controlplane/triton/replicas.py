"""A pool's Triton replicas behind the one control surface the services use.

A pool is N tritonservers (N >= 1) on the pool's one model repository, each
reached at its own address. ``ReplicatedTriton`` gives the services exactly
the calls they make on a ``TritonClient`` and answers for the pool as a
whole:

* A load, a smoke test or an unload acts on every replica, one after the
  other (a replica that loads is "not ready" to the proxy's health check for
  that time; one at a time, its siblings keep serving). A load or smoke test
  that fails on one replica stops there and raises the same error, naming
  the replica. The replicas before it then run the new version and the
  others the old one: ``pools.install`` repairs that as it repairs a failed
  load on one server, by swapping the old folder back and loading the
  previous version (or unloading) on every replica, so the pool ends
  uniform. An unload is tried on every replica before the first error is
  raised, so one replica that never had the model does not keep it loaded
  on the others.
* A model is READY only when it is READY on every replica. The repository
  index is merged per (model, version): READY where every replica says so,
  else the first replica's other state and reason, the reason naming the
  replica; a version that a replica does not list at all (a replica
  restarted with an empty repository, say) is UNAVAILABLE there.
* The server is ready only when every replica is.
* ``model_config`` returns a configuration that shows drift whenever any
  replica runs one that differs from the staged ``config.pbtxt`` (see
  ``model_config``).
* A replica that does not answer raises ``TritonUnavailable`` (retryable),
  naming it: the pool is not fully there, so the caller waits it out.

With one replica every call is the replica's own call, errors unchanged.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from controlplane.domain.models import ModelSignature
from controlplane.errors import ControlPlaneError, InvalidModelConfig, TritonUnavailable
from controlplane.triton.client import ModelStatus
from controlplane.triton.drift import config_drift

if TYPE_CHECKING:
    import numpy as np

    from controlplane.triton.wire import Zeros

log = logging.getLogger(__name__)

READY = "READY"
# What a merged index says of a version one replica does not list at all.
NOT_LISTED = "UNAVAILABLE"


class TritonControl(Protocol):
    """The calls the services make on a pool's Triton (``TritonClient`` and ``ReplicatedTriton`` alike)."""

    def is_ready(self) -> bool: ...
    def wait_server_ready(self, timeout: float, *, sleep: Callable[[float], None] = ...) -> None: ...
    def repository_index(self) -> list[ModelStatus]: ...
    def ready_anywhere(self) -> set[str]: ...
    def model_config(self, model: str) -> dict[str, Any]: ...
    def model_status(self, model: str) -> list[ModelStatus]: ...
    def is_model_ready(self, model: str, version: int | None = None) -> bool: ...
    def load(self, model: str, version: int, *, timeout: float) -> None: ...
    def unload(self, model: str) -> None: ...
    def smoke_test(self, model: str, version: int, signature: ModelSignature) -> None: ...
    def infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray | Zeros],
        outputs: Sequence[str],
        *,
        timeout: float | None = None,
    ) -> Mapping[str, np.ndarray]: ...


class ReplicatedTriton:
    """Every replica of one pool, as one ``TritonControl``.

    ``replicas`` are the replicas' clients in a fixed order (replica 1
    first). ``names`` label them in errors and reasons (default: "replica i
    (its url)"). ``staged_root`` is the pool's live repository, where
    ``model_config`` reads the staged ``config.pbtxt`` to pick the replica
    whose configuration drifts.
    """

    def __init__(
        self,
        replicas: Sequence[TritonControl],
        *,
        names: Sequence[str] | None = None,
        staged_root: Path | None = None,
    ) -> None:
        if not replicas:
            raise ValueError("a pool has at least one Triton replica")
        if names is not None and len(names) != len(replicas):
            raise ValueError(f"{len(names)} names for {len(replicas)} replicas")
        self.replicas: tuple[TritonControl, ...] = tuple(replicas)
        self.names: tuple[str, ...] = (
            tuple(names)
            if names is not None
            else tuple(_default_name(i, r) for i, r in enumerate(self.replicas, start=1))
        )
        self.staged_root = staged_root

    @contextmanager
    def _on(self, index: int) -> Iterator[None]:
        """Raise a replica's error naming the replica (unchanged with one replica)."""
        try:
            yield
        except ControlPlaneError as exc:
            if len(self.replicas) == 1:
                raise
            raise _naming(exc, self.names[index]) from exc

    # -- the server ------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Every replica answers ready (False, never an exception, otherwise)."""
        return all(r.is_ready() for r in self.replicas)

    def wait_server_ready(self, timeout: float, *, sleep: Callable[[float], None] = time.sleep) -> None:
        """Poll until every replica is ready; TritonUnavailable naming the first that is not."""
        if len(self.replicas) == 1:
            self.replicas[0].wait_server_ready(timeout, sleep=sleep)
            return
        deadline = time.monotonic() + timeout
        for index, replica in enumerate(self.replicas):
            while not replica.is_ready():
                if time.monotonic() > deadline:
                    raise TritonUnavailable(f"Triton {self.names[index]} not ready after {timeout:.0f} s")
                sleep(0.1)

    def close(self) -> None:
        for replica in self.replicas:
            close = getattr(replica, "close", None)
            if close is not None:
                close()

    # -- what is loaded --------------------------------------------------------------------

    def repository_index(self) -> list[ModelStatus]:
        """Every (model, version) any replica lists, READY only where every replica says READY."""
        indexes: list[list[ModelStatus]] = []
        for index, replica in enumerate(self.replicas):
            with self._on(index):
                indexes.append(replica.repository_index())
        if len(indexes) == 1:
            return indexes[0]
        return merge_indexes(indexes, self.names)

    def model_status(self, model: str) -> list[ModelStatus]:
        return [s for s in self.repository_index() if s.name == model]

    def ready_anywhere(self) -> set[str]:
        """Models with a READY version on at least one replica (what must be unloaded if unreleased)."""
        names: set[str] = set()
        for index, replica in enumerate(self.replicas):
            with self._on(index):
                names |= replica.ready_anywhere()
        return names

    def is_model_ready(self, model: str, version: int | None = None) -> bool:
        """READY on every replica (False, never an exception, when one does not answer)."""
        return all(r.is_model_ready(model, version) for r in self.replicas)

    def model_config(self, model: str) -> dict[str, Any]:
        """The configuration the replicas run for ``model``, chosen so that drift on any of them shows.

        When the replicas agree, that configuration. When they do not, the
        first one that drifts from the staged ``config.pbtxt`` under
        ``staged_root`` (``controlplane.triton.drift``); without a readable
        staged file, the first one that differs from replica 1's (replica 1
        is then trusted). ModelLoadFailed (naming the replica) when a replica
        has no such loaded model.
        """
        configs: list[dict[str, Any]] = []
        for index, replica in enumerate(self.replicas):
            with self._on(index):
                configs.append(replica.model_config(model))
        first = configs[0]
        if all(c == first for c in configs[1:]):
            return first
        staged = self._staged_config(model)
        if staged is not None:
            for index, config in enumerate(configs):
                try:
                    if config_drift(staged, config):
                        log.info("model %s: %s runs another configuration", model, self.names[index])
                        return config
                except (InvalidModelConfig, ValueError):
                    break
        return next(c for c in configs if c != first)

    def _staged_config(self, model: str) -> str | None:
        if self.staged_root is None:
            return None
        try:
            return (self.staged_root / model / "config.pbtxt").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    # -- changes -----------------------------------------------------------------------------

    def load(self, model: str, version: int, *, timeout: float) -> None:
        """Load ``version`` on every replica in turn, each until READY; the first failure stops it.

        ModelLoadFailed / TritonUnavailable name the replica; see the module
        docstring for what the caller (``pools.install``) does then.
        """
        for index, replica in enumerate(self.replicas):
            with self._on(index):
                replica.load(model, version, timeout=timeout)

    def smoke_test(self, model: str, version: int, signature: ModelSignature) -> None:
        """One real inference on every replica; SmokeTestFailed names the first that fails."""
        for index, replica in enumerate(self.replicas):
            with self._on(index):
                replica.smoke_test(model, version, signature)

    def infer(
        self,
        model: str,
        version: int,
        inputs: Mapping[str, np.ndarray | Zeros],
        outputs: Sequence[str],
        *,
        timeout: float | None = None,
    ) -> Mapping[str, np.ndarray]:
        """The same inference on every replica; replica 1's answers (``each_replica`` to compare them)."""
        answers: list[Mapping[str, np.ndarray]] = []
        for index, replica in enumerate(self.replicas):
            with self._on(index):
                answers.append(replica.infer(model, version, inputs, outputs, timeout=timeout))
        return answers[0]

    def unload(self, model: str) -> None:
        """Unload ``model`` on every replica, then raise the first error met (naming its replica)."""
        first_error: ControlPlaneError | None = None
        for index, replica in enumerate(self.replicas):
            try:
                with self._on(index):
                    replica.unload(model)
            except ControlPlaneError as exc:
                if first_error is None:
                    first_error = exc
        if first_error is not None:
            raise first_error


def each_replica(triton: TritonControl) -> list[tuple[str, TritonControl]]:
    """The replicas of a pool's Triton with their names (one Triton: itself), for per-replica checks."""
    if isinstance(triton, ReplicatedTriton):
        return list(zip(triton.names, triton.replicas, strict=True))
    return [(_default_name(1, triton), triton)]


def _default_name(index: int, replica: TritonControl) -> str:
    url = getattr(replica, "url", None)
    return f"replica {index} ({url})" if url else f"replica {index}"


def _naming(exc: ControlPlaneError, name: str) -> ControlPlaneError:
    """The same error (class, code, details, retryable) with a message that names the replica."""
    named = copy.copy(exc)
    named.message = f"{name}: {exc.message}"
    named.args = (named.message,)
    return named


def merge_indexes(indexes: Sequence[Sequence[ModelStatus]], names: Sequence[str]) -> list[ModelStatus]:
    """One index for the pool: rows in first-seen order, READY only where every replica is READY.

    For any other row: the first replica whose state is not READY gives the
    state and the reason (prefixed with its name); a replica that does not
    list the (model, version) at all counts as ``UNAVAILABLE``, "not loaded".
    """
    keys: list[tuple[str, str]] = []
    per_replica: list[dict[tuple[str, str], ModelStatus]] = []
    for rows in indexes:
        table: dict[tuple[str, str], ModelStatus] = {}
        for status in rows:
            key = (status.name, status.version)
            table.setdefault(key, status)
            if key not in keys:
                keys.append(key)
        per_replica.append(table)
    merged: list[ModelStatus] = []
    for name, version in keys:
        row: ModelStatus | None = None
        for replica_name, table in zip(names, per_replica, strict=True):
            found = table.get((name, version))
            if found is None:
                row = ModelStatus(name, version, NOT_LISTED, f"{replica_name}: not loaded")
                break
            if found.state != READY:
                reason = f"{replica_name}: {found.reason}" if found.reason else ""
                row = ModelStatus(name, version, found.state, reason)
                break
        merged.append(row or ModelStatus(name, version, READY, ""))
    return merged
