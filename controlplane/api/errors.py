"""The one place where error codes become HTTP statuses and JSON bodies."""

from __future__ import annotations

import errno
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from controlplane import errors
from controlplane.logs import request_id_headers

log = logging.getLogger("controlplane.api")

STATUS_BY_TYPE: tuple[tuple[type[errors.ControlPlaneError], int], ...] = (
    (errors.DatabaseUnavailable, 503),
    (errors.InsufficientStorage, 507),
    (errors.RequestTimeout, 408),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.PayloadTooLarge, 413),
    (errors.UnsupportedMediaType, 415),
    (errors.InvalidInput, 422),
    (errors.Conflict, 409),
    (errors.DeployFailed, 422),
    (errors.CandidateRejected, 422),
    (errors.DeployPending, 202),
    (errors.ArtifactCorrupted, 422),
    (errors.StaleSchema, 503),
    (errors.TritonUnavailable, 503),
    (errors.TritonAccessDenied, 503),
    (errors.ProxyError, 503),
)


def status_for(exc: errors.ControlPlaneError) -> int:
    """HTTP status of an error, by the most specific matching type (500 if none)."""
    for kind, status in STATUS_BY_TYPE:
        if isinstance(exc, kind):
            return status
    return 500


_CLOSE_AFTER = frozenset({408, 413})
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _internal(request: Request, exc: BaseException) -> JSONResponse:
    """500 with a stable code; the trace goes to the server log, never to the client."""
    log.error("%s %s failed unexpectedly", request.method, request.url.path, exc_info=exc)
    # Rendered outside the request guard, so the request id header is added here.
    return JSONResponse(
        error_body("internal_error", "the control plane failed unexpectedly; see its log"),
        status_code=500,
        headers=request_id_headers(),
    )


def error_body(code: str, message: str, details: object = None) -> dict:
    body: dict = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def install_error_handlers(app: FastAPI) -> None:
    """Render every error as ``{"error": {"code", "message", "details"?}}``."""

    @app.exception_handler(errors.ControlPlaneError)
    async def _domain(_request: Request, exc: errors.ControlPlaneError) -> JSONResponse:
        status = status_for(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status in _CLOSE_AFTER:
            # The rest of the body was not read: close rather than drain what the client still sends.
            headers = {"Connection": "close"}
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details), status_code=status, headers=headers
        )

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno in _DISK_FULL:
            log.error("%s %s: disk full: %s", request.method, request.url.path, exc)
            error = errors.InsufficientStorage("the server has no space left; try again later")
            return JSONResponse(error_body(error.code, error.message), status_code=507)
        return _internal(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _internal(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"location": list(e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()]
        first = problems[0] if problems else {"location": [], "message": "invalid request"}
        where = ".".join(str(p) for p in first["location"])
        return JSONResponse(
            error_body("invalid_request", f"{where}: {first['message']}", problems), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)
