"""Where model folders come from: a plain folder on disk, or the commits of a git branch.

A source lists the watched root's folders with a fingerprint each (``scan``)
and copies one folder's packed files into a fresh directory (``export``),
returning its policy file apart. Nothing is followed out of the root: a
symlink, a submodule, a special file, a file above the size limit or a folder
with too many files refuses the folder before anything of it is read.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from controlplane.domain.gitops import POLICY_FILE, WatchLimits, check_branch, is_commit_id, is_packed
from controlplane.errors import ControlPlaneError, InvalidInput
from controlplane.gitops.git import Git, GitFailed

EntryKind = Literal["folder", "symlink", "other"]
DEFAULT_LIMITS = WatchLimits()


class FolderChanging(ControlPlaneError):
    """The folder changed while it was copied: it is read again at the next poll."""

    code = "folder_changing"
    retryable = True


@dataclass(frozen=True)
class FolderCandidate:
    """One top-level entry of the watched root, as seen by one scan."""

    name: str
    fingerprint: str
    where: str
    """The folder's path as the messages show it (relative to the root or the repository)."""
    labels: dict[str, str] = field(default_factory=dict)
    kind: EntryKind = "folder"
    ref: str = ""
    """What the source finds the folder by (a git tree or blob id)."""


class ModelSource(Protocol):
    """A watched root of model folders."""

    @property
    def description(self) -> str: ...

    def scan(self) -> list[FolderCandidate]:
        """The root's folders now, each with a fingerprint that changes when its content does."""

    def export(self, candidate: FolderCandidate, dest: Path) -> bytes | None:
        """Write the folder's packed files into ``dest``; return its policy file's bytes, or None."""


def _refuse(code: str, message: str, path: str) -> InvalidInput:
    return InvalidInput(message, code=code, details={"path": path})


def _escapes(link_path: str, target: str) -> bool:
    """Whether a symlink at ``link_path`` (relative to the root) points outside the root."""
    if target.startswith("/"):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    return resolved == ".." or resolved.startswith("../")


def _symlink_refusal(link_path: str, target: str, *, shown: str | None = None) -> InvalidInput:
    """Refuse a symlink at ``link_path`` (relative to the watched root), named ``shown`` in the message."""
    where = "outside the watched root" if _escapes(link_path, target) else "inside the watched root"
    name = shown or link_path
    return _refuse(
        "symlink_not_followed",
        f"{name} is a symlink to {target!r} ({where}); symlinks are never followed: "
        "commit or copy the file itself",
        name,
    )


def _too_large(path: str, size: int, limit: int) -> InvalidInput:
    return _refuse("file_too_large", f"{path} holds {size} bytes, above the limit of {limit} bytes", path)


def _too_many(where: str, limit: int) -> InvalidInput:
    return _refuse("too_many_files", f"{where} holds more than {limit} files", where)


# -- a plain folder ----------------------------------------------------------------------------


