"""A pushed ONNX model whose graph disagrees with its config.pbtxt is refused by the API and the CLI.

Real uvicorn and a real SQLite registry, no Triton: the check runs at push,
before anything is stored or registered.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from triton_helpers import load_examples_module

from .api_fixtures import ApiServer, serve_api

pytestmark = pytest.mark.integration

examples = load_examples_module()
CONTROLPLANE = Path(sys.executable).parent / "controlplane"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    with serve_api(tmp_path / "state") as server:
        yield server


def mlp_with_renamed_input(root: Path) -> Path:
    """The example MLP whose graph calls its input ``input_1`` while config.pbtxt says ``INPUT0``."""
    folder = examples.build_mlp(root, name="mlp")
    path = folder / "1" / "model.onnx"
    model = onnx.load(str(path))
    model.graph.input[0].name = "input_1"
    for node in model.graph.node:
        node.input[:] = ["input_1" if name == "INPUT0" else name for name in node.input]
    path.write_bytes(model.SerializeToString())
    return folder


def tar_gz(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return buffer.getvalue()


def stored_blobs(api: ApiServer) -> list[Path]:
    root = Path(api.settings.artifacts_dir) / "sha256"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_a_push_whose_graph_input_is_renamed_answers_422_interface_mismatch_and_registers_nothing(
    api: ApiServer, tmp_path: Path
) -> None:
    folder = mlp_with_renamed_input(tmp_path)
    with api.client(api.admin) as client:
        answer = client.post(
            "/v1/models/mlp/versions", content=tar_gz(folder), headers={"content-type": "application/gzip"}
        )
        models = client.get("/v1/models").json()
        events = client.get("/v1/events").json()

    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "interface_mismatch"
    assert "input 'INPUT0' is not in the ONNX graph (graph inputs: 'input_1')" in error["message"]
    assert error["details"] == [
        {
            "tensor": "INPUT0",
            "kind": "input",
            "problem": "not_in_graph",
            "config": "INPUT0",
            "graph": ["input_1"],
        },
        {
            "tensor": "input_1",
            "kind": "input",
            "problem": "not_in_config",
            "config": ["INPUT0"],
            "graph": "input_1",
        },
    ]
    assert models == []
    assert stored_blobs(api) == []
    push = [e for e in events if e["action"] == "push"]
    assert [(e["outcome"], e["details"]["code"]) for e in push] == [("rejected", "interface_mismatch")]


def test_a_push_of_a_model_file_that_is_not_onnx_answers_422_invalid_onnx_model(
    api: ApiServer, tmp_path: Path
) -> None:
    folder = examples.build_mlp(tmp_path, name="mlp")
    (folder / "1" / "model.onnx").write_bytes(b"not an onnx model" * 64)
    with api.client(api.admin) as client:
        answer = client.post(
            "/v1/models/mlp/versions", content=tar_gz(folder), headers={"content-type": "application/gzip"}
        )
        models = client.get("/v1/models").json()

    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_onnx_model"
    assert error["message"].startswith("1/model.onnx is not a valid ONNX model")
    assert models == [] and stored_blobs(api) == []


def test_the_cli_push_of_a_mismatched_folder_prints_one_line_and_exits_non_zero(
    api: ApiServer, tmp_path: Path
) -> None:
    folder = mlp_with_renamed_input(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "CONTROLPLANE_API_URL": api.url, "CONTROLPLANE_TOKEN": api.admin}
    pushed = subprocess.run(
        [str(CONTROLPLANE), "push", str(folder), "--model", "mlp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert pushed.returncode == 1
    assert pushed.stdout == ""
    lines = pushed.stderr.strip().splitlines()
    assert len(lines) == 1, pushed.stderr
    assert lines[0].startswith("error: config.pbtxt does not match the ONNX graph: input 'INPUT0'")
    assert lines[0].endswith("(interface_mismatch)")
