"""A Triton pool as the services use it: its repository and its Triton.

``install`` is the order of operations that loses no request on a pool that
serves traffic (measured with Triton 2.51): build the folder aside, swap it in atomically,
reload in Triton (the old version serves until the new one is READY),
smoke-test, and only then report success. On failure the previous folder is
swapped back and reloaded, so the repository and Triton keep agreeing. With
several replicas (``ReplicatedTriton``) the load stops at the first replica
that fails, and the restore reloads the previous version (or unloads) on every
replica, so no replica is left on the failed version.

Concurrency: callers hold the pool's claim (``controlplane.claims``) while
they change a pool; the claim, a database row, excludes every other
operation, in this process or another, so no in-process lock is needed.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass

from controlplane.artifacts.blobs import BlobStore
from controlplane.domain.models import ModelVersion
from controlplane.domain.redaction import redact
from controlplane.errors import ControlPlaneError, ModelLoadFailed, SmokeTestFailed, TritonUnavailable
from controlplane.staging.repository import PoolRepository
from controlplane.triton.replicas import TritonControl

log = logging.getLogger(__name__)


@dataclass
class Pool:
    """A pool's Triton replicas (``ReplicatedTriton``; one ``TritonClient`` also fits) and its repository."""

    name: str
    repository: PoolRepository
    triton: TritonControl
    loads_since_recycle: int = 0
    """Versions loaded since the pool's Tritons last started here (a recycle policy reads it)."""


def install(
    pool: Pool, version: ModelVersion, blobs: BlobStore, *, previous: int | None, load_timeout: float
) -> None:
    """Stage, swap in, load and smoke-test ``version`` on ``pool``; undo everything on failure."""
    built = pool.repository.build(version, blobs, verify=True)
    old_folder = pool.repository.activate(version.model, built)
    pool.loads_since_recycle += 1
    try:
        pool.triton.load(version.model, version.number, timeout=load_timeout)
        pool.triton.smoke_test(version.model, version.number, version.signature)
    except (ModelLoadFailed, SmokeTestFailed, TritonUnavailable):
        pool.repository.restore(version.model, old_folder)
        _restore_in_triton(pool, version.model, previous, load_timeout)
        raise
    if old_folder is not None:
        shutil.rmtree(old_folder, ignore_errors=True)


def _restore_in_triton(pool: Pool, model: str, previous: int | None, load_timeout: float) -> None:
    try:
        if previous is None:
            pool.triton.unload(model)
        else:
            pool.triton.load(model, previous, timeout=load_timeout)
    except ControlPlaneError as exc:
        # The reconciler converges later; the original error is what the caller needs.
        log.warning("restoring %s on pool %s after a failed install: %s", model, pool.name, exc)


def uninstall(pool: Pool, model: str) -> None:
    """Unload ``model`` and remove its folder. Callers make sure the pool gets no traffic for it."""
    try:
        pool.triton.unload(model)
    except ModelLoadFailed as exc:
        log.info("unload of %s on %s: %s", model, pool.name, exc)
    pool.repository.remove(model)


def redact_reason(pools: Iterable[Pool], text: str) -> str:
    """``text`` (a Triton or backend reason) without the pools' server paths or stack traces."""
    return redact(text, model_roots=[str(p.repository.live) for p in pools])
