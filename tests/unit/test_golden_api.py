"""The golden set API and CLI: attach (publishers and deployers), describe (readers), refusals as errors."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fakes import model_folder
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from controlplane import cli
from controlplane.api.app import ApiServices, create_app
from controlplane.api.auth import Authenticator
from controlplane.artifacts.archive import ArchiveLimits, pack_directory
from controlplane.artifacts.blobs import BlobStore
from controlplane.domain.auth import Role
from controlplane.domain.models import VersionMetadata
from controlplane.registry import token_store
from controlplane.registry.db import Database
from controlplane.services.golden import GoldenSets
from controlplane.services.registry import Registry
from controlplane.services.signing import Signing

GOLDEN = {
    "inputs": {"INPUT0": [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]},
    "outputs": {"OUTPUT0": [[1.0, 2.0], [3.0, 4.0]]},
    "tolerances": {"OUTPUT0": {"rtol": 0.01}},
}
URL = "/v1/models/mlp/versions/{}/golden"


@dataclass
class Api:
    client: TestClient
    app: Any
    tokens: dict[Role, str]
    plain: int
    with_folder_golden: int

    def headers(self, role: Role | None, content_type: str = "application/json") -> dict[str, str]:
        headers = {"content-type": content_type}
        if role is not None:
            headers["Authorization"] = f"Bearer {self.tokens[role]}"
        return headers


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    db.upgrade()
    blobs = BlobStore(tmp_path / "artifacts")
    uploads = tmp_path / "uploads"
    signing = Signing(db=db, blobs=blobs, uploads_dir=uploads)
    registry = Registry(db=db, blobs=blobs, uploads_dir=uploads, signing=signing, limits=ArchiveLimits())

    def push(files: dict[str, bytes]) -> int:
        source = tmp_path / "sources" / uuid.uuid4().hex
        folder = model_folder(source, "mlp", b"weights " + source.name.encode())
        for name, data in files.items():
            (folder / name).write_bytes(data)
        archive = pack_directory(folder, source / "model.tar.gz")
        return registry.push(model="mlp", archive=archive, metadata=VersionMetadata())[0].number

    plain = push({})
    with_folder_golden = push({"golden.json": json.dumps(GOLDEN).encode()})
    tokens = {}
    with db.transaction() as session:
        for role in Role:
            tokens[role], _info = token_store.create_token(
                session, name=role.value, role=role, created_by="t"
            )
    services = ApiServices(
        db=db,
        registry=registry,
        signing=signing,
        health=SimpleNamespace(),  # type: ignore[arg-type]
        golden=GoldenSets(db=db, blobs=blobs, uploads_dir=uploads),
    )
    app = create_app(services, max_upload_bytes=1 << 30, auth=Authenticator(db))
    with TestClient(app) as client:
        yield Api(client, app, tokens, plain, with_folder_golden)
    db.dispose()


def npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        **{
            "inputs/INPUT0": np.array(GOLDEN["inputs"]["INPUT0"], dtype=np.float32),
            "outputs/OUTPUT0": np.array(GOLDEN["outputs"]["OUTPUT0"], dtype=np.float32),
            "atol/OUTPUT0": np.float64(0.5),
        },
    )
    return buffer.getvalue()


def test_a_publisher_attaches_a_json_golden_set_and_a_viewer_reads_its_description(api: Api) -> None:
    attached = api.client.put(
        URL.format(api.plain), content=json.dumps(GOLDEN), headers=api.headers(Role.PUBLISHER)
    )
    assert attached.status_code == 200, attached.text
    body = attached.json()
    assert body["rows"] == 2 and body["format"] == "json" and body["source"] == "attached"
    assert body["outputs"] == {"OUTPUT0": {"atol": 1e-5, "rtol": 0.01}}
    assert body["signed"] is False and body["actor"] == "publisher" and len(body["digest"]) == 64

    shown = api.client.get(URL.format(api.plain), headers=api.headers(Role.VIEWER))
    assert shown.status_code == 200 and shown.json() == body


def test_a_deployer_may_replace_the_attached_set_with_an_npz(api: Api) -> None:
    api.client.put(URL.format(api.plain), content=json.dumps(GOLDEN), headers=api.headers(Role.PUBLISHER))
    replaced = api.client.put(
        URL.format(api.plain),
        params={"format": "npz"},
        content=npz_bytes(),
        headers=api.headers(Role.DEPLOYER, "application/octet-stream"),
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["format"] == "npz" and replaced.json()["actor"] == "deployer"
    assert replaced.json()["outputs"]["OUTPUT0"]["atol"] == 0.5


def test_a_viewer_may_not_attach_and_an_anonymous_client_is_unauthorized(api: Api) -> None:
    viewer = api.client.put(
        URL.format(api.plain), content=json.dumps(GOLDEN), headers=api.headers(Role.VIEWER)
    )
    assert viewer.status_code == 403 and viewer.json()["error"]["code"] == "forbidden"
    anonymous = api.client.put(URL.format(api.plain), content=json.dumps(GOLDEN), headers=api.headers(None))
    assert anonymous.status_code == 401
    assert api.client.get(URL.format(api.plain), headers=api.headers(Role.VIEWER)).status_code == 404


def test_an_unknown_version_or_model_is_404(api: Api) -> None:
    unknown = api.client.put(URL.format(99), content=json.dumps(GOLDEN), headers=api.headers(Role.ADMIN))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "version_not_found"
    model = api.client.put(
        "/v1/models/nope/versions/1/golden", content=json.dumps(GOLDEN), headers=api.headers(Role.ADMIN)
    )
    assert model.status_code == 404 and model.json()["error"]["code"] == "model_not_found"


def test_a_file_that_does_not_fit_the_version_is_422_naming_the_tensor(api: Api) -> None:
    bad = {**GOLDEN, "inputs": {"INPUT0": [[0.0, 1.0], [2.0, 3.0]]}}
    refused = api.client.put(URL.format(api.plain), content=json.dumps(bad), headers=api.headers(Role.ADMIN))
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "invalid_golden_set" and error["details"] == {"tensor": "INPUT0"}
    garbage = api.client.put(
        URL.format(api.plain), content=b"PK not really", headers=api.headers(Role.ADMIN, "application/x-npz")
    )
    assert garbage.status_code == 422 and garbage.json()["error"]["code"] == "invalid_golden_set"


def test_a_body_of_no_known_format_is_415(api: Api) -> None:
    refused = api.client.put(
        URL.format(api.plain), content=b"a,b", headers=api.headers(Role.ADMIN, "text/csv")
    )
    assert refused.status_code == 415


def test_a_version_whose_folder_holds_a_golden_set_refuses_an_attached_one_with_409(api: Api) -> None:
    refused = api.client.put(
        URL.format(api.with_folder_golden), content=json.dumps(GOLDEN), headers=api.headers(Role.ADMIN)
    )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "golden_from_folder"
    shown = api.client.get(URL.format(api.with_folder_golden), headers=api.headers(Role.VIEWER)).json()
    assert shown["source"] == "folder" and shown["rows"] == 2


def test_the_cli_attaches_and_shows_a_golden_set(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTROLPLANE_TOKEN", api.tokens[Role.PUBLISHER])
    monkeypatch.setattr(cli.httpx, "Client", lambda base_url, **_kw: TestClient(api.app, base_url=base_url))
    golden = tmp_path / "golden.npz"
    golden.write_bytes(npz_bytes())
    runner = CliRunner()

    attached = runner.invoke(cli.app, ["golden", "attach", "mlp", str(api.plain), str(golden)])
    shown = runner.invoke(cli.app, ["golden", "show", "mlp", str(api.plain), "--json"])
    refused = runner.invoke(cli.app, ["golden", "attach", "mlp", str(api.with_folder_golden), str(golden)])

    assert attached.exit_code == 0, attached.output
    assert attached.output.startswith("mlp version 1: golden set of 2 rows (npz, attached) sha256:")
    assert "OUTPUT0 (atol 0.5, rtol 0.0001)" in attached.output
    assert json.loads(shown.output)["format"] == "npz"
    assert refused.exit_code == 1 and "(golden_from_folder)" in refused.output
