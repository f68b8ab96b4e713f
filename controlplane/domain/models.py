"""Registry entities and their rules: plain dataclasses, no I/O.

Persistence returns these (never ORM rows), so nothing lazy-loads after its
session has closed and the API, CLI and services share one vocabulary.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NewType

from controlplane.errors import InvalidInput

ModelName = NewType("ModelName", str)
PoolName = NewType("PoolName", str)

# A model name becomes a directory name in Triton's repository and a URL path
# segment: keep it to characters that mean the same thing everywhere.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_POOL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def validate_model_name(name: str) -> ModelName:
    """Return ``name`` as a ModelName, or raise InvalidInput saying why it is refused."""
    if not _MODEL_NAME.fullmatch(name) or name.endswith(".") or ".." in name:
        raise InvalidInput(
            f"model name {name!r} is not allowed: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
            code="invalid_model_name",
        )
    return ModelName(name)


def validate_pool_name(name: str) -> PoolName:
    """Return ``name`` as a PoolName, or raise InvalidInput."""
    if not _POOL_NAME.fullmatch(name):
        raise InvalidInput(f"pool name {name!r} is not allowed", code="invalid_pool_name")
    return PoolName(name)


class VersionState(enum.StrEnum):
    """Life of a registered version.

    registered -> serving (deployed) -> retired (replaced by another version)
    registered | retired -> failed (Triton refused it or its smoke test failed)
    A failed version may be deployed again; a retired one may come back.
    Every change goes through ``controlplane.domain.versions.decide_version``.
    """

    REGISTERED = "registered"
    SERVING = "serving"
    RETIRED = "retired"
    FAILED = "failed"


class DeploymentState(enum.StrEnum):
    """What a pool does with a model: the desired state the reconciler converges to."""

    SERVING = "serving"


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a model folder: path relative to the folder, size and SHA-256."""

    path: str
    size: int
    sha256: str


def manifest_digest(entries: Iterable[ManifestEntry]) -> str:
    """The artifact digest: SHA-256 over the sorted (path, size, sha256) lines.

    Covers file names as well as contents, so renaming a file changes the digest.
    """
    h = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.path):
        h.update(f"{entry.path}\0{entry.size}\0{entry.sha256}\n".encode())
    return h.hexdigest()


def version_directory(entries: Iterable[ManifestEntry]) -> str:
    """The single numeric top-level directory holding the version's files.

    A pushed model folder is ``config.pbtxt`` plus exactly one version
    directory (``1/model.onnx``); the registry renumbers that directory when it
    stages the folder, so the pushed name does not matter.
    """
    dirs = {e.path.split("/", 1)[0] for e in entries if "/" in e.path}
    numeric = sorted(d for d in dirs if d.isdigit())
    if len(numeric) != 1:
        found = ", ".join(numeric) if numeric else "none"
        raise InvalidInput(
            f"a model folder must hold exactly one numeric version directory (found: {found})",
            code="invalid_model_layout",
        )
    return numeric[0]


def staged_path(entry_path: str, *, source_version_dir: str, number: int) -> str:
    """Where a manifest file goes when version ``number`` is staged."""
    head, sep, rest = entry_path.partition("/")
    if sep and head == source_version_dir:
        return f"{number}/{rest}"
    return entry_path


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model as its config declares it."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    """What config.pbtxt says about how to call the model."""

    backend: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def as_dict(self) -> dict[str, Any]:
        def spec(t: TensorSpec) -> dict[str, Any]:
            return {"name": t.name, "data_type": t.data_type, "dims": list(t.dims)}

        return {
            "backend": self.backend,
            "max_batch_size": self.max_batch_size,
            "inputs": [spec(t) for t in self.inputs],
            "outputs": [spec(t) for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSignature:
        def spec(d: Mapping[str, Any]) -> TensorSpec:
            return TensorSpec(name=d["name"], data_type=d["data_type"], dims=tuple(d["dims"]))

        return cls(
            backend=data["backend"],
            max_batch_size=int(data["max_batch_size"]),
            inputs=tuple(spec(t) for t in data["inputs"]),
            outputs=tuple(spec(t) for t in data["outputs"]),
        )


@dataclass(frozen=True)
class VersionMetadata:
    """What a publisher says about a version beyond its files."""

    labels: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    api_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"labels": dict(self.labels), "metrics": dict(self.metrics), "api_version": self.api_version}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> VersionMetadata:
        data = data or {}
        return cls(
            labels=dict(data.get("labels") or {}),
            metrics={k: float(v) for k, v in (data.get("metrics") or {}).items()},
            api_version=data.get("api_version"),
        )


@dataclass(frozen=True)
class ModelVersion:
    """A registered, immutable set of files for one model, numbered per model."""

    model: ModelName
    number: int
    digest: str
    state: VersionState
    source_version_dir: str
    signature: ModelSignature
    metadata: VersionMetadata
    manifest: tuple[ManifestEntry, ...]
    size_bytes: int
    created_at: datetime
    last_error: str | None = None


@dataclass(frozen=True)
class Deployment:
    """Which version of a model a pool serves."""

    model: ModelName
    pool: PoolName
    version: int
    state: DeploymentState
    updated_at: datetime


@dataclass(frozen=True)
class Model:
    """A model and where it serves."""

    name: ModelName
    created_at: datetime
    latest_version: int
    deployments: tuple[Deployment, ...] = ()


@dataclass(frozen=True)
class AuditEvent:
    """An append-only record of something that was done (or refused)."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    details: Mapping[str, Any]
