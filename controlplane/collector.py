"""Garbage collection of the artifact store, as the CLI, the periodic pass and start-up run it.

Never removes a blob in use: the registry's references are read while the
store's collection lock is held exclusively, and every push holds that lock
shared from its first stored blob until its version is committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from controlplane.artifacts import gc
from controlplane.artifacts.blobs import BlobStore
from controlplane.registry import blob_refs, store
from controlplane.registry.db import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcResult:
    """What a pass removed (or, dry, would remove)."""

    items: tuple[gc.Garbage, ...]
    dry_run: bool

    @property
    def total_bytes(self) -> int:
        return gc.total_bytes(self.items)


def collect_garbage(
    db: Database,
    blobs: BlobStore,
    *,
    linked_roots: Sequence[Path],
    grace_seconds: float,
    dry_run: bool = False,
    lock_timeout: float | None = 30.0,
    actor: str = "gc",
) -> GcResult:
    """Remove blobs that no version and no pool folder references; a real pass writes one audit event.

    TimeoutError if pushes kept the store busy for ``lock_timeout`` seconds.
    """
    with blobs.collecting(timeout=lock_timeout):
        with db.transaction() as session:
            referenced = blob_refs.referenced_digests(session)
        found = gc.find_orphan_blobs(
            blobs, referenced=referenced, linked_roots=linked_roots, grace_seconds=grace_seconds
        )
        if dry_run:
            return GcResult(tuple(found), dry_run=True)
        removed = tuple(gc.remove(found))
    result = GcResult(removed, dry_run=False)
    with db.transaction() as session:
        store.append_event(
            session,
            actor=actor,
            action="gc",
            target="artifacts",
            outcome="removed",
            details={"removed": len(removed), "bytes": result.total_bytes},
        )
    if removed:
        log.info("gc: removed %d unreferenced blobs (%d bytes)", len(removed), result.total_bytes)
    return result


def sweep_stale_uploads(uploads_dir: Path, *, started_at: float) -> list[gc.Garbage]:
    """Remove what pushes of earlier processes left under ``uploads_dir``, logging each removal."""
    removed = gc.remove(gc.stale_uploads(uploads_dir, older_than=started_at))
    for item in removed:
        log.info("start-up: removed stale upload leftover %s (%d bytes)", item.path, item.size)
    return removed


def run_periodically(
    collect: Callable[[], GcResult], *, interval: float, stop: threading.Event
) -> threading.Thread | None:
    """Run ``collect`` every ``interval`` seconds until ``stop`` is set (none when ``interval`` is 0)."""
    if interval <= 0:
        return None

    def loop() -> None:
        while not stop.wait(interval):
            started = time.monotonic()
            try:
                collect()
            except TimeoutError:
                log.info("gc: pushes kept the artifact store busy; next pass in %.0f s", interval)
            except Exception:  # a failed pass is logged; the next one retries
                log.exception("gc pass failed after %.1f s", time.monotonic() - started)

    thread = threading.Thread(target=loop, name="gc", daemon=True)
    thread.start()
    return thread
