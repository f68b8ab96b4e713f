"""The web console's files: served from the control plane itself, with no token, no CDN and a strict CSP."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.api.console import CONTENT_SECURITY_POLICY, STATIC_DIR
from controlplane.artifacts.archive import ArchiveLimits
from controlplane.artifacts.blobs import BlobStore
from controlplane.registry.db import Database
from controlplane.services.health import Health
from controlplane.services.registry import Registry
from controlplane.services.signing import Signing

VENDOR = STATIC_DIR / "vendor"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    db.upgrade()
    blobs = BlobStore(tmp_path / "artifacts")
    signing = Signing(db=db, blobs=blobs, uploads_dir=tmp_path / "uploads")
    registry = Registry(
        db=db, blobs=blobs, uploads_dir=tmp_path / "uploads", signing=signing, limits=ArchiveLimits()
    )
    services = ApiServices(db=db, registry=registry, signing=signing, health=Health(db=db, pools={}))
    app = create_app(services, max_upload_bytes=1 << 20, auth=Authenticator(db, required=True))
    with TestClient(app) as test_client:
        yield test_client
    db.dispose()


def _static_files() -> list[Path]:
    return [p for p in STATIC_DIR.rglob("*") if p.is_file()]


def test_the_console_page_loads_without_a_token_while_the_api_still_needs_one(client: TestClient) -> None:
    page = client.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<div id="app"' in page.text
    assert client.get("/v1/models").status_code == 401


def test_the_bare_console_path_redirects_to_the_page(client: TestClient) -> None:
    answer = client.get("/ui", follow_redirects=False)
    assert answer.status_code == 308
    assert answer.headers["location"] == "/ui/"


@pytest.mark.parametrize("path", ["/ui/", "/ui/js/app.js", "/ui/app.css", "/ui/vendor/uPlot.iife.min.js"])
def test_every_console_file_carries_a_strict_content_security_policy(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY and "unsafe-eval" not in CONTENT_SECURITY_POLICY
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"


def test_javascript_modules_are_served_as_javascript(client: TestClient) -> None:
    answer = client.get("/ui/js/app.js")
    assert "javascript" in answer.headers["content-type"]


@pytest.mark.parametrize(
    "path",
    ["/ui/../pyproject.toml", "/ui/%2e%2e/%2e%2e/pyproject.toml", "/ui/..%2f__init__.py", "/ui/nothing.js"],
)
def test_a_path_outside_the_console_files_is_not_found(client: TestClient, path: str) -> None:
    answer = client.get(path)
    # A path the client normalises out of /ui/ meets the API's token check instead: never a file.
    assert answer.status_code in (401, 404)
    assert "[project]" not in answer.text and "mount_console" not in answer.text


def test_no_console_file_loads_anything_from_another_origin() -> None:
    remote = re.compile(r"""(?:src|href|import|from|url)\s*\(?\s*["'](?:https?:)?//""", re.IGNORECASE)
    offenders = [
        str(p.relative_to(STATIC_DIR))
        for p in _static_files()
        if p.suffix in {".html", ".js", ".css"} and remote.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_no_console_file_has_an_inline_script_the_policy_would_block() -> None:
    index = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", index, re.DOTALL)
    assert scripts, "index.html loads its scripts"
    assert all('src="' in attrs and body.strip() == "" for attrs, body in scripts)
    assert re.search(r"\son[a-z]+\s*=", index, re.IGNORECASE) is None
    assert "<style" not in index and 'style="' not in index


def test_every_file_the_page_names_exists() -> None:
    index = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    named = [n for n in re.findall(r'(?:src|href)="([^":]+)"', index) if not n.startswith("../")]
    assert named
    missing = [n for n in named if not (STATIC_DIR / n).is_file()]
    assert missing == []


def test_every_module_import_resolves_to_a_console_file() -> None:
    missing = []
    for module in (STATIC_DIR / "js").glob("*.js"):
        for target in re.findall(r'from\s+"(\.{1,2}/[^"]+)"', module.read_text(encoding="utf-8")):
            if not (module.parent / target).resolve().is_file():
                missing.append(f"{module.name} -> {target}")
    assert missing == []


def test_vendored_files_are_the_recorded_npm_releases_with_their_licenses() -> None:
    manifest = json.loads((VENDOR / "vendor.json").read_text(encoding="utf-8"))
    for entry in manifest["files"]:
        digest = hashlib.sha256((VENDOR / entry["file"]).read_bytes()).hexdigest()
        assert digest == entry["sha256"], entry["file"]
        assert (VENDOR / entry["license"]).is_file()
    for license_file in manifest["licenses"]:
        assert (VENDOR / license_file).is_file()
