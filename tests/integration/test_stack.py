"""End to end: ``controlplane up`` with a real Triton behind a real HAProxy, on SQLite and PostgreSQL.

Clients are unmodified tritonclient gRPC clients talking to the proxy port.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from stack import Stack, create_token, start_stack
from triton_helpers import load_examples_module
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration

examples = load_examples_module()
RNG = np.random.default_rng(7)
MLP_INPUT = RNG.standard_normal((3, 16)).astype(np.float32)
UPLOAD_LIMIT = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Example model folders: two versions of mlp that answer differently, one Triton cannot load."""
    root = tmp_path_factory.mktemp("examples")
    return {
        "mlp_v1": examples.build_mlp(root / "v1", seed=1),
        "mlp_v2": examples.build_mlp(root / "v2", seed=2),
        "mlp_faulty": examples.build_faulty(root / "faulty", "mlp"),
        "two_inputs": examples.build_two_inputs(root / "two"),
    }


def _postgres_url_with_schema(base: str) -> tuple[str, str]:
    schema = f"cp_stack_{uuid.uuid4().hex[:10]}"
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", schema


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One running stack per database kind, shared by this module's tests in order."""
    database_url = None
    schema = None
    if request.param == "postgresql":
        from sqlalchemy import create_engine, text

        base = request.getfixturevalue("postgres_url")
        database_url, schema = _postgres_url_with_schema(base)
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    running = start_stack(
        tmp_path_factory.mktemp(f"stack-{request.param}") / "state",
        database_url=database_url,
        env={"CONTROLPLANE_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)},
    )
    try:
        yield running
    finally:
        code = running.stop()
        if schema is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
        assert code == 0, running.log()


def infer_mlp(url: str, data: np.ndarray = MLP_INPUT, version: str = "") -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        result = client.infer("mlp", [tensor], model_version=version)
        return result.as_numpy("OUTPUT0")
    finally:
        client.close()


def expected(folder: Path, data: np.ndarray = MLP_INPUT) -> np.ndarray:
    return examples.reference_outputs(folder, {"INPUT0": data})["OUTPUT0"]


def live_state(stack: Stack) -> dict[str, object]:
    """What a client could observe of live serving: repository files and Triton's index."""
    repo = stack.state_dir / "pools" / "blue" / "repository"
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))
    with stack.client() as client:
        models = client.get("/v1/models").json()
    return {"files": files, "models": models}


def test_a_pushed_and_deployed_model_answers_a_plain_tritonclient_through_the_proxy(
    stack: Stack, folders: dict[str, Path]
) -> None:
    pushed = stack.push(
        folders["mlp_v1"], "mlp", api_version="v1", label="team=search", metric="accuracy=0.91"
    )
    assert pushed.status_code == 201, pushed.text
    body = pushed.json()
    assert (body["model"], body["version"], body["created"], body["state"]) == ("mlp", 1, True, "registered")
    assert {f["path"] for f in body["manifest"]} == {"config.pbtxt", "1/model.onnx"}
    assert body["metadata"] == {
        "labels": {"team": "search"},
        "metrics": {"accuracy": 0.91},
        "api_version": "v1",
    }
    assert [t["name"] for t in body["signature"]["inputs"]] == ["INPUT0"]

    with stack.client() as client:
        deployed = client.post("/v1/models/mlp/versions/1/deploy")
        assert deployed.status_code == 200, deployed.text
        assert deployed.json()["version"] == 1
        assert client.get("/healthz", params={"model": "mlp"}).status_code == 200
        assert client.get("/v1/models/mlp/versions/1").json()["state"] == "serving"

    np.testing.assert_allclose(infer_mlp(stack.grpc_url), expected(folders["mlp_v1"]), rtol=1e-5)


def test_pushing_the_same_content_again_returns_the_existing_version(
    stack: Stack, folders: dict[str, Path]
) -> None:
    again = stack.push(folders["mlp_v1"], "mlp")
    assert again.status_code == 200, again.text
    assert (again.json()["version"], again.json()["created"]) == (1, False)


