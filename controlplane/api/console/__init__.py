"""The web console: static pages under ``/ui`` that call the API from the browser.

The pages hold no secret and need no token to load; every piece of data
comes from the API with the token the user typed into the login form (kept
in the tab's session storage only). Every asset is served from here, none
from a CDN, and a strict Content-Security-Policy allows scripts, styles and
connections to this origin only, so a model name or an audit detail that
carries markup can never run as code.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONSOLE_PATH = "/ui"
STATIC_DIR = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidated on every load (ETag): a new release of the console is never mixed with an old cache.
    "Cache-Control": "no-cache",
}


def is_console_path(path: str) -> bool:
    """Whether ``path`` is one of the console's files (served without a token)."""
    return path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")


class ConsoleFiles(StaticFiles):
    """The console's files, each answer with the security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount_console(app: FastAPI) -> None:
    """Serve the console at ``/ui/`` (``/ui`` redirects there)."""

    @app.get(CONSOLE_PATH, include_in_schema=False)
    def console_root() -> RedirectResponse:
        return RedirectResponse(CONSOLE_PATH + "/", status_code=308)

    app.mount(CONSOLE_PATH, ConsoleFiles(directory=STATIC_DIR, html=True), name="console")
