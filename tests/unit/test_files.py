"""Atomic writes and link-or-copy: whole files or nothing, links where the filesystem allows."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from controlplane import files
from controlplane.files import atomic_writer, copy_atomically, link_or_copy, write_atomically


def test_write_atomically_replaces_the_content_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "haproxy.cfg"
    target.write_text("old")
    write_atomically(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["haproxy.cfg"]


def test_a_written_file_gets_the_mode_asked_for_and_0600_by_default(tmp_path: Path) -> None:
    write_atomically(tmp_path / "secret", b"k")
    write_atomically(tmp_path / "public", b"p", mode=0o644, durable=True)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "public").stat().st_mode & 0o777 == 0o644


def test_a_failure_while_writing_keeps_the_old_file_and_removes_the_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "runtime.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(b"half")
        raise RuntimeError("disk gone")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runtime.json"]


def test_an_open_reader_keeps_the_old_inode_after_a_replace(tmp_path: Path) -> None:
    target = tmp_path / "lib.so"
    target.write_bytes(b"old")
    with target.open("rb") as reader:
        write_atomically(target, b"new")
        assert reader.read() == b"old"
    assert target.read_bytes() == b"new"


def test_copy_atomically_keeps_the_source_mode_unless_told_otherwise(tmp_path: Path) -> None:
    source = tmp_path / "stub"
    source.write_bytes(b"\x7fELF")
    source.chmod(0o755)
    copy_atomically(source, tmp_path / "same-mode")
    copy_atomically(source, tmp_path / "read-only", mode=0o444)
    assert (tmp_path / "same-mode").read_bytes() == b"\x7fELF"
    assert (tmp_path / "same-mode").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "read-only").stat().st_mode & 0o777 == 0o444


def test_link_or_copy_shares_the_inode_where_it_can(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"weights")
    link_or_copy(blob, tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx").stat().st_ino == blob.stat().st_ino


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM, errno.EMLINK])
def test_link_or_copy_copies_read_only_when_no_link_is_possible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def refuse(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "link", refuse)
    blob = tmp_path / "blob"
    blob.write_bytes(b"weights")
    link_or_copy(blob, tmp_path / "model.onnx")
    copy = tmp_path / "model.onnx"
    assert copy.read_bytes() == b"weights"
    assert copy.stat().st_ino != blob.stat().st_ino
    assert copy.stat().st_mode & 0o777 == 0o444


def test_link_or_copy_raises_other_errors_instead_of_copying(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"weights")
    (tmp_path / "model.onnx").write_bytes(b"other")
    with pytest.raises(FileExistsError):
        link_or_copy(blob, tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx").read_bytes() == b"other"
