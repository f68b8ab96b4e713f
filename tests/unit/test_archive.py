"""Specification of safe model-archive extraction (controlplane.artifacts.archive).

Every hostile archive must be refused with the right ``details["reason"]``
and leave the destination folder exactly as empty as it was before.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import random
import stat
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.artifacts import archive as archive_mod
from controlplane.artifacts.archive import (
    REASONS,
    ArchiveLimits,
    detect_format,
    extract_archive,
    find_model_root,
    pack_directory,
)
from controlplane.errors import ArchiveRejected, InvalidInput, InvalidModelConfig

MODEL: dict[str, bytes] = {
    "config.pbtxt": b'name: "mlp"\nbackend: "onnxruntime"\nmax_batch_size: 8\n',
    "1/model.onnx": bytes(range(256)) * 300,
    "1/extra/vocab.txt": "héllo\nwörld\n".encode(),
}

TarEntry = tuple[tarfile.TarInfo, bytes | None]
ZipEntry = tuple[zipfile.ZipInfo, bytes]


# --------------------------------------------------------------------------- builders


def noise(size: int) -> bytes:
    """Incompressible but reproducible bytes."""
    return random.Random(size).randbytes(size)


def tar_file(name: str, data: bytes = b"data") -> TarEntry:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def tar_dir(name: str) -> TarEntry:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def tar_special(name: str, kind: bytes, linkname: str = "") -> TarEntry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def tar_bytes(entries: list[TarEntry], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def write_tar(path: Path, entries: list[TarEntry], compression: str = "gz", **kw: int) -> Path:
    raw = tar_bytes(entries, **kw)
    if compression == "gz":
        raw = gzip.compress(raw, compresslevel=6)
    path.write_bytes(raw)
    return path


def zip_file(
    name: str,
    data: bytes = b"data",
    *,
    mode: int = stat.S_IFREG | 0o644,
    method: int = zipfile.ZIP_DEFLATED,
) -> ZipEntry:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    info.compress_type = method
    return info, data


def zip_dir(name: str) -> ZipEntry:
    return zip_file(name.rstrip("/") + "/", b"", mode=stat.S_IFDIR | 0o755, method=zipfile.ZIP_STORED)


def write_zip(path: Path, entries: list[ZipEntry]) -> Path:
    with warnings.catch_warnings():
        # zipfile warns about duplicate names, which some cases want on purpose.
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w") as zf:
            for info, data in entries:
                zf.writestr(info, data)
    return path


def write_model(root: Path, files: dict[str, bytes] = MODEL) -> Path:
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def patch_tar_size(raw: bytes, header_offset: int, field: bytes) -> bytes:
    """Overwrite the size field of the header at ``header_offset`` and fix its checksum."""
    header = bytearray(raw[header_offset : header_offset + 512])
    header[124:136] = field
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return raw[:header_offset] + bytes(header) + raw[header_offset + 512 :]


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "dest"
    d.mkdir()
    return d


def assert_rejected(
    archive: Path, dest: Path, reason: str, limits: ArchiveLimits | None = None
) -> ArchiveRejected:
    assert reason in REASONS
    with pytest.raises(ArchiveRejected) as caught:
        extract_archive(archive, dest, limits or ArchiveLimits())
    err = caught.value
    assert err.details["reason"] == reason, err.message
    assert set(err.details) == {"reason", "member"}
    assert list(dest.iterdir()) == [], "a rejected archive must leave nothing behind"
    return err


# --------------------------------------------------------------------------- formats


def test_archive_limits_refuse_non_positive_values() -> None:
    with pytest.raises(ValueError, match="max_members"):
        ArchiveLimits(max_members=0)


@pytest.mark.parametrize(
    ("suffix", "mode", "expected"),
    [
        ("tar", "w", "tar"),
        ("tar.gz", "w:gz", "tar"),
        ("tar.bz2", "w:bz2", "tar"),
        ("tar.xz", "w:xz", "tar"),
    ],
)
def test_detect_format_recognises_tar_and_its_compressions_by_magic_bytes(
    tmp_path: Path, suffix: str, mode: str, expected: str
) -> None:
    path = tmp_path / f"model.bin-{suffix}"  # the name must not matter
    with tarfile.open(path, mode) as tf:
        info, data = tar_file("config.pbtxt")
        tf.addfile(info, io.BytesIO(data))
    assert detect_format(path) == expected


def test_detect_format_recognises_zip_by_magic_bytes(tmp_path: Path) -> None:
    assert detect_format(write_zip(tmp_path / "m.tgz", [zip_file("config.pbtxt")])) == "zip"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"PK\x05\x06" + bytes(18), "empty"),
        (b"just some text, not an archive" * 20, "unknown_format"),
        (b"7z\xbc\xaf\x27\x1c" + bytes(100), "unknown_format"),
    ],
    ids=["zero-bytes", "empty-zip", "text", "7z"],
)
def test_unrecognised_or_empty_files_are_refused_before_anything_is_written(
    tmp_path: Path, dest: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "upload"
    path.write_bytes(content)
    err = assert_rejected(path, dest, reason)
    assert err.details["member"] is None


def test_a_tar_gz_without_members_is_refused_as_empty(tmp_path: Path, dest: Path) -> None:
    assert_rejected(write_tar(tmp_path / "e.tgz", []), dest, "empty")


# --------------------------------------------------------------------------- happy paths

LAYOUTS = {"root": "", "folder": "mlp/"}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "tar.bz2", "tar.xz", "zip"])
def test_extracted_files_are_byte_identical_and_the_model_root_is_found(
    tmp_path: Path, dest: Path, fmt: str, layout: str
) -> None:
    prefix = LAYOUTS[layout]
    path = tmp_path / f"model.{fmt}"
    if fmt == "zip":
        write_zip(path, [zip_file(prefix + rel, data) for rel, data in MODEL.items()])
    else:
        mode = {"tar": "w", "tar.gz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz"}[fmt]
        with tarfile.open(path, mode) as tf:
            for rel, data in MODEL.items():
                info, payload = tar_file(prefix + rel, data)
                tf.addfile(info, io.BytesIO(payload))

    extracted = extract_archive(path, dest)

    assert extracted.parent == dest
    assert list(dest.iterdir()) == [extracted]
    root = find_model_root(extracted)
    assert root == (extracted / "mlp" if prefix else extracted)
    assert read_tree(root) == MODEL


def test_tar_made_with_tar_c_dot_and_dot_slash_names_extracts(tmp_path: Path, dest: Path) -> None:
    entries = [tar_dir("./"), tar_file("./config.pbtxt", MODEL["config.pbtxt"]), tar_dir("./1")]
    entries.append(tar_file("./1/model.onnx", MODEL["1/model.onnx"]))
    extracted = extract_archive(write_tar(tmp_path / "dot.tgz", entries), dest)
    assert find_model_root(extracted) == extracted
    assert read_tree(extracted) == {k: MODEL[k] for k in ("config.pbtxt", "1/model.onnx")}


def test_extracted_files_are_0644_and_folders_0755_whatever_the_archive_says(
    tmp_path: Path, dest: Path
) -> None:
    config, data = tar_file("config.pbtxt")
    config.mode = 0o4777  # setuid, world-writable: must not survive
    folder, _ = tar_dir("1")
    folder.mode = 0o777
    extracted = extract_archive(write_tar(tmp_path / "m.tgz", [(config, data), (folder, None)]), dest)
    assert stat.S_IMODE((extracted / "config.pbtxt").stat().st_mode) == 0o644
    assert stat.S_IMODE((extracted / "1").stat().st_mode) == 0o755
    assert stat.S_IMODE(extracted.stat().st_mode) == 0o755


def test_a_small_highly_compressible_archive_is_not_mistaken_for_a_bomb(tmp_path: Path, dest: Path) -> None:
    # 512 KiB of zeros compresses ~1000:1, but stays under the ratio grace size.
    entries = [tar_file("config.pbtxt"), tar_file("1/zeros.bin", bytes(512 * 1024))]
    extracted = extract_archive(write_tar(tmp_path / "z.tgz", entries), dest)
    assert (extracted / "1/zeros.bin").stat().st_size == 512 * 1024


# --------------------------------------------------------------------------- hostile names

HOSTILE_NAMES = [
    ("/etc/evil", "absolute_path"),
    ("../evil", "path_traversal"),
    ("mlp/../../evil", "path_traversal"),
    ("1/..\\..\\evil", "backslash"),
    ("C:/evil", "drive_letter"),
    ("c:evil", "drive_letter"),
    ("bad\x01name", "control_character"),
    ("bad\x7fname", "control_character"),
    ("bad\nname", "control_character"),
    ("1//model.onnx", "empty_name"),
    ("x" * 256, "name_too_long"),
    ("/".join(["d" * 250] * 17), "name_too_long"),
    ("/".join(["d"] * 33), "too_deep"),
]


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
@pytest.mark.parametrize(("name", "reason"), HOSTILE_NAMES, ids=[f"{r}:{n[:20]!r}" for n, r in HOSTILE_NAMES])
def test_member_names_that_could_escape_or_confuse_are_refused(
    tmp_path: Path, dest: Path, fmt: str, name: str, reason: str
) -> None:
    # A valid first member proves the pre-scan runs before anything is written.
    good = ("config.pbtxt", b'name: "mlp"')
    if fmt == "zip":
        path = write_zip(tmp_path / "a.zip", [zip_file(*good), zip_file(name, b"evil")])
    else:
        path = write_tar(tmp_path / "a.tgz", [tar_file(*good), tar_file(name, b"evil")])
    err = assert_rejected(path, dest, reason)
    assert err.details["member"] == name


def test_leading_slash_is_refused_not_stripped_as_the_tar_data_filter_does(
    tmp_path: Path, dest: Path
) -> None:
    err = assert_rejected(write_tar(tmp_path / "a.tgz", [tar_file("/config.pbtxt")]), dest, "absolute_path")
    assert "'/config.pbtxt'" in err.message


def test_message_names_the_member_that_escapes(tmp_path: Path, dest: Path) -> None:
    err = assert_rejected(write_tar(tmp_path / "a.tgz", [tar_file("../evil")]), dest, "path_traversal")
    assert err.message == "archive member '../evil' escapes the model folder"


def test_nul_in_a_tar_pax_path_is_refused(tmp_path: Path, dest: Path) -> None:
    info, data = tar_file("placeholder")
    info.pax_headers = {"path": "config.pbtxt\x00.evil"}
    assert_rejected(write_tar(tmp_path / "a.tgz", [(info, data)]), dest, "control_character")


def test_nul_in_a_zip_name_is_refused_although_zipinfo_truncates_it(tmp_path: Path, dest: Path) -> None:
    path = write_zip(tmp_path / "a.zip", [zip_file("config.pbtxtQevil")])
    # zipfile cannot write a NUL in a name: patch local and central headers alike.
    path.write_bytes(path.read_bytes().replace(b"config.pbtxtQevil", b"config.pbtxt\x00evil"))
    assert zipfile.ZipFile(path).namelist() == ["config.pbtxt"]  # what a naive reader sees
    assert_rejected(path, dest, "control_character")


def test_zip_dot_dot_name_is_refused_where_zipfile_would_rewrite_it(tmp_path: Path, dest: Path) -> None:
    path = write_zip(tmp_path / "a.zip", [zip_file("../../evil.py", b"import os")])
    assert zipfile.ZipFile(path).infolist()[0].filename == "../../evil.py"
    assert_rejected(path, dest, "path_traversal")


# --------------------------------------------------------------------------- hostile types

TAR_TYPES = [
    ("symlink", tar_special("1/model.onnx", tarfile.SYMTYPE, "/etc/passwd"), "symlink"),
    ("relative-symlink", tar_special("link", tarfile.SYMTYPE, "config.pbtxt"), "symlink"),
    ("hardlink", tar_special("link", tarfile.LNKTYPE, "config.pbtxt"), "hardlink"),
    ("fifo", tar_special("fifo", tarfile.FIFOTYPE), "special_file"),
    ("chardev", tar_special("null", tarfile.CHRTYPE), "special_file"),
    ("blockdev", tar_special("sda", tarfile.BLKTYPE), "special_file"),
    ("sparse", tar_special("weights", tarfile.GNUTYPE_SPARSE), "special_file"),
]


@pytest.mark.parametrize(("entry", "reason"), [c[1:] for c in TAR_TYPES], ids=[c[0] for c in TAR_TYPES])
def test_tar_members_other_than_files_and_folders_are_refused(
    tmp_path: Path, dest: Path, entry: TarEntry, reason: str
) -> None:
    path = write_tar(tmp_path / "a.tgz", [tar_file("config.pbtxt"), entry], fmt=tarfile.GNU_FORMAT)
    err = assert_rejected(path, dest, reason)
    assert err.details["member"] == entry[0].name


ZIP_TYPES = [
    ("symlink", zip_file("link", b"/etc/passwd", mode=stat.S_IFLNK | 0o777), "symlink"),
    ("fifo", zip_file("fifo", b"", mode=stat.S_IFIFO | 0o644), "special_file"),
    ("socket", zip_file("sock", b"", mode=stat.S_IFSOCK | 0o644), "special_file"),
    ("bzip2", zip_file("w.bin", b"x" * 100, method=zipfile.ZIP_BZIP2), "unsupported_compression"),
    ("lzma", zip_file("w.bin", b"x" * 100, method=zipfile.ZIP_LZMA), "unsupported_compression"),
    ("dir-with-content", zip_file("1/", b"hidden", mode=stat.S_IFDIR | 0o755), "corrupt"),
]


@pytest.mark.parametrize(("entry", "reason"), [c[1:] for c in ZIP_TYPES], ids=[c[0] for c in ZIP_TYPES])
def test_zip_entries_other_than_plain_files_and_folders_are_refused(
    tmp_path: Path, dest: Path, entry: ZipEntry, reason: str
) -> None:
    path = write_zip(tmp_path / "a.zip", [zip_file("config.pbtxt"), entry])
    assert_rejected(path, dest, reason)


def test_zip_encrypted_member_is_refused(tmp_path: Path, dest: Path) -> None:
    path = write_zip(tmp_path / "a.zip", [zip_file("config.pbtxt")])
    # zipfile cannot write encrypted members: set the flag bit in both headers.
    raw = bytearray(path.read_bytes())
    raw[6] |= 0x1
    raw[raw.index(b"PK\x01\x02") + 8] |= 0x1
    path.write_bytes(bytes(raw))
    assert_rejected(path, dest, "encrypted")


def test_cve_2025_4517_long_path_symlink_chain_is_refused_as_a_symlink(tmp_path: Path, dest: Path) -> None:
    # The published PoC: 247-char folders, each shadowed by a one-letter
    # symlink, so a path through the links exceeds PATH_MAX when resolved and
    # the data filter's realpath check gives up; "escape" then points outside.
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    entries: list[TarEntry] = []
    path = ""
    for step in steps:
        entries.append(tar_dir(os.path.join(path, comp)))
        entries.append(tar_special(os.path.join(path, step), tarfile.SYMTYPE, comp))
        path = os.path.join(path, comp)
    link_path = os.path.join(*steps)
    entries.append(tar_special(link_path, tarfile.SYMTYPE, "../" * len(steps)))
    entries.append(tar_special("escape", tarfile.SYMTYPE, link_path + "/.." * 4 + "/outside"))
    entries.append(tar_file("escape/pwned", b"owned"))
    outside = tmp_path / "outside"
    outside.mkdir()

    err = assert_rejected(write_tar(tmp_path / "cve.tar", entries, compression="none"), dest, "symlink")

    assert err.details["member"] == "a"
    assert list(outside.iterdir()) == []


# --------------------------------------------------------------------------- duplicates

DUPLICATES: list[tuple[str, list[tuple[str, bool]]]] = [
    ("same-file-twice", [("config.pbtxt", False), ("config.pbtxt", False)]),
    ("dot-slash-alias", [("config.pbtxt", False), ("./config.pbtxt", False)]),
    ("file-and-folder", [("1", False), ("1", True)]),
    ("folder-twice", [("1", True), ("1", True)]),
    ("file-then-child", [("1", False), ("1/model.onnx", False)]),
    ("child-then-file", [("1/model.onnx", False), ("1", False)]),
]


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
@pytest.mark.parametrize(("members"), [d[1] for d in DUPLICATES], ids=[d[0] for d in DUPLICATES])
def test_two_members_landing_on_the_same_path_are_refused(
    tmp_path: Path, dest: Path, fmt: str, members: list[tuple[str, bool]]
) -> None:
    if fmt == "zip":
        path = write_zip(tmp_path / "a.zip", [zip_dir(n) if d else zip_file(n) for n, d in members])
    else:
        path = write_tar(tmp_path / "a.tgz", [tar_dir(n) if d else tar_file(n) for n, d in members])
    assert_rejected(path, dest, "duplicate")


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        (ArchiveLimits(max_members=3), "too_many_members"),
        (ArchiveLimits(max_file_bytes=99), "file_too_large"),
        (ArchiveLimits(max_total_bytes=250), "total_too_large"),
        (ArchiveLimits(max_depth=1), "too_deep"),
        (ArchiveLimits(max_name_length=11), "name_too_long"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_declared_sizes_and_counts_over_the_limits_are_refused(
    tmp_path: Path, dest: Path, fmt: str, limits: ArchiveLimits, reason: str
) -> None:
    files = {"config.pbtxt": b"c" * 100, "1/model.onnx": b"m" * 100, "1/b": b"b" * 100, "2": b"x"}
    if fmt == "zip":
        path = write_zip(tmp_path / "a.zip", [zip_file(n, d) for n, d in files.items()])
    else:
        path = write_tar(tmp_path / "a.tgz", [tar_file(n, d) for n, d in files.items()])
    assert_rejected(path, dest, reason, limits)


@pytest.fixture(scope="module")
def gzip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 MB of zeros in a ~50 KB tar.gz."""
    size = 50 * 1024 * 1024
    path = tmp_path_factory.mktemp("bomb") / "bomb.tgz"
    header = tarfile.TarInfo("1/model.onnx")
    header.size = size
    zeros = bytes(1024 * 1024)
    with gzip.open(path, "wb", compresslevel=9) as gz:
        gz.write(tar_file("config.pbtxt")[0].tobuf() + b"data".ljust(512, b"\0"))
        gz.write(header.tobuf())
        for _ in range(size // len(zeros)):
            gz.write(zeros)
        gz.write(bytes(1024))
    return path


def test_gzip_bomb_is_refused_by_the_compression_ratio(gzip_bomb: Path, dest: Path) -> None:
    assert gzip_bomb.stat().st_size < 100_000
    err = assert_rejected(gzip_bomb, dest, "compression_ratio")
    assert err.details["member"] == "1/model.onnx"


def test_gzip_bomb_is_refused_by_a_low_total_limit_too(gzip_bomb: Path, dest: Path) -> None:
    limits = ArchiveLimits(max_total_bytes=10 * 1024 * 1024, max_compression_ratio=10**9)
    assert_rejected(gzip_bomb, dest, "total_too_large", limits)


def test_zip_member_with_an_extreme_ratio_is_refused_even_if_the_whole_archive_is_not(
    tmp_path: Path, dest: Path
) -> None:
    incompressible = noise(1024 * 1024)
    path = write_zip(
        tmp_path / "a.zip",
        [zip_file("config.pbtxt", incompressible), zip_file("1/model.onnx", bytes(5 * 1024 * 1024))],
    )
    # Whole archive: ~6 MiB from ~1 MiB, far under 200x; the member alone is ~1000x.
    err = assert_rejected(path, dest, "compression_ratio")
    assert err.details["member"] == "1/model.onnx"


def test_tar_header_declaring_a_huge_size_is_refused_before_reading_its_body(
    tmp_path: Path, dest: Path
) -> None:
    raw = tar_bytes([tar_file("config.pbtxt", b"")], fmt=tarfile.USTAR_FORMAT)
    raw = patch_tar_size(raw, 0, b"77777777777\0")  # 8 GiB - 1, with no data behind it
    path = tmp_path / "huge.tar"
    path.write_bytes(raw)
    assert_rejected(path, dest, "file_too_large")


def test_oversized_pax_header_is_refused_without_reading_it_into_memory(tmp_path: Path, dest: Path) -> None:
    info, data = tar_file("config.pbtxt")
    info.pax_headers = {"comment": "x" * (2 * 1024 * 1024)}
    assert_rejected(write_tar(tmp_path / "pax.tgz", [(info, data)]), dest, "header_too_large")


def test_many_pax_headers_adding_up_are_refused_without_reading_them_all(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tarfile keeps each chained pax header in memory while it recurses. The
    # budget (64 MiB by default) is lowered so the test stays fast.
    monkeypatch.setattr(archive_mod, "_MAX_HEADER_BYTES", 4 * 1024 * 1024)
    block = tarfile.TarInfo("pax")
    block.type = tarfile.XHDTYPE
    record = b"900000 comment=" + b"x" * (900_000 - 16) + b"\n"
    block.size = len(record)
    pad = b"\0" * (-len(record) % 512)
    # Concatenated gzip members form one stream: compress one link, repeat it.
    link = gzip.compress(block.tobuf(tarfile.USTAR_FORMAT) + record + pad)
    path = tmp_path / "chain.tgz"
    path.write_bytes(link * 6 + gzip.compress(tar_bytes([tar_file("config.pbtxt")])))  # ~5.4 MiB
    assert_rejected(path, dest, "header_too_large")


# --------------------------------------------------------------------------- corrupt and lying


def _model_tar(compression: str) -> bytes:
    raw = tar_bytes([tar_file("config.pbtxt"), tar_file("1/model.onnx", noise(200_000))])
    return gzip.compress(raw) if compression == "gz" else raw


def _flip(raw: bytes, start: int, length: int) -> bytes:
    flipped = bytes(b ^ 0xFF for b in raw[start : start + length])
    return raw[:start] + flipped + raw[start + length :]


CORRUPT: dict[str, Callable[[], bytes]] = {
    "truncated-tar-gz": lambda: _model_tar("gz")[:60_000],
    "truncated-plain-tar": lambda: _model_tar("tar")[:60_000],
    "gzip-of-not-a-tar": lambda: gzip.compress(b"hello world " * 1000),
    # Random data sits in stored deflate blocks: flipped bytes decompress
    # fine and only gzip's end-of-stream CRC notices.
    "flipped-bytes-caught-by-gzip-crc": lambda: _flip(_model_tar("gz"), 5000, 100),
}


@pytest.mark.parametrize("make", list(CORRUPT.values()), ids=list(CORRUPT))
def test_corrupt_or_truncated_tar_is_refused_and_leaves_nothing(
    tmp_path: Path, dest: Path, make: Callable[[], bytes]
) -> None:
    path = tmp_path / "bad"
    path.write_bytes(make())
    assert_rejected(path, dest, "corrupt")


def test_data_after_the_tar_end_of_archive_marker_is_refused(tmp_path: Path, dest: Path) -> None:
    path = tmp_path / "trailing.tgz"
    path.write_bytes(gzip.compress(tar_bytes([tar_file("config.pbtxt")]) + b"hidden payload"))
    assert_rejected(path, dest, "corrupt")


def test_hostile_member_late_in_the_archive_is_refused_before_the_temp_folder_exists(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    real_mkdtemp = archive_mod.tempfile.mkdtemp

    def spy(*args: str, **kwargs: str) -> str:
        made.append("mkdtemp")
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr(archive_mod.tempfile, "mkdtemp", spy)
    entries = [tar_file(f"1/f{i}", noise(1000)) for i in range(50)] + [tar_file("../evil")]
    assert_rejected(write_tar(tmp_path / "a.tgz", entries), dest, "path_traversal")
    assert made == []


def test_xz_asking_for_a_4_gib_dictionary_is_refused(tmp_path: Path, dest: Path) -> None:
    raw = bytearray(lzma.compress(tar_bytes([tar_file("config.pbtxt")]), format=lzma.FORMAT_XZ))
    # Block header follows the 12-byte stream header; byte 4 of it is the
    # LZMA2 dictionary size (40 = 4 GiB - 1), bytes 8-11 its CRC32.
    raw[16] = 40
    raw[20:24] = struct.pack("<I", zlib.crc32(bytes(raw[12:20])))
    path = tmp_path / "dict.tar.xz"
    path.write_bytes(bytes(raw))
    err = assert_rejected(path, dest, "corrupt")
    assert "Memory usage limit" in err.message


def test_truncated_zip_is_refused_as_corrupt(tmp_path: Path, dest: Path) -> None:
    path = write_zip(tmp_path / "a.zip", [zip_file("config.pbtxt"), zip_file("w", noise(50_000))])
    path.write_bytes(path.read_bytes()[:30_000])
    assert_rejected(path, dest, "corrupt")


def test_tar_header_understating_its_size_is_refused_not_silently_cut_short(
    tmp_path: Path, dest: Path
) -> None:
    # tarfile would read 10 bytes, find garbage where the next header should
    # be, and quietly treat it as the end of the archive.
    raw = tar_bytes(
        [tar_file("1/model.onnx", b"\x07" * 2000), tar_file("config.pbtxt")],
        fmt=tarfile.USTAR_FORMAT,
    )
    path = tmp_path / "lying.tar"
    path.write_bytes(patch_tar_size(raw, 0, b"%011o\0" % 10))
    err = assert_rejected(path, dest, "corrupt")
    assert err.details["member"] == "1/model.onnx"


def test_zip_central_directory_understating_a_size_is_refused(tmp_path: Path, dest: Path) -> None:
    path = write_zip(tmp_path / "a.zip", [zip_file("config.pbtxt", b"y" * 1000, method=zipfile.ZIP_STORED)])
    raw = bytearray(path.read_bytes())
    central = raw.index(b"PK\x01\x02")
    raw[central + 24 : central + 28] = struct.pack("<I", 10)  # uncompressed size
    path.write_bytes(bytes(raw))
    assert_rejected(path, dest, "corrupt")


def test_bytes_beyond_the_declared_size_are_caught_while_writing(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands in for a decoder that yields more than the header promised: the
    # write phase counts real bytes and does not trust the pre-scan.
    path = write_tar(tmp_path / "a.tgz", [tar_file("config.pbtxt", b"short")])
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: io.BytesIO(b"x" * 10_000))
    err = assert_rejected(path, dest, "size_mismatch")
    assert err.details["member"] == "config.pbtxt"


def test_limits_are_enforced_on_written_bytes_not_only_on_headers(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_tar(tmp_path / "a.tgz", [tar_file("config.pbtxt", b"a" * 100), tar_file("b", b"b" * 100)])
    real_scan = archive_mod._scan_tar
    scans: list[int] = []

    def lenient_scan(tf: tarfile.TarFile, reader: object, limits: ArchiveLimits, size: int) -> object:
        # Headers that slipped past the pre-scan: only the write phase is left.
        scans.append(1)
        return real_scan(tf, reader, ArchiveLimits(), size)  # type: ignore[arg-type]

    monkeypatch.setattr(archive_mod, "_scan_tar", lenient_scan)
    # The first member is fully written before the second one trips the limit.
    assert_rejected(path, dest, "total_too_large", ArchiveLimits(max_total_bytes=150))
    assert scans == [1]


# --------------------------------------------------------------------------- model root


def test_find_model_root_refuses_a_folder_without_config(tmp_path: Path) -> None:
    write_model(tmp_path / "x", {"1/model.onnx": b"m"})
    with pytest.raises(InvalidModelConfig, match=r"config\.pbtxt is missing"):
        find_model_root(tmp_path / "x")


def test_find_model_root_does_not_skip_macos_junk_next_to_the_model_folder(tmp_path: Path) -> None:
    write_model(tmp_path / "x" / "mlp")
    write_model(tmp_path / "x" / "__MACOSX", {"mlp/._config.pbtxt": b"\0\5\26\7"})
    with pytest.raises(InvalidModelConfig, match="__MACOSX/"):
        find_model_root(tmp_path / "x")


def test_find_model_root_keeps_macos_junk_inside_the_model_folder(tmp_path: Path, dest: Path) -> None:
    path = write_zip(
        tmp_path / "a.zip",
        [zip_file("mlp/config.pbtxt", MODEL["config.pbtxt"]), zip_file("mlp/._config.pbtxt", b"\0\5")],
    )
    root = find_model_root(extract_archive(path, dest))
    assert sorted(p.name for p in root.iterdir()) == ["._config.pbtxt", "config.pbtxt"]


# --------------------------------------------------------------------------- pack_directory


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_pack_directory_round_trips_through_extract_archive(tmp_path: Path, dest: Path, fmt: str) -> None:
    src = write_model(tmp_path / "mlp")
    (src / "2").mkdir()  # an empty version folder survives too
    packed = pack_directory(src, tmp_path / f"mlp.{fmt}", fmt)  # type: ignore[arg-type]

    extracted = extract_archive(packed, dest)

    assert find_model_root(extracted) == extracted  # config.pbtxt at the archive root
    assert read_tree(extracted) == MODEL
    assert (extracted / "2").is_dir()


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_pack_directory_is_deterministic_and_sorted(tmp_path: Path, fmt: str) -> None:
    src = write_model(tmp_path / "mlp")
    first = pack_directory(src, tmp_path / f"a.{fmt}", fmt).read_bytes()  # type: ignore[arg-type]
    os.utime(src / "config.pbtxt", (1, 1))
    second = pack_directory(src, tmp_path / f"b.{fmt}", fmt).read_bytes()  # type: ignore[arg-type]
    assert first == second
    if fmt == "zip":
        names = zipfile.ZipFile(io.BytesIO(first)).namelist()
        assert names == ["1/", "1/extra/", "1/extra/vocab.txt", "1/model.onnx", "config.pbtxt"]


def test_pack_directory_refuses_a_symlink_and_names_it(tmp_path: Path) -> None:
    src = write_model(tmp_path / "mlp")
    (src / "1" / "weights").symlink_to("/etc/passwd")
    out = tmp_path / "mlp.tgz"
    with pytest.raises(InvalidInput, match=r"'1/weights'.*symlink"):
        pack_directory(src, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp"]  # no partial file either


def test_pack_directory_refuses_to_write_the_archive_inside_the_folder(tmp_path: Path) -> None:
    src = write_model(tmp_path / "mlp")
    with pytest.raises(InvalidInput, match="inside"):
        pack_directory(src, src / "self.tgz")


def test_extraction_can_hash_every_file_as_it_writes_it(tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "1").mkdir(parents=True)
    (src / "config.pbtxt").write_bytes(b'backend: "onnxruntime"\n')
    (src / "1" / "model.onnx").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    archive = pack_directory(src, tmp_path / "m.tar.gz")
    dest = tmp_path / "dest"
    dest.mkdir()
    digests: dict[str, tuple[str, int]] = {}
    root = extract_archive(archive, dest, digests=digests)
    expected = {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
        for p in root.rglob("*")
        if p.is_file()
    }
    assert digests == expected
