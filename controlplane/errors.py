"""Errors the control plane raises, each with a stable code.

Services and adapters raise these; only the API layer maps codes to HTTP
statuses (see ``controlplane.api.errors``) and only the CLI turns them into
exit codes. Vendor exceptions (tritonclient, SQLAlchemy, tarfile) are
translated into these at the adapter that met them.

Each class says whether retrying can help (``retryable``): an unreachable
database, Triton or proxy may answer a moment later, so loops wait those out;
a refused load, a failed smoke test or a policy violation stays refused until
something changes, so they end the operation. Every error class of the
package lives here.
"""

from __future__ import annotations

from typing import Any


class ControlPlaneError(Exception):
    """Base class: a code a client can branch on, a message a human can read."""

    code: str = "internal_error"
    retryable: bool = False
    """Whether the same call may succeed later without anything else changing."""

    def __init__(
        self, message: str, *, code: str | None = None, details: Any = None, retryable: bool | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable
        self.details = details


class NotFound(ControlPlaneError):
    code = "not_found"


class InvalidInput(ControlPlaneError):
    """The request itself is wrong; nothing was changed."""

    code = "invalid_input"


class ArchiveRejected(InvalidInput):
    """An uploaded archive failed the pre-scan; nothing was extracted."""

    code = "archive_rejected"


class InvalidModelConfig(InvalidInput):
    """config.pbtxt is missing, malformed or incomplete."""

    code = "invalid_model_config"


class PayloadTooLarge(InvalidInput):
    code = "payload_too_large"


class Conflict(ControlPlaneError):
    """The request races another change (a deploy already running, for example)."""

    code = "conflict"


class PoolBusy(Conflict):
    """Another operation holds the pool (``details``: the pool and its holder); retry when it has ended."""

    code = "pool_busy"
    retryable = True


class DeployFailed(ControlPlaneError):
    """Triton refused or failed the new version; what served before still serves."""

    code = "deploy_failed"


class DeployPending(ControlPlaneError):
    """A deploy has not ended in the time its caller waits; ``details`` names the rollout that goes on."""

    code = "deploy_pending"


class TritonUnavailable(ControlPlaneError):
    """Triton could not be reached or did not answer in time (retryable)."""

    code = "triton_unavailable"
    retryable = True


class TritonAccessDenied(ControlPlaneError):
    """Triton refused an admin call: the control plane does not hold the key this server was started with."""

    code = "triton_access_denied"


class ModelLoadFailed(ControlPlaneError):
    """Triton reported the model UNAVAILABLE after a load; ``message`` holds its reason."""

    code = "model_load_failed"


class SmokeTestFailed(ControlPlaneError):
    """A loaded version answered a smoke inference wrongly or not at all."""

    code = "smoke_test_failed"


class CandidateRejected(ControlPlaneError):
    """A staged candidate failed a check before traffic (golden set, warm-up); ``details`` say how."""

    code = "candidate_rejected"


class ProxyError(ControlPlaneError):
    """The traffic proxy refused a runtime command or could not be reached."""

    code = "proxy_error"
    retryable = True


class StaleSchema(ControlPlaneError):
    """The database schema is not at the revision this code needs."""

    code = "stale_schema"


class ArtifactCorrupted(ControlPlaneError):
    """A stored file no longer hashes to its digest; the version is not staged."""

    code = "artifact_corrupted"


class UnsupportedMediaType(InvalidInput):
    code = "unsupported_media_type"


class Unauthorized(ControlPlaneError):
    """No token, or one that is unknown or revoked."""

    code = "unauthorized"


class Forbidden(ControlPlaneError):
    """A valid token whose role does not allow the action."""

    code = "forbidden"


class DatabaseUnavailable(ControlPlaneError):
    """The registry database could not be reached or refused the connection (retryable)."""

    code = "database_unavailable"
    retryable = True


class InvalidData(InvalidInput):
    """A value the database cannot hold (out of range, a NUL byte): refused before anything changed."""

    code = "invalid_data"


class InsufficientStorage(ControlPlaneError):
    """The disk (or quota) under the state directory is full; the request's input was not at fault."""

    code = "insufficient_storage"


class RequestTimeout(ControlPlaneError):
    """The client sent its request body too slowly."""

    code = "request_timeout"
    retryable = True


class MigrationFailed(ControlPlaneError):
    """The schema migration run at start-up did not complete (the database keeps its old revision)."""

    code = "migration_failed"


class StartupFailed(ControlPlaneError):
    """A local Triton or HAProxy could not be started (a port taken, a stale process, a bad state file)."""

    code = "startup_failed"


class RuntimeStateError(ValueError):
    """``runtime.json`` exists but cannot be used (malformed, unknown format, inconsistent)."""
