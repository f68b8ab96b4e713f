"""Safe extraction of an uploaded model archive (tar, tar.gz/bz2/xz, zip).

Invariants:

* Every member is checked (type, name, sizes, count, compression ratio)
  before anything is written. Only regular files and directories pass.
* The same size, count and ratio limits are checked again against the bytes
  actually produced while writing, so a lying header cannot get past.
* Extraction goes into a fresh directory made by ``tempfile.mkdtemp`` inside
  ``dest_parent``; on any failure that whole directory is removed and
  ``ArchiveRejected`` is raised, so a rejection leaves ``dest_parent`` as it was.
* ``tarfile.extractall`` and ``ZipFile.extract*`` are never used: on Python
  3.11.7 the tar data filter strips a leading '/' instead of refusing, leaves
  earlier members behind after a refusal, has no size limits and is bypassable
  (CVE-2025-4517); zipfile silently rewrites ``../x`` to ``x`` and turns
  symlinks into regular files (all seen on Python 3.11.7).

Concurrency: each call works in its own temporary directory (mode 0o700 until
it is complete), so concurrent extractions into one ``dest_parent`` do not
interfere. Nothing here is shared between calls.

Every rejection carries ``details={"reason": ..., "member": ...}`` where the
reason is one of ``REASONS``.
"""

from __future__ import annotations

import _compression
import bz2
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Literal, cast

from controlplane.errors import ArchiveRejected, InvalidInput, InvalidModelConfig
from controlplane.files import atomic_writer

__all__ = [
    "REASONS",
    "ArchiveLimits",
    "detect_format",
    "extract_archive",
    "find_model_root",
    "pack_directory",
]

#: Every ``details["reason"]`` value ``extract_archive``/``detect_format`` can raise.
REASONS = frozenset(
    {
        "unknown_format",
        "empty",
        "corrupt",
        "symlink",
        "hardlink",
        "special_file",
        "encrypted",
        "unsupported_compression",
        "absolute_path",
        "path_traversal",
        "backslash",
        "drive_letter",
        "control_character",
        "empty_name",
        "duplicate",
        "name_too_long",
        "too_deep",
        "too_many_members",
        "file_too_large",
        "total_too_large",
        "compression_ratio",
        "size_mismatch",
        "header_too_large",
        "write_failed",
    }
)

_GiB = 1024**3
_MiB = 1024**2
_CHUNK = _MiB
# Legitimate pax/GNU long-name headers are a few KiB, but tarfile reads each
# into memory in one call and keeps chained ones alive while it recurses: cap
# any single read (data is copied in _CHUNK pieces) and all header bytes read
# during the pre-scan (10,000 members with pax headers need ~20 MiB).
_MAX_SINGLE_READ = _CHUNK
_MAX_HEADER_BYTES = 64 * _MiB
_XZ_MEMLIMIT = 256 * _MiB
# Zero padding after the end-of-archive block (tar pads to its record size,
# 10 KiB by default; 1 MiB with the largest blocking factors seen in practice).
_MAX_TRAILER = 4 * _MiB
_DRIVE = re.compile(r"^[A-Za-z]:")
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# zipfile decompresses bzip2/lzma members without an output bound per read, so
# only stored and deflated members (what every common zip tool writes) pass.
_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_TAR_FILE_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})

# Errors the stdlib raises for damaged or truncated input. struct.error and
# UnicodeError come from hand-made headers; RecursionError from long chains of
# pax headers (tarfile recurses once per header).
_CORRUPT_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    ValueError,
    struct.error,
    NotImplementedError,
    RecursionError,
)