def test_deploying_a_new_version_under_load_fails_no_request(stack: Stack, folders: dict[str, Path]) -> None:
    assert stack.push(folders["mlp_v2"], "mlp").json()["version"] == 2
    old, new = expected(folders["mlp_v1"]), expected(folders["mlp_v2"])
    stop = threading.Event()
    failures: list[str] = []
    answers = {"old": 0, "new": 0, "other": 0}
    lock = threading.Lock()

    def client_loop() -> None:
        client = grpcclient.InferenceServerClient(stack.grpc_url)
        tensor = grpcclient.InferInput("INPUT0", list(MLP_INPUT.shape), "FP32")
        tensor.set_data_from_numpy(MLP_INPUT)
        while not stop.is_set():
            try:
                out = client.infer("mlp", [tensor]).as_numpy("OUTPUT0")
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                with lock:
                    failures.append(str(exc))
                continue
            kind = (
                "old"
                if np.allclose(out, old, rtol=1e-5)
                else "new"
                if np.allclose(out, new, rtol=1e-5)
                else "other"
            )
            with lock:
                answers[kind] += 1
        client.close()

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with stack.client() as client:
            deployed = client.post("/v1/models/mlp/versions/2/deploy")
        assert deployed.status_code == 200, deployed.text
        after = answers["new"]
        while answers["new"] < after + 50:
            threading.Event().wait(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert answers["old"] > 0 and answers["new"] > 0 and answers["other"] == 0
    np.testing.assert_allclose(infer_mlp(stack.grpc_url), new, rtol=1e-5)
    with stack.client() as client:
        states = {v["version"]: v["state"] for v in client.get("/v1/models/mlp/versions").json()}
    assert states == {1: "retired", 2: "serving"}


def test_a_version_triton_cannot_load_fails_the_deploy_and_the_serving_version_keeps_serving(
    stack: Stack, folders: dict[str, Path]
) -> None:
    before = live_state(stack)
    assert stack.push(folders["mlp_faulty"], "mlp").json()["version"] == 3
    with stack.client() as client:
        refused = client.post("/v1/models/mlp/versions/3/deploy")
        assert refused.status_code == 422
        error = refused.json()["error"]
        assert error["code"] == "deploy_failed"
        assert "failed to load" in error["message"] and "mlp" in error["message"]
        assert error["details"]["still_serving"] == 2
        assert client.get("/v1/models/mlp/versions/3").json()["state"] == "failed"
        assert client.get("/healthz", params={"model": "mlp"}).status_code == 200
    np.testing.assert_allclose(infer_mlp(stack.grpc_url), expected(folders["mlp_v2"]), rtol=1e-5)
    after = live_state(stack)
    assert after["files"] == before["files"]


def test_a_model_with_two_inputs_serves_both_outputs(stack: Stack, folders: dict[str, Path]) -> None:
    assert stack.push(folders["two_inputs"], "two_inputs").status_code == 201
    with stack.client() as client:
        assert client.get("/healthz", params={"model": "two_inputs"}).status_code == 503
        assert client.post("/v1/models/two_inputs/versions/1/deploy").status_code == 200
    a = RNG.standard_normal((2, 8)).astype(np.float32)
    b = RNG.standard_normal((2, 8)).astype(np.float32)
    client = grpcclient.InferenceServerClient(stack.grpc_url)
    inputs = []
    for name, data in (("A", a), ("B", b)):
        tensor = grpcclient.InferInput(name, list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    result = client.infer("two_inputs", inputs)
    client.close()
    want = examples.reference_outputs(folders["two_inputs"], {"A": a, "B": b})
    np.testing.assert_allclose(result.as_numpy("OUT"), want["OUT"], rtol=1e-5)
    np.testing.assert_allclose(result.as_numpy("SUM"), a + b, rtol=1e-6)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v1/models/nope", "model_not_found"),
        ("/v1/models/nope/versions", "model_not_found"),
        ("/v1/models/mlp/versions/99", "version_not_found"),
    ],
)
def test_unknown_models_and_versions_are_404_with_a_json_error(stack: Stack, path: str, code: str) -> None:
    with stack.client() as client:
        answer = client.get(path)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == code


def test_deploying_an_unknown_version_is_404_and_changes_nothing(stack: Stack) -> None:
    before = live_state(stack)
    with stack.client() as client:
        answer = client.post("/v1/models/mlp/versions/99/deploy")
        health = client.get("/healthz", params={"model": "nope"})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "version_not_found"
    assert health.status_code == 404
    assert live_state(stack) == before