class DirectorySource:
    """Model folders under ``root`` on disk, fingerprinted by their files' names, types, sizes and times."""

    def __init__(self, root: Path, *, limits: WatchLimits = DEFAULT_LIMITS) -> None:
        if not root.is_dir():
            raise InvalidInput(f"{root} is not a folder", code="watch_path_invalid")
        self.root = root.resolve()
        self.limits = limits

    @property
    def description(self) -> str:
        return f"folder {self.root}"

    def scan(self) -> list[FolderCandidate]:
        candidates: list[FolderCandidate] = []
        try:
            with os.scandir(self.root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise ControlPlaneError(
                f"cannot read {self.root}: {exc.strerror}", code="watch_path_unreadable", retryable=True
            ) from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            labels = {"source.path": str(path)}
            if entry.is_symlink():
                target = _readlink(path)
                candidates.append(
                    FolderCandidate(entry.name, f"symlink:{target}", entry.name, labels, "symlink", target)
                )
            elif entry.is_dir(follow_symlinks=False):
                candidates.append(FolderCandidate(entry.name, self._fingerprint(path), entry.name, labels))
        return candidates

    def _fingerprint(self, folder: Path) -> str:
        """A hash of every entry's path, type, size and modification time (no file is read)."""
        digest = hashlib.sha256()
        count = 0
        try:
            for rel, st, target in _walk_stats(folder):
                count += 1
                if count > self.limits.max_files:
                    digest.update(b"too many files")
                    break
                line = f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{st.st_size}\0{st.st_mtime_ns}\0{target}\n"
                digest.update(line.encode("utf-8", "surrogateescape"))
        except OSError as exc:
            # Fingerprinted all the same: the export meets the error again and reports it once.
            digest.update(f"unreadable: {exc}".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()

    def export(self, candidate: FolderCandidate, dest: Path) -> bytes | None:
        if candidate.kind == "symlink":
            raise _symlink_refusal(candidate.name, candidate.ref)
        folder = self.root / candidate.name
        policy: bytes | None = None
        files = 0
        for rel, st, target in _walk_stats(folder):
            where = f"{candidate.name}/{rel}"
            if stat.S_ISLNK(st.st_mode):
                raise _symlink_refusal(where, target)
            if rel == POLICY_FILE:
                policy = self._read_policy(folder / rel, st, where)
                continue
            if not is_packed(rel):
                continue
            if stat.S_ISDIR(st.st_mode):
                (dest / rel).mkdir(parents=True, exist_ok=True)
                continue
            if not stat.S_ISREG(st.st_mode):
                raise _refuse("special_file", f"{where} is not a regular file or folder", where)
            files += 1
            if files > self.limits.max_files:
                raise _too_many(candidate.name, self.limits.max_files)
            if st.st_size > self.limits.max_file_bytes:
                raise _too_large(where, st.st_size, self.limits.max_file_bytes)
            _copy_file(folder / rel, dest / rel, self.limits.max_file_bytes, where)
        if self._fingerprint(folder) != candidate.fingerprint:
            raise FolderChanging(
                f"{candidate.name} changed while it was read; it is read again at the next poll"
            )
        return policy

    def _read_policy(self, path: Path, st: os.stat_result, where: str) -> bytes:
        if not stat.S_ISREG(st.st_mode):
            raise _refuse("special_file", f"{where} is not a regular file", where)
        if st.st_size > self.limits.max_policy_bytes:
            raise _refuse(
                "policy_file_too_large",
                f"{where} holds {st.st_size} bytes, above the limit of {self.limits.max_policy_bytes} bytes",
                where,
            )
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            return f.read(self.limits.max_policy_bytes + 1)[: self.limits.max_policy_bytes]


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _walk_stats(folder: Path, prefix: str = "") -> list[tuple[str, os.stat_result, str]]:
    """Every entry under ``folder`` (sorted, depth first, symlinks not followed): (rel, lstat, link target).

    Dot-entries are skipped: what a ``.git`` or an editor's swap file holds is no part of the model,
    and their changes must not count as the folder's.
    """
    found: list[tuple[str, os.stat_result, str]] = []
    with os.scandir(folder) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        rel = f"{prefix}{entry.name}"
        st = entry.stat(follow_symlinks=False)
        target = _readlink(Path(entry.path)) if stat.S_ISLNK(st.st_mode) else ""
        found.append((rel, st, target))
        if stat.S_ISDIR(st.st_mode):
            found.extend(_walk_stats(Path(entry.path), rel + "/"))
    return found


def _copy_file(src: Path, dst: Path, limit: int, where: str) -> None:
    # O_NOFOLLOW: a file swapped for a symlink after the walk is refused, not followed.
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    copied = 0
    with os.fdopen(fd, "rb") as f, open(dst, "xb") as out:
        while chunk := f.read(1024 * 1024):
            copied += len(chunk)
            if copied > limit:
                raise _too_large(where, copied, limit)
            out.write(chunk)


# -- a git repository ------------------------------------------------------------------------------

_TREE_MODE = "040000"
_SYMLINK_MODE = "120000"
_SUBMODULE_MODE = "160000"


@dataclass(frozen=True)
class _TreeEntry:
    mode: str
    kind: str
    oid: str
    size: int | None
    path: str


def _tree_entries(raw: bytes, *, with_size: bool) -> list[_TreeEntry]:
    """Parse ``git ls-tree -z`` output (``-l`` adds the size column)."""
    entries: list[_TreeEntry] = []
    for record in raw.split(b"\0"):
        if not record:
            continue
        head, _tab, name = record.partition(b"\t")
        fields_ = head.decode("ascii").split()
        size = int(fields_[3]) if with_size and fields_[3] != "-" else None
        path = name.decode("utf-8", "surrogateescape")
        entries.append(_TreeEntry(fields_[0], fields_[1], fields_[2], size, path))
    return entries


class GitSource:
    """Model folders as committed on a branch of the repository at ``path`` (never its working copy).

    Each folder's fingerprint is its tree id in the branch's newest commit: it
    changes exactly when a commit changes the folder, so the folders a diff
    would name are the ones pushed, and a folder whose push must be retried
    needs no remembered diff base. ``path`` may be a folder inside the
    repository: then only the folders under it are watched.
    """

    def __init__(
        self, path: Path, *, branch: str | None = None, limits: WatchLimits = DEFAULT_LIMITS
    ) -> None:
        # Refused before git sees it: a branch name never reaches git as an option or an expression.
        named = check_branch(branch) if branch else None
        if not path.is_dir():
            raise InvalidInput(f"{path} is not a folder", code="watch_path_invalid")
        self.path = path.resolve()
        self.limits = limits
        self.git = Git(self.path)
        try:
            bare = self.git.output("rev-parse", "--is-bare-repository").strip() == b"true"
            self.prefix = "" if bare else self.git.output("rev-parse", "--show-prefix").decode().strip()
        except GitFailed as exc:
            raise InvalidInput(
                f"{path} is not a git repository (or git cannot read it): {exc.message}",
                code="not_a_repository",
            ) from None
        self.branch = named or self._head_branch()
        self.ref = self._ref_of(self.branch)
        self._last: tuple[str, list[FolderCandidate]] | None = None

    @property
    def description(self) -> str:
        where = f" (folder {self.prefix.rstrip('/')})" if self.prefix else ""
        return f"git repository {self.path}{where}, branch {self.branch}"

    def _head_branch(self) -> str:
        code, out = self.git.run("symbolic-ref", "--quiet", "--short", "HEAD", ok_codes=(0, 1))
        if code != 0:
            raise InvalidInput(
                f"HEAD of {self.path} is detached: name the branch to follow", code="invalid_branch"
            )
        return check_branch(out.decode("utf-8", "replace").strip())

    def _ref_of(self, branch: str) -> str:
        for ref in (f"refs/heads/{branch}", f"refs/remotes/{branch}"):
            code, _out = self.git.run("show-ref", "--verify", "--quiet", ref, ok_codes=(0, 1))
            if code == 0:
                return ref
        raise InvalidInput(f"branch {branch!r} does not exist in {self.path}", code="invalid_branch")

    def head(self) -> str:
        """The commit id the branch points at now."""
        commit = (
            self.git.output("rev-parse", "--verify", "--quiet", f"{self.ref}^{{commit}}").decode().strip()
        )
        if not is_commit_id(commit):
            raise GitFailed(f"git rev-parse of {self.ref} answered {commit[:80]!r}, not a commit id")
        return commit

    def scan(self) -> list[FolderCandidate]:
        commit = self.head()
        if self._last is not None and self._last[0] == commit:
            return self._last[1]
        treeish = f"{commit}:{self.prefix.rstrip('/')}" if self.prefix else commit
        candidates: list[FolderCandidate] = []
        listing = self.git.output("ls-tree", "--full-tree", "-z", treeish)
        for entry in _tree_entries(listing, with_size=False):
            if entry.path.startswith("."):
                continue
            where = f"{self.prefix}{entry.path}"
            labels = {"git.commit": commit, "git.path": where}
            if entry.mode == _TREE_MODE:
                kind: EntryKind = "folder"
            elif entry.mode in (_SYMLINK_MODE, _SUBMODULE_MODE):
                kind = "symlink" if entry.mode == _SYMLINK_MODE else "other"
            else:
                continue  # a file beside the model folders (a README)
            candidates.append(FolderCandidate(entry.path, entry.oid, where, labels, kind, entry.oid))
        self._last = (commit, candidates)
        return candidates

    def _small_blob(self, oid: str, where: str, *, limit: int, code: str) -> bytes:
        size = int(self.git.output("cat-file", "-s", oid).strip())
        if size > limit:
            raise _refuse(code, f"{where} holds {size} bytes, above the limit of {limit} bytes", where)
        return self.git.output("cat-file", "blob", oid)

    def _symlink(self, oid: str, link_path: str) -> InvalidInput:
        """The refusal of symlink ``link_path`` (relative to the watched folder), saying where it points."""
        shown = f"{self.prefix}{link_path}"
        target = self._small_blob(oid, shown, limit=4096, code="symlink_not_followed")
        return _symlink_refusal(link_path, target.decode("utf-8", "replace"), shown=shown)

    def export(self, candidate: FolderCandidate, dest: Path) -> bytes | None:
        if candidate.kind == "symlink":
            raise self._symlink(candidate.ref, candidate.name)
        if candidate.kind != "folder":
            raise _refuse(
                "submodule_not_followed",
                f"{candidate.where} is a submodule; it is not followed",
                candidate.where,
            )
        # --full-tree: without it, git run from a folder inside the repository lists only paths under it.
        entries = _tree_entries(
            self.git.output("ls-tree", "--full-tree", "-r", "-z", "-l", candidate.ref), with_size=True
        )
        if len(entries) > self.limits.max_files:
            raise _too_many(candidate.where, self.limits.max_files)
        policy: bytes | None = None
        for entry in entries:
            where = f"{candidate.where}/{entry.path}"
            parts = entry.path.split("/")
            if any(part in ("", ".", "..") for part in parts):
                raise _refuse("invalid_path", f"{where} is not a plain relative path", where)
            if not is_packed(entry.path) and entry.path != POLICY_FILE:
                continue
            if entry.mode == _SYMLINK_MODE:
                raise self._symlink(entry.oid, f"{candidate.name}/{entry.path}")
            if entry.mode == _SUBMODULE_MODE or entry.kind != "blob":
                raise _refuse("submodule_not_followed", f"{where} is a submodule; it is not followed", where)
            if entry.path == POLICY_FILE:
                policy = self._small_blob(
                    entry.oid, where, limit=self.limits.max_policy_bytes, code="policy_file_too_large"
                )
                continue
            if entry.size is not None and entry.size > self.limits.max_file_bytes:
                raise _too_large(where, entry.size, self.limits.max_file_bytes)
            target_path = dest.joinpath(*parts)
            target_path.parent.mkdir(parents=True, exist_ok=True)
            with open(target_path, "xb") as out:
                self.git.blob_to(entry.oid, out)
        return policy