_Compression = Literal["gz", "bz2", "xz", "tar", "zip"]


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds an archive must stay within, checked on declared and on actual sizes.

    ``max_compression_ratio`` applies to the whole archive (uncompressed bytes /
    archive file size) and to each zip member. It is only enforced once the
    uncompressed bytes in question exceed ``ratio_grace_bytes``: a few KiB of
    padded text legitimately compress far better than 200:1, and a "bomb"
    that expands to less than a MiB is harmless.
    """

    max_total_bytes: int = 8 * _GiB
    max_file_bytes: int = 4 * _GiB
    max_members: int = 10_000
    max_compression_ratio: int = 200
    max_name_length: int = 255
    max_path_length: int = 4096
    max_depth: int = 32
    ratio_grace_bytes: int = _MiB

    def __post_init__(self) -> None:
        # A zero or negative limit is a settings mistake; refusing it here
        # beats rejecting every upload later with a puzzling reason.
        for name, value in vars(self).items():
            if value < 0 or (value == 0 and name != "ratio_grace_bytes"):
                raise ValueError(f"ArchiveLimits.{name} must be positive, got {value}")


def _reject(reason: str, message: str, member: str | None = None) -> ArchiveRejected:
    return ArchiveRejected(message, details={"reason": reason, "member": member})


# --------------------------------------------------------------------------- format


def _sniff(path: Path) -> _Compression:
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise _reject("empty", "the archive is empty (0 bytes)")
    # ustar first: a plain tar's first member name could start with any bytes.
    if head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"PK\x05\x06"):
        raise _reject("empty", "the archive is an empty zip (no members)")
    raise _reject(
        "unknown_format",
        "the archive is not a tar, tar.gz, tar.bz2, tar.xz or zip file (unrecognised magic bytes)",
    )


def detect_format(path: Path) -> Literal["tar", "zip"]:
    """Tell a tar (plain or gzip/bzip2/xz-compressed) from a zip by its magic bytes.

    Raises ``ArchiveRejected`` with reason ``unknown_format`` for anything
    else and ``empty`` for a 0-byte file or an empty zip.
    """
    return "zip" if _sniff(path) == "zip" else "tar"


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class _Member:
    name: str
    parts: tuple[str, ...]
    is_dir: bool
    size: int
    # Compressed size for zip members (per-member ratio); None for tar.
    compressed: int | None
    ref: tarfile.TarInfo | zipfile.ZipInfo


def _check_name(raw: str, *, is_dir: bool, limits: ArchiveLimits) -> tuple[str, ...]:
    """Validate a member name and return its components ('.' dropped)."""
    if raw == "":
        raise _reject("empty_name", "an archive member has an empty name", raw)
    if any(unicodedata.category(ch) == "Cc" for ch in raw):
        raise _reject(
            "control_character",
            f"archive member {raw!r} has a NUL or control character in its name",
            raw,
        )
    if "\\" in raw:
        raise _reject("backslash", f"archive member {raw!r} has a backslash in its name", raw)
    if raw.startswith("/"):
        raise _reject("absolute_path", f"archive member {raw!r} has an absolute path", raw)
    if _DRIVE.match(raw):
        raise _reject("drive_letter", f"archive member {raw!r} starts with a drive letter", raw)
    name = raw[:-1] if is_dir and raw.endswith("/") else raw
    parts = name.split("/")
    if ".." in parts:
        raise _reject("path_traversal", f"archive member {raw!r} escapes the model folder", raw)
    if "" in parts:
        raise _reject("empty_name", f"archive member {raw!r} has an empty path component", raw)
    if len(raw.encode("utf-8", "surrogateescape")) > limits.max_path_length:
        raise _reject(
            "name_too_long",
            f"archive member {raw[:64]!r}... has a name longer than {limits.max_path_length} bytes",
            raw,
        )
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > limits.max_name_length:
            raise _reject(
                "name_too_long",
                f"archive member {raw!r} has a path component longer than {limits.max_name_length} bytes",
                raw,
            )
    kept = tuple(p for p in parts if p != ".")
    if len(kept) > limits.max_depth:
        raise _reject(
            "too_deep", f"archive member {raw!r} is nested deeper than {limits.max_depth} levels", raw
        )
    if not kept and not is_dir:
        raise _reject("empty_name", f"archive member {raw!r} is a file without a name", raw)
    return kept


class _Names:
    """Detects two members that would land on the same path, or a file used as a folder."""

    def __init__(self) -> None:
        self._kinds: dict[tuple[str, ...], bool] = {}
        self._parents: set[tuple[str, ...]] = set()

    def add(self, raw: str, parts: tuple[str, ...], *, is_dir: bool) -> None:
        if parts in self._kinds:
            raise _reject(
                "duplicate", f"archive member {raw!r} names the same path as an earlier member", raw
            )
        if not is_dir and parts in self._parents:
            raise _reject(
                "duplicate", f"archive member {raw!r} is a file but also a folder of other members", raw
            )
        for i in range(1, len(parts)):
            ancestor = parts[:i]
            if self._kinds.get(ancestor) is False:
                raise _reject(
                    "duplicate",
                    f"archive member {raw!r} lies under {'/'.join(ancestor)!r}, which is a file",
                    raw,
                )
            self._parents.add(ancestor)
        self._kinds[parts] = is_dir


class _Tally:
    """Running member count and byte total, checked against the limits."""

    def __init__(self, limits: ArchiveLimits, archive_size: int) -> None:
        self.limits = limits
        self.archive_size = max(archive_size, 1)
        self.members = 0
        self.total = 0

    def member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise _reject(
                "too_many_members",
                f"the archive has more than {self.limits.max_members} members (at {name!r})",
                name,
            )

    def file_bytes(self, name: str, added: int, file_total: int, compressed: int | None) -> None:
        """Account ``added`` more bytes of member ``name``, which now holds ``file_total``."""
        lim = self.limits
        if file_total > lim.max_file_bytes:
            raise _reject(
                "file_too_large",
                f"archive member {name!r} is larger than the limit of {lim.max_file_bytes} bytes",
                name,
            )
        self.total += added
        if self.total > lim.max_total_bytes:
            raise _reject(
                "total_too_large",
                f"the archive expands to more than {lim.max_total_bytes} bytes (at member {name!r})",
                name,
            )
        if self.total > lim.ratio_grace_bytes and (
            self.total > lim.max_compression_ratio * self.archive_size
        ):
            raise _reject(
                "compression_ratio",
                f"the archive expands more than {lim.max_compression_ratio}x its size of "
                f"{self.archive_size} bytes (at member {name!r}); refusing a likely "
                "decompression bomb",
                name,
            )
        if (
            compressed is not None
            and file_total > lim.ratio_grace_bytes
            and file_total > lim.max_compression_ratio * max(compressed, 1)
        ):
            raise _reject(
                "compression_ratio",
                f"archive member {name!r} expands more than {lim.max_compression_ratio}x its "
                f"compressed size of {compressed} bytes; refusing a likely decompression bomb",
                name,
            )


# --------------------------------------------------------------------------- tar


class _GuardedReader:
    """Decompressed tar stream that refuses oversized single reads and remembers the last one.

    tarfile reads a whole pax or GNU long-name header with one ``read(size)``
    call, ``size`` coming from the archive: an unbounded read would let a tiny
    tar.gz allocate gigabytes. The last block read is what ended tarfile's
    member loop, which tells a clean end-of-archive from garbage that tarfile
    silently treats as the end.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.last = b""
        # Bytes tarfile may still read for headers; None once the pre-scan is over.
        self.header_budget: int | None = _MAX_HEADER_BYTES

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > _MAX_SINGLE_READ:
            raise _reject(
                "header_too_large",
                f"the archive has a header or metadata block larger than {_MAX_SINGLE_READ} bytes",
            )
        if self.header_budget is not None:
            self.header_budget -= size
            if self.header_budget < 0:
                raise _reject(
                    "header_too_large",
                    f"the archive's headers add up to more than {_MAX_HEADER_BYTES} bytes",
                )
        data = self._raw.read(size)
        self.last = data
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _tar_kind(info: tarfile.TarInfo) -> bool:
    """Return True for a directory, False for a regular file; refuse anything else."""
    name = info.name
    if info.type == tarfile.DIRTYPE:
        return True
    if info.type in _TAR_FILE_TYPES and not info.issparse():
        return False
    if info.issym():
        raise _reject("symlink", f"archive member {name!r} is a symlink (to {info.linkname!r})", name)
    if info.islnk():
        raise _reject("hardlink", f"archive member {name!r} is a hard link (to {info.linkname!r})", name)
    kind = (
        "a sparse file"
        if info.issparse()
        else "a device"
        if info.ischr() or info.isblk()
        else "a fifo"
        if info.isfifo()
        else f"of unsupported type {info.type!r}"
    )
    raise _reject(
        "special_file", f"archive member {name!r} is {kind}; only files and folders are allowed", name
    )