def test_the_cli_pushes_deploys_and_reports_errors_in_one_line(
    stack: Stack, folders: dict[str, Path]
) -> None:
    pushed = stack.cli("push", str(folders["two_inputs"]), "--model", "two_inputs")
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.startswith("already registered (same content): two_inputs version 1 sha256:")
    deployed = stack.cli("deploy", "two_inputs", "1")
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stdout.strip() == "two_inputs version 1 is serving on pool blue"
    missing = stack.cli("deploy", "two_inputs", "42")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: model 'two_inputs' has no version 42 (version_not_found)"
    listing = stack.cli("models")
    assert "mlp" in listing.stdout and "v2@blue" in listing.stdout


def test_readyz_metrics_and_openapi_are_served(stack: Stack) -> None:
    with stack.client() as client:
        ready = client.get("/readyz").json()
        metrics = client.get("/metrics").text
        openapi = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert ready["status"] == "ok" and ready["checks"]["triton:blue"] == "ok"
    assert 'controlplane_deploys_total{outcome="serving"}' in metrics
    assert "/v1/models/{model}/versions/{version}/deploy" in openapi["paths"]
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_an_upload_over_the_size_limit_is_refused_with_413_and_leaves_no_file(stack: Stack) -> None:
    before = live_state(stack)
    oversize = b"\0" * (UPLOAD_LIMIT + 1)
    with stack.client() as client:
        declared = client.post(
            "/v1/models/mlp/versions", content=oversize, headers={"content-type": "application/gzip"}
        )
        streamed = client.post(
            "/v1/models/mlp/versions",
            content=iter([oversize[: UPLOAD_LIMIT // 2], oversize[UPLOAD_LIMIT // 2 :]]),
            headers={"content-type": "application/gzip"},
        )
    for answer in (declared, streamed):
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"]["code"] == "payload_too_large"
    assert list((stack.state_dir / "uploads").iterdir()) == []
    assert live_state(stack) == before


def test_every_mutating_endpoint_needs_a_token_whose_role_allows_it(
    stack: Stack, folders: dict[str, Path]
) -> None:
    suffix = uuid.uuid4().hex[:6]
    viewer = create_token(stack, f"viewer-{suffix}", "viewer")
    publisher = create_token(stack, f"publisher-{suffix}", "publisher")
    deployer = create_token(stack, f"deployer-{suffix}", "deployer")
    before = live_state(stack)
    with stack.client(token="") as anonymous:
        missing = anonymous.post("/v1/models/mlp/versions/2/deploy")
        reads = anonymous.get("/v1/models")
        health = anonymous.get("/healthz")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert reads.status_code == 401 and health.status_code == 200
    with stack.client(token="cpt_not-a-real-token") as forged:
        assert forged.get("/v1/models").status_code == 401
    with stack.client(token=viewer) as client:
        assert client.get("/v1/models").status_code == 200
        refused = client.post("/v1/models/mlp/versions/2/deploy")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    with stack.client(token=publisher) as client:
        assert client.post("/v1/models/mlp/versions/2/deploy").status_code == 403
        assert client.post("/v1/rollouts", json={"model": "mlp", "version": 2}).status_code == 403
    with stack.client(token=deployer) as client:
        pushed = client.post(
            "/v1/models/mlp/versions", content=b"x", headers={"content-type": "application/gzip"}
        )
        assert pushed.status_code == 403
    assert live_state(stack) == before

    revoked = stack.cli("token", "revoke", f"viewer-{suffix}", "--state-dir", str(stack.state_dir))
    assert revoked.returncode == 0, revoked.stderr
    with stack.client(token=viewer) as client:
        assert client.get("/v1/models").status_code == 401
    with stack.client() as client:
        events = client.get("/v1/events", params={"limit": 1000}).json()
    actions = {(e["actor"], e["action"], e["target"]) for e in events}
    assert any(actor.startswith("cli:") and action == "token.revoke" for actor, action, _t in actions)


def test_triton_model_control_is_refused_through_the_proxy_while_inference_works(stack: Stack) -> None:
    client = grpcclient.InferenceServerClient(stack.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="not available through the proxy"):
            client.load_model("mlp")
        with pytest.raises(InferenceServerException):
            client.unload_model("mlp")
        assert client.infer("mlp", [_mlp_tensor()]).as_numpy("OUTPUT0").shape == (3, 4)
    finally:
        client.close()
    answer = httpx.post(f"http://127.0.0.1:{stack.http_port}/v2/repository/models/mlp/unload")
    assert answer.status_code == 403


def _mlp_tensor() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT0", list(MLP_INPUT.shape), "FP32")
    tensor.set_data_from_numpy(MLP_INPUT)
    return tensor
