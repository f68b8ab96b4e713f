"""Error codes map to HTTP statuses in one table."""

from __future__ import annotations

import pytest

from controlplane import errors
from controlplane.api.errors import error_body, status_for


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