def _scan_tar(
    tf: tarfile.TarFile, reader: _GuardedReader, limits: ArchiveLimits, archive_size: int
) -> list[_Member]:
    tally = _Tally(limits, archive_size)
    names = _Names()
    members: list[_Member] = []
    # next() one member at a time (not getmembers()) so limits stop a hostile
    # archive at the first bad header, before tarfile skips a huge body.
    while (info := tf.next()) is not None:
        tally.member(info.name)
        is_dir = _tar_kind(info)
        parts = _check_name(info.name, is_dir=is_dir, limits=limits)
        names.add(info.name, parts, is_dir=is_dir)
        size = 0 if is_dir else info.size
        if not is_dir:
            tally.file_bytes(info.name, size, size, None)
        members.append(_Member(info.name, parts, is_dir, size, None, info))
    # tarfile ends the member list silently at the first unparsable header
    # past offset 0, which is also what a member with an understated size
    # looks like: only an all-zero block (or the end of the data) is a clean end.
    if reader.last.strip(b"\0"):
        last = members[-1].name if members else None
        raise _reject(
            "corrupt",
            "the tar archive has data that is not a valid header"
            + (f" after member {last!r} (its declared size may be wrong)" if last else ""),
            last,
        )
    reader.header_budget = None
    _check_tar_trailer(reader, members[-1].name if members else None)
    if not members:
        raise _reject("empty", "the archive has no members")
    return members


