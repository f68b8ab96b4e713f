"""The one place where error codes become HTTP statuses and JSON bodies."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from controlplane import errors

STATUS_BY_TYPE: tuple[tuple[type[errors.ControlPlaneError], int], ...] = (
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.PayloadTooLarge, 413),
    (errors.UnsupportedMediaType, 415),
    (errors.InvalidInput, 422),
    (errors.Conflict, 409),
    (errors.DeployFailed, 422),
    (errors.ArtifactCorrupted, 422),
    (errors.StaleSchema, 503),
    (errors.TritonUnavailable, 503),
    (errors.ProxyError, 503),
)


def status_for(exc: errors.ControlPlaneError) -> int:
    """HTTP status of an error, by the most specific matching type (500 if none)."""
    for kind, status in STATUS_BY_TYPE:
        if isinstance(exc, kind):
            return status
    return 500


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
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details), status_code=status, headers=headers
        )

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
