"""A Triton pool's model repository, built from the blob store.

Layout under the pool directory::

    repository/<model>/config.pbtxt, <N>/...   what Triton reads (live)
    staging/<model>.<N>.<random>/               folders being built

Files are hard links to the read-only blobs (copies only across
filesystems). A folder is built completely in ``staging/`` and then swapped
into ``repository/`` atomically (``staging.swap``), so Triton never sees a
half-written model. Only one writer per pool may run at a time; the deploy
service serialises them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from controlplane.artifacts.blobs import BlobStore
from controlplane.domain.golden_records import is_golden_file
from controlplane.domain.models import ManifestEntry, ModelVersion, staged_path
from controlplane.files import link_or_copy
from controlplane.staging.swap import replace_directory


class PoolRepository:
    """The live and staging folders of one pool."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.live = root / "repository"
        self.staging = root / "staging"
        self.live.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def clear_staging(self) -> None:
        """Remove leftovers of builds that a crash interrupted."""
        for leftover in self.staging.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)

    def live_models(self) -> list[str]:
        """Names of the model folders Triton can see."""
        return sorted(p.name for p in self.live.iterdir() if p.is_dir())

    def build(self, version: ModelVersion, store: BlobStore, *, verify: bool = True) -> Path:
        """Build version's folder in staging (renumbered to ``version.number``); return its path.

        With ``verify`` every blob is re-hashed first, so a changed or missing
        file is refused before anything is linked.
        """
        folder = self.staging / f"{version.model}.{version.number}.{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        try:
            for entry in staged_entries(version):
                blob = store.verify(entry.sha256, entry.size) if verify else store.path_for(entry.sha256)
                rel = staged_path(
                    entry.path, source_version_dir=version.source_version_dir, number=version.number
                )
                dest = folder / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(blob, dest)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder

    def activate(self, model: str, built: Path) -> Path | None:
        """Swap ``built`` in as the live folder of ``model``; return the previous folder's path, if any."""
        return replace_directory(built, self.live / model)

    def restore(self, model: str, previous: Path | None) -> None:
        """Undo ``activate``: put ``previous`` back live, or remove the model if there was none."""
        live = self.live / model
        if previous is None:
            shutil.rmtree(live, ignore_errors=True)
            return
        discarded = replace_directory(previous, live)
        if discarded is not None:
            shutil.rmtree(discarded, ignore_errors=True)

    def remove(self, model: str) -> None:
        """Take a model folder out of the live repository."""
        live = self.live / model
        if live.exists():
            aside = self.staging / f"{model}.removed.{uuid.uuid4().hex[:8]}"
            os.rename(live, aside)
            shutil.rmtree(aside, ignore_errors=True)

    def matches(self, version: ModelVersion, store: BlobStore) -> bool:
        """Whether the live folder holds exactly this version's files."""
        return (self.live / version.model).is_dir() and not self.differences(version, store)

    def differences(self, version: ModelVersion, store: BlobStore) -> list[str]:
        """How the live folder differs from what staging ``version`` puts there; [] when it does not.

        Every entry must be a regular file that is the blob itself (same
        inode: a hard link made by ``build``) or, where staging had to copy,
        a file with the blob's bytes. Anything else (a missing folder or file, an
        extra file, a link, a directory where a file belongs, a file replaced
        by another) is named.
        """
        live = self.live / version.model
        if not live.is_dir():
            return ["the model folder is missing"]
        expected = {
            staged_path(e.path, source_version_dir=version.source_version_dir, number=version.number): e
            for e in staged_entries(version)
        }
        found: list[str] = []
        actual: set[str] = set()
        for path in live.rglob("*"):
            rel = path.relative_to(live).as_posix()
            if path.is_symlink():
                found.append(f"{rel} is a symbolic link")
            elif path.is_file():
                actual.add(rel)
        found += [f"{rel} is not a staged file" for rel in sorted(actual - set(expected))]
        found += [f"{rel} is missing" for rel in sorted(set(expected) - actual)]
        for rel in sorted(actual & set(expected)):
            entry = expected[rel]
            st = (live / rel).lstat()
            try:
                blob = store.path_for(entry.sha256).stat()
            except FileNotFoundError:
                found.append(f"{rel}: its blob is missing from the artifact store")
                continue
            if (st.st_ino, st.st_dev) == (blob.st_ino, blob.st_dev):
                continue
            # A copy (staging could not link): only its bytes can tell.
            if st.st_size != entry.size or _sha256(live / rel) != entry.sha256:
                found.append(f"{rel} is not the staged blob")
        return found


def staged_entries(version: ModelVersion) -> list[ManifestEntry]:
    """The files of ``version`` Triton's repository holds: all but its golden set (the control plane's)."""
    return [e for e in version.manifest if not is_golden_file(e.path)]


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