def _check_tar_trailer(reader: _GuardedReader, last: str | None) -> None:
    """Read the rest of the stream: only zero padding may follow the end-of-archive block.

    Reading to the end is also what makes gzip/bzip2/xz verify their checksums
    (gzip checks its CRC only at end of stream, which tarfile never reaches),
    so corrupted member data is caught here, before anything is written.
    """
    seen = 0
    while chunk := reader.read(_CHUNK):
        seen += len(chunk)
        if chunk.strip(b"\0") or seen > _MAX_TRAILER:
            raise _reject(
                "corrupt",
                "the tar archive has unexpected data after its end-of-archive marker",
                last,
            )


def _open_xz(raw: BinaryIO) -> IO[bytes]:
    # What lzma.LZMAFile does, plus a memory limit it cannot pass on: an xz
    # header may ask for a 4 GiB dictionary, which liblzma would fill as the
    # output grows. xz -9 needs 65 MiB.
    reader = _compression.DecompressReader(
        raw, lzma.LZMADecompressor, trailing_error=lzma.LZMAError, memlimit=_XZ_MEMLIMIT
    )
    return io.BufferedReader(reader)


def _open_gzip(raw: BinaryIO) -> IO[bytes]:
    # GzipFile has every method of IO[bytes]; typeshed only declares it a BufferedIOBase.
    return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))


_DECOMPRESSORS: dict[str, Callable[[BinaryIO], IO[bytes]]] = {
    "gz": _open_gzip,
    "bz2": lambda raw: bz2.BZ2File(raw, mode="rb"),
    "xz": _open_xz,
}


@contextmanager
def _open_tar_stream(path: Path, kind: _Compression) -> Iterator[IO[bytes]]:
    with open(path, "rb") as raw:
        decompress = _DECOMPRESSORS.get(kind)
        if decompress is None:
            yield raw
            return
        with decompress(raw) as stream:
            yield stream


def _extract_tar(
    path: Path, kind: _Compression, dest_parent: Path, limits: ArchiveLimits, progress: _Progress
) -> Path:
    archive_size = path.stat().st_size
    with _open_tar_stream(path, kind) as stream:
        reader = _GuardedReader(stream)
        # TarFile directly, not tarfile.open: we already know the compression
        # and must hand it the guarded reader.
        with tarfile.TarFile(name=str(path), mode="r", fileobj=reader) as tf:  # type: ignore[arg-type]
            members = _scan_tar(tf, reader, limits, archive_size)

            def open_member(member: _Member) -> IO[bytes]:
                assert isinstance(member.ref, tarfile.TarInfo)
                fileobj = tf.extractfile(member.ref)
                if fileobj is None:  # pragma: no cover - _tar_kind admitted only files
                    raise _reject("special_file", f"archive member {member.name!r} has no data")
                return fileobj

            return _materialise(members, open_member, dest_parent, limits, archive_size, progress)


# --------------------------------------------------------------------------- zip


