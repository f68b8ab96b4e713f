"""Error codes map to HTTP statuses in one table."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from sqlalchemy import text

from controlplane import errors
from controlplane.api.errors import error_body, status_for
from controlplane.artifacts.ingest import UploadSink, disk_full_is_ours
from controlplane.registry.db import Database


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.NotFound("x"), 404),
        (errors.ArchiveRejected("x"), 422),
        (errors.InvalidModelConfig("x"), 422),
        (errors.PayloadTooLarge("x"), 413),
        (errors.UnsupportedMediaType("x"), 415),
        (errors.Conflict("x"), 409),
        (errors.DeployFailed("x"), 422),
        (errors.TritonUnavailable("x"), 503),
        (errors.StaleSchema("x"), 503),
        (errors.ControlPlaneError("x"), 500),
    ],
)
def test_each_error_kind_has_its_status(error: errors.ControlPlaneError, status: int) -> None:
    assert status_for(error) == status


def test_the_body_names_code_and_message_and_adds_details_only_when_there_are_some() -> None:
    body = error_body("not_found", "no such model")
    assert body == {"error": {"code": "not_found", "message": "no such model"}}
    assert error_body("x", "y", {"a": 1})["error"]["details"] == {"a": 1}


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.DatabaseUnavailable("x"), 503),
        (errors.InvalidData("x"), 422),
        (errors.InsufficientStorage("x"), 507),
        (errors.RequestTimeout("x"), 408),
        (errors.Unauthorized("x"), 401),
        (errors.Forbidden("x"), 403),
    ],
)
def test_infrastructure_errors_have_their_own_statuses(error: errors.ControlPlaneError, status: int) -> None:
    assert status_for(error) == status


def test_sqlalchemy_errors_leave_the_transaction_helper_as_control_plane_errors(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'r.db'}")
    with pytest.raises(errors.InvalidData), db.transaction() as session:
        session.execute(text("select :x"), {"x": 2**63})
    with pytest.raises(errors.DatabaseUnavailable), db.transaction() as session:
        session.execute(text("select * from a_table_that_does_not_exist"))
    db.dispose()


def test_a_full_disk_while_receiving_an_upload_is_insufficient_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = UploadSink(tmp_path, max_bytes=1024)

    class FullDisk:
        def write(self, _chunk: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sink, "_file", FullDisk())
    with pytest.raises(errors.InsufficientStorage):
        sink.write(b"x")
    sink.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_behind_an_archive_refusal_is_not_blamed_on_the_archive() -> None:
    def refuse_because_disk_is_full() -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise errors.ArchiveRejected("could not write member", code="write_failed") from exc

    with pytest.raises(errors.InsufficientStorage), disk_full_is_ours():
        refuse_because_disk_is_full()
    with pytest.raises(errors.ArchiveRejected), disk_full_is_ours():
        raise errors.ArchiveRejected("a link")
