"""A corpus of hostile and malformed requests against a running stack.

Each case names the status and error code it must get, and proves that
nothing live changed: registry rows, the artifact store, every pool's
repository folder, each Triton's repository index and HAProxy's weights are
the same before and after.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from stack import Stack, start_stack
from triton_helpers import load_examples_module

pytestmark = pytest.mark.integration

examples = load_examples_module()
UPLOAD_LIMIT = 4 * 1024 * 1024
CONFIG = (
    b'name: "mlp"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
    b'input [{name: "INPUT0" data_type: TYPE_FP32 dims: [16]}]\n'
    b'output [{name: "OUTPUT0" data_type: TYPE_FP32 dims: [4]}]\n'
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("hostile")
    running = start_stack(root / "state", env={"CONTROLPLANE_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)})
    try:
        assert running.push(examples.build_mlp(root / "v1", seed=1), "mlp").status_code == 201
        with running.client() as client:
            assert client.post("/v1/models/mlp/versions/1/deploy").status_code == 200
        # What a refusal must not change includes the standby, so let it settle first.
        running.wait_standby("mlp")
        yield running
    finally:
        assert running.stop() == 0


# -- archive builders --------------------------------------------------------------------------


def tar_gz(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def zip_of(*members: tuple[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name), data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16) | 0x20
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def good(*extra: tuple[tarfile.TarInfo, bytes | None], config: bytes = CONFIG) -> bytes:
    return tar_gz(file("config.pbtxt", config), file("1/model.onnx", b"onnx"), *extra)


def bomb() -> bytes:
    buffer = io.BytesIO()
    zeros = b"\0" * (64 * 1024 * 1024)
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(file("config.pbtxt", CONFIG)[0], io.BytesIO(CONFIG))
        tar.addfile(file("1/model.onnx", zeros)[0], io.BytesIO(zeros))
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    status: int
    code: str
    body: Callable[[], bytes] | None = None
    content_type: str = "application/gzip"
    json_body: object = None


PUSH = "/v1/models/mlp/versions"
GZ = "application/gzip"
CASES: dict[str, Case] = {
    # archives
    "path-traversal": Case("POST", PUSH, 422, "archive_rejected", lambda: good(file("../../escape", b"x"))),
    "absolute-path": Case("POST", PUSH, 422, "archive_rejected", lambda: good(file("/tmp/abs-escape", b"x"))),
    "symlink": Case(
        "POST", PUSH, 422, "archive_rejected", lambda: good(special("1/w", tarfile.SYMTYPE, "/etc/passwd"))
    ),
    "hardlink": Case(
        "POST", PUSH, 422, "archive_rejected", lambda: good(special("1/w", tarfile.LNKTYPE, "config.pbtxt"))
    ),
    "char-device": Case(
        "POST", PUSH, 422, "archive_rejected", lambda: good(special("1/null", tarfile.CHRTYPE))
    ),
    "block-device": Case(
        "POST", PUSH, 422, "archive_rejected", lambda: good(special("1/sda", tarfile.BLKTYPE))
    ),
    "fifo": Case("POST", PUSH, 422, "archive_rejected", lambda: good(special("1/pipe", tarfile.FIFOTYPE))),
    "backslash-name": Case("POST", PUSH, 422, "archive_rejected", lambda: good(file("1\\..\\..\\evil"))),
    "drive-letter": Case("POST", PUSH, 422, "archive_rejected", lambda: good(file("C:/evil"))),
    "control-character": Case("POST", PUSH, 422, "archive_rejected", lambda: good(file("1/bad\x07name"))),
    "duplicate-member": Case(
        "POST", PUSH, 422, "archive_rejected", lambda: good(file("1/model.onnx", b"again"))
    ),
    "deep-path": Case("POST", PUSH, 422, "archive_rejected", lambda: good(file("1/" + "d/" * 40 + "f"))),
    "gzip-bomb": Case("POST", PUSH, 422, "archive_rejected", bomb),
    "truncated-archive": Case("POST", PUSH, 422, "archive_rejected", lambda: good()[:-40]),
    "corrupt-gzip": Case(
        "POST", PUSH, 422, "archive_rejected", lambda: gzip.compress(b"not a tar at all" * 100)
    ),
    "not-an-archive": Case("POST", PUSH, 422, "archive_rejected", lambda: b"hello, world"),
    "empty-zip": Case("POST", PUSH, 422, "archive_rejected", lambda: zip_of(), "application/zip"),
    "zip-traversal": Case(
        "POST",
        PUSH,
        422,
        "archive_rejected",
        lambda: zip_of(("config.pbtxt", CONFIG), ("../x", b"x")),
        "application/zip",
    ),
    "zip-absolute": Case(
        "POST",
        PUSH,
        422,
        "archive_rejected",
        lambda: zip_of(("config.pbtxt", CONFIG), ("/etc/x", b"x")),
        "application/zip",
    ),
    "zip-symlink": Case(
        "POST",
        PUSH,
        422,
        "archive_rejected",
        lambda: zip_of(("config.pbtxt", CONFIG), symlink="1/model.onnx"),
        "application/zip",
    ),
    # model folders
    "no-config": Case("POST", PUSH, 422, "invalid_model_config", lambda: tar_gz(file("1/model.onnx"))),
    "malformed-config": Case(
        "POST", PUSH, 422, "invalid_model_config", lambda: good(config=b"input [ { name: ")
    ),
    "config-names-other-model": Case(
        "POST", PUSH, 422, "invalid_model_config", lambda: good(config=CONFIG.replace(b'"mlp"', b'"other"'))
    ),
    "config-without-backend": Case(
        "POST",
        PUSH,
        422,
        "invalid_model_config",
        lambda: good(config=CONFIG.replace(b'backend: "onnxruntime"\n', b"")),
    ),
    "config-without-inputs": Case(
        "POST",
        PUSH,
        422,
        "invalid_model_config",
        lambda: good(
            config=CONFIG.split(b"input")[0] + b'output [{name: "O" data_type: TYPE_FP32 dims: [1]}]'
        ),
    ),
    "config-binary-garbage": Case(
        "POST", PUSH, 422, "invalid_model_config", lambda: good(config=b"\xff\xfe\x00garbage")
    ),
    "version-policy-specific": Case(
        "POST",
        PUSH,
        422,
        "invalid_model_config",
        lambda: good(config=CONFIG + b"version_policy: { specific: { versions: [1] } }"),
    ),
    "no-version-directory": Case(
        "POST",
        PUSH,
        422,
        "invalid_model_layout",
        lambda: tar_gz(file("config.pbtxt", CONFIG), file("model.onnx")),
    ),
    "two-version-directories": Case(
        "POST", PUSH, 422, "invalid_model_layout", lambda: good(file("2/model.onnx"))
    ),
    # transport
    "empty-body": Case("POST", PUSH, 422, "empty_upload", lambda: b""),
    "json-instead-of-archive": Case(
        "POST", PUSH, 415, "unsupported_media_type", lambda: b"{}", "application/json"
    ),
    "oversize-upload": Case("POST", PUSH, 413, "payload_too_large", lambda: b"\0" * (UPLOAD_LIMIT + 1)),
    # names and parameters
    "model-name-dot-dot": Case("POST", "/v1/models/..mlp/versions", 422, "invalid_model_name", good),
    "model-name-space": Case("POST", "/v1/models/a%20b/versions", 422, "invalid_model_name", good),
    "model-name-too-long": Case("POST", f"/v1/models/{'m' * 129}/versions", 422, "invalid_model_name", good),
    "metric-not-a-number": Case("POST", PUSH + "?metric=accuracy=high", 422, "invalid_metric", good),
    "metric-infinite": Case("POST", PUSH + "?metric=accuracy=inf", 422, "invalid_metric", good),
    "label-without-value": Case("POST", PUSH + "?label=team", 422, "invalid_label", good),
    # registry and deploys
    "unknown-model": Case("GET", "/v1/models/nope", 404, "model_not_found"),
    "unknown-version": Case("GET", "/v1/models/mlp/versions/42", 404, "version_not_found"),
    "version-not-a-number": Case("GET", "/v1/models/mlp/versions/one", 422, "invalid_request"),
    "deploy-unknown-model": Case("POST", "/v1/models/nope/versions/1/deploy", 404, "model_not_found"),
    "deploy-unknown-version": Case("POST", "/v1/models/mlp/versions/42/deploy", 404, "version_not_found"),
    "deploy-unknown-pool": Case(
        "POST", "/v1/models/mlp/versions/1/deploy?pool=purple", 404, "pool_not_found"
    ),
    # rollouts
    "rollout-malformed-json": Case(
        "POST", "/v1/rollouts", 422, "invalid_request", lambda: b'{"model": "mlp",', "application/json"
    ),
    "rollout-unknown-field": Case(
        "POST",
        "/v1/rollouts",
        422,
        "invalid_request",
        json_body={"model": "mlp", "version": 1, "color": "red"},
    ),
    "rollout-decreasing-steps": Case(
        "POST",
        "/v1/rollouts",
        422,
        "invalid_rollout",
        json_body={"model": "mlp", "version": 1, "steps": [50, 10, 100]},
    ),
    "rollout-gate-out-of-range": Case(
        "POST",
        "/v1/rollouts",
        422,
        "invalid_request",
        json_body={"model": "mlp", "version": 1, "gates": {"max_error_rate": 2}},
    ),
    "rollout-unknown-version": Case(
        "POST", "/v1/rollouts", 404, "version_not_found", json_body={"model": "mlp", "version": 42}
    ),
    "rollout-unknown-strategy": Case(
        "POST",
        "/v1/rollouts",
        422,
        "invalid_request",
        json_body={"model": "mlp", "version": 1, "strategy": "yolo"},
    ),
    "abort-unknown-rollout": Case("POST", "/v1/rollouts/999/abort", 404, "rollout_not_found"),
    "rollback-without-history": Case("POST", "/v1/models/mlp/rollback", 409, "no_previous_version"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_hostile_request_is_refused_naming_the_problem_and_changes_nothing_live(
    stack: Stack, name: str
) -> None:
    case = CASES[name]
    before = stack.live_state()
    with stack.client() as client:
        if case.json_body is not None:
            answer = client.request(case.method, case.path, json=case.json_body)
        elif case.body is not None:
            answer = client.request(
                case.method, case.path, content=case.body(), headers={"content-type": case.content_type}
            )
        else:
            answer = client.request(case.method, case.path)
    assert answer.status_code == case.status, answer.text
    error = answer.json()["error"]
    assert error["code"] == case.code
    assert error["message"]
    assert stack.live_state() == before
    assert list((stack.state_dir / "uploads").glob("*")) == []
    assert not Path("/tmp/abs-escape").exists() and not (stack.state_dir.parent / "escape").exists()


def test_the_corpus_covers_at_least_thirty_hostile_inputs() -> None:
    assert len(CASES) >= 30