def _zip_kind(info: zipfile.ZipInfo) -> bool:
    """Return True for a directory, False for a regular file; refuse anything else."""
    name = info.orig_filename
    is_dir = name.endswith("/")
    # The high 16 bits hold a Unix st_mode when the zip was made on Unix;
    # zipfile ignores them and would write a symlink entry as a regular file.
    fmt = stat.S_IFMT(info.external_attr >> 16)
    if fmt == stat.S_IFLNK:
        raise _reject("symlink", f"archive member {name!r} is a symlink", name)
    if fmt not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _reject(
            "special_file",
            f"archive member {name!r} is a device, fifo or socket; only files and folders are allowed",
            name,
        )
    if (fmt == stat.S_IFDIR) != is_dir and fmt != 0:
        raise _reject(
            "corrupt",
            f"archive member {name!r} has a type that contradicts its name "
            "(folders must end with '/', files must not)",
            name,
        )
    if info.flag_bits & 0x1:
        raise _reject("encrypted", f"archive member {name!r} is encrypted", name)
    if info.compress_type not in _ZIP_METHODS:
        raise _reject(
            "unsupported_compression",
            f"archive member {name!r} uses zip compression method {info.compress_type}; "
            "only stored and deflated are accepted",
            name,
        )
    if is_dir and info.file_size:
        raise _reject("corrupt", f"archive member {name!r} is a folder with content", name)
    return is_dir


def _scan_zip(zf: zipfile.ZipFile, limits: ArchiveLimits, archive_size: int) -> list[_Member]:
    tally = _Tally(limits, archive_size)
    names = _Names()
    members: list[_Member] = []
    for info in zf.infolist():
        # orig_filename: ZipInfo.filename is already cut at the first NUL.
        name = info.orig_filename
        tally.member(name)
        is_dir = _zip_kind(info)
        parts = _check_name(name, is_dir=is_dir, limits=limits)
        names.add(name, parts, is_dir=is_dir)
        if not is_dir:
            tally.file_bytes(name, info.file_size, info.file_size, info.compress_size)
        members.append(
            _Member(name, parts, is_dir, 0 if is_dir else info.file_size, info.compress_size, info)
        )
    if not members:
        raise _reject("empty", "the archive has no members")
    return members


def _extract_zip(path: Path, dest_parent: Path, limits: ArchiveLimits, progress: _Progress) -> Path:
    archive_size = path.stat().st_size
    with zipfile.ZipFile(path, mode="r") as zf:
        members = _scan_zip(zf, limits, archive_size)

        def open_member(member: _Member) -> IO[bytes]:
            assert isinstance(member.ref, zipfile.ZipInfo)
            return zf.open(member.ref, mode="r")

        return _materialise(members, open_member, dest_parent, limits, archive_size, progress)


# --------------------------------------------------------------------------- writing


class _Progress:
    """What a failure should be blamed on and cleaned up, and what the caller asked to collect."""

    def __init__(self, digests: dict[str, tuple[str, int]] | None = None) -> None:
        self.member: str | None = None
        self.tmp: Path | None = None
        self.digests = digests


class _OverlappedHash:
    """SHA-256 of a stream computed on a second thread while the first one writes it.

    hashlib releases the GIL for large updates, so hashing chunk N overlaps
    writing chunk N+1; at most one chunk waits, which keeps memory bounded
    and the order of updates intact.
    """

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._hash = hashlib.sha256()
        self._pool = pool
        self._pending: Future[None] | None = None

    def update(self, chunk: bytes) -> None:
        if self._pending is not None:
            self._pending.result()
        self._pending = self._pool.submit(self._hash.update, chunk)

    def hexdigest(self) -> str:
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        return self._hash.hexdigest()


def _nofollow_opener(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


@contextmanager
def _writing(member: str | None) -> Iterator[None]:
    # Disk errors (full, quota) are not the archive's fault: a distinct reason.
    try:
        yield
    except OSError as exc:
        what = f"archive member {member!r}" if member else "the extraction folder"
        raise _reject("write_failed", f"could not write {what}: {exc}", member) from exc


def _make_dirs(root: Path, parts: tuple[str, ...], made: set[tuple[str, ...]]) -> None:
    for i in range(1, len(parts) + 1):
        prefix = parts[:i]
        if prefix in made:
            continue
        target = root.joinpath(*prefix)
        os.mkdir(target, 0o755)
        # Explicit chmod: the mode passed to mkdir is masked by the umask.
        os.chmod(target, 0o755)
        made.add(prefix)


def _copy_member(
    src: IO[bytes], dst: BinaryIO, member: _Member, tally: _Tally, digest: _OverlappedHash | None = None
) -> None:
    written = 0
    while chunk := src.read(_CHUNK):
        written += len(chunk)
        if written > member.size:
            raise _reject(
                "size_mismatch",
                f"archive member {member.name!r} holds more than its declared {member.size} bytes",
                member.name,
            )
        tally.file_bytes(member.name, len(chunk), written, member.compressed)
        if digest is not None:
            digest.update(chunk)
        with _writing(member.name):
            dst.write(chunk)
    if written != member.size:
        raise _reject(
            "size_mismatch",
            f"archive member {member.name!r} holds {written} bytes but declares {member.size}",
            member.name,
        )


def _materialise(
    members: list[_Member],
    open_member: Callable[[_Member], IO[bytes]],
    dest_parent: Path,
    limits: ArchiveLimits,
    archive_size: int,
    progress: _Progress,
) -> Path:
    # mkdtemp gives 0o700: nobody else can plant a symlink while we write.
    with _writing(None):
        tmp = Path(tempfile.mkdtemp(prefix="extract-", dir=dest_parent))
    progress.tmp = tmp
    # Limits again, now on the bytes really produced (the pre-scan trusted headers).
    tally = _Tally(limits, archive_size)
    made: set[tuple[str, ...]] = {()}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash") as pool:
        _write_members(members, open_member, tmp, tally, made, progress, pool)
    progress.member = None
    with _writing(None):
        os.chmod(tmp, 0o755)
    return tmp


def _write_members(
    members: list[_Member],
    open_member: Callable[[_Member], IO[bytes]],
    tmp: Path,
    tally: _Tally,
    made: set[tuple[str, ...]],
    progress: _Progress,
    pool: ThreadPoolExecutor,
) -> None:
    for member in members:
        progress.member = member.name
        tally.member(member.name)
        if member.is_dir:
            with _writing(member.name):
                _make_dirs(tmp, member.parts, made)
            continue
        with _writing(member.name):
            _make_dirs(tmp, member.parts[:-1], made)
            out = open(tmp.joinpath(*member.parts), "xb", opener=_nofollow_opener)  # noqa: SIM115
        digest = _OverlappedHash(pool) if progress.digests is not None else None
        with out, open_member(member) as src:
            with _writing(member.name):
                os.fchmod(out.fileno(), 0o644)
            _copy_member(src, out, member, tally, digest)
        if digest is not None and progress.digests is not None:
            progress.digests["/".join(member.parts)] = (digest.hexdigest(), member.size)


def extract_archive(
    archive_path: Path,
    dest_parent: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    *,
    digests: dict[str, tuple[str, int]] | None = None,
) -> Path:
    """Check every member of ``archive_path``, then extract it into a new directory.

    Returns a fresh directory inside ``dest_parent`` (mode 0o755, files 0o644,
    folders 0o755) holding the members. Raises ``ArchiveRejected`` with
    ``details["reason"]`` in ``REASONS`` and ``details["member"]`` naming the
    offending member (or None); in that case nothing is left in ``dest_parent``.
    A missing ``archive_path`` or ``dest_parent`` is the caller's error and
    raises the plain ``OSError``.

    Given a ``digests`` dict, fills it with ``relative/path -> (sha256, size)``
    of every file written, hashed while it is written (no second read).
    """
    if not dest_parent.is_dir():
        raise NotADirectoryError(f"extraction target {dest_parent} is not a directory")
    kind = _sniff(archive_path)
    progress = _Progress(digests)
    try:
        if kind == "zip":
            return _extract_zip(archive_path, dest_parent, limits, progress)
        return _extract_tar(archive_path, kind, dest_parent, limits, progress)
    except ArchiveRejected:
        _discard(progress.tmp)
        raise
    except _CORRUPT_ERRORS as exc:
        _discard(progress.tmp)
        where = f" (at member {progress.member!r})" if progress.member else ""
        raise _reject(
            "corrupt",
            f"the archive is corrupt or truncated{where}: {type(exc).__name__}: {exc}",
            progress.member,
        ) from exc
    except BaseException:
        _discard(progress.tmp)
        raise


def _discard(tmp: Path | None) -> None:
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- model root


def find_model_root(extracted: Path) -> Path:
    """Return the folder holding ``config.pbtxt``: ``extracted`` or its single sub-folder.

    Accepts both ``config.pbtxt, 1/...`` at the top and one wrapping folder
    (``mlp/config.pbtxt``, as ``tar czf x.tgz mlp`` packs it). Nothing is
    skipped: a second top-level entry such as macOS's ``__MACOSX/`` makes the
    layout ambiguous and is refused. Raises ``InvalidModelConfig`` otherwise.
    """
    if _is_plain_file(extracted / "config.pbtxt"):
        return extracted
    entries = sorted(extracted.iterdir())
    if (
        len(entries) == 1
        and entries[0].is_dir()
        and not entries[0].is_symlink()
        and _is_plain_file(entries[0] / "config.pbtxt")
    ):
        return entries[0]
    found = ", ".join(e.name + ("/" if e.is_dir() else "") for e in entries[:10]) or "nothing"
    raise InvalidModelConfig(
        "config.pbtxt is missing: the archive must hold it at the top level or inside a "
        f"single top-level folder (found: {found})",
        details={"reason": "missing_config"},
    )


def _is_plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


# --------------------------------------------------------------------------- packing


@dataclass(frozen=True)
class _Entry:
    rel: str
    path: Path
    is_dir: bool


def _collect(src: Path) -> list[_Entry]:
    entries: list[_Entry] = []

    def walk(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            rel = f"{prefix}{child.name}"
            if child.is_symlink():
                raise InvalidInput(
                    f"{rel!r} in {src} is a symlink; model folders are packed without symlinks",
                    details={"path": rel},
                )
            if child.is_dir(follow_symlinks=False):
                entries.append(_Entry(rel, Path(child.path), True))
                walk(Path(child.path), rel + "/")
            elif child.is_file(follow_symlinks=False):
                entries.append(_Entry(rel, Path(child.path), False))
            else:
                raise InvalidInput(f"{rel!r} in {src} is not a regular file or folder", details={"path": rel})

    walk(src, "")
    return entries


def _write_tar_gz(entries: list[_Entry], out: BinaryIO) -> None:
    # mtime=0 and an empty name keep the gzip header free of per-run data.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=6, mtime=0) as gz,
        tarfile.TarFile(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf,
    ):
        for entry in entries:
            info = tarfile.TarInfo(entry.rel)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if entry.is_dir:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tf.addfile(info)
                continue
            info.mode = 0o644
            with open(entry.path, "rb") as f:
                info.size = os.fstat(f.fileno()).st_size
                tf.addfile(info, f)


def _write_zip(entries: list[_Entry], out: BinaryIO) -> None:
    with zipfile.ZipFile(out, mode="w", compression=zipfile.ZIP_DEFLATED) as zf:
        for entry in entries:
            if entry.is_dir:
                info = zipfile.ZipInfo(entry.rel + "/", date_time=_FIXED_ZIP_TIME)
                info.create_system = 3
                info.external_attr = ((stat.S_IFDIR | 0o755) << 16) | 0x10
                # ZipFile.mkdir(ZipInfo) on 3.11 forgets to set these itself.
                info.CRC = info.compress_size = info.file_size = 0
                zf.mkdir(info)
                continue
            info = zipfile.ZipInfo(entry.rel, date_time=_FIXED_ZIP_TIME)
            info.create_system = 3
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            with open(entry.path, "rb") as f:
                # Set before open(): zipfile picks zip64 from the expected size.
                info.file_size = os.fstat(f.fileno()).st_size
                with zf.open(info, mode="w") as dst:
                    shutil.copyfileobj(f, dst, _CHUNK)


def pack_directory(src: Path, out: Path, fmt: Literal["tar.gz", "zip"] = "tar.gz") -> Path:
    """Pack the model folder ``src`` into ``out`` with names relative to ``src``.

    ``config.pbtxt`` ends up at the archive root. Members are in sorted order
    with fixed timestamps and owners, so packing the same folder twice gives
    identical bytes. Raises ``InvalidInput`` if ``src`` holds a symlink or a
    special file (naming it), or if ``out`` would land inside ``src``. ``out``
    is written through a temporary sibling, so a failure leaves no partial file.
    """
    if fmt not in ("tar.gz", "zip"):
        raise InvalidInput(f"unknown archive format {fmt!r}; use 'tar.gz' or 'zip'")
    if not src.is_dir():
        raise InvalidInput(f"{src} is not a folder")
    if out.resolve().is_relative_to(src.resolve()):
        raise InvalidInput(f"the archive {out} must not be written inside the folder {src}")
    entries = _collect(src)
    with atomic_writer(out, mode=0o644, suffix=".partial") as f:
        if fmt == "zip":
            _write_zip(entries, f)
        else:
            _write_tar_gz(entries, f)
    return out
