"""The watcher's transports: the REST API (a mocked HTTP server) and this process's services (fakes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fakes import World, model_folder, serving_world
from gitops_fakes import POLICY, outcomes
from typer.testing import CliRunner

from controlplane.cli import app
from controlplane.domain.gitops import RolloutPolicy, WatchOutcome, parse_rollout_policy
from controlplane.domain.rollouts import RolloutState
from controlplane.errors import ControlPlaneError
from controlplane.gitops.sources import DirectorySource
from controlplane.gitops.transports import WATCHER_ACTOR, HttpTransport, InProcessTransport
from controlplane.gitops.watcher import Watcher
from controlplane.settings import Settings

# -- over the REST API ------------------------------------------------------------------------


def _transport(handler: httpx.MockTransport) -> HttpTransport:
    return HttpTransport(
        "http://cp", client=httpx.Client(base_url="http://cp", transport=handler, headers={"X": "y"})
    )


def _error(status: int, code: str, message: str = "refused") -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "details": None}})


def test_a_push_sends_the_archive_and_the_labels_and_reads_number_and_creation(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"version": 4, "created": True, "model": "mlp"})

    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"archive bytes")

    result = _transport(httpx.MockTransport(handler)).push(
        "mlp", archive, {"git.commit": "a" * 40, "git.path": "mlp"}
    )

    assert result == (4, True)
    (request,) = seen
    assert request.method == "POST"
    assert request.url.path == "/v1/models/mlp/versions"
    assert request.url.params.get_list("label") == [f"git.commit={'a' * 40}", "git.path=mlp"]
    assert request.headers["content-type"] == "application/gzip"
    assert request.content == b"archive bytes"


def test_a_rollout_is_requested_with_the_policy_as_the_api_takes_it() -> None:
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(202, json={"id": 12, "state": "pending"})

    policy = parse_rollout_policy({"strategy": "bluegreen", "step_seconds": 0}, file="f", model="mlp")

    assert _transport(httpx.MockTransport(handler)).start_rollout("mlp", 3, policy) == 12
    assert bodies == [policy.as_request("mlp", 3)]


@pytest.mark.parametrize(
    ("response", "code", "retryable"),
    [
        (_error(409, "pool_busy", "pool green is held by rollout 3"), "pool_busy", True),
        (_error(422, "invalid_model_config", "config.pbtxt: no input"), "invalid_model_config", False),
        (_error(409, "breaking_change"), "breaking_change", False),
        (_error(401, "unauthorized"), "unauthorized", True),
        (_error(503, "database_unavailable"), "database_unavailable", True),
        (httpx.Response(502, text="bad gateway"), "http_502", True),
    ],
)
def test_answers_of_the_api_become_errors_that_say_whether_to_retry(
    response: httpx.Response, code: str, retryable: bool
) -> None:
    transport = _transport(httpx.MockTransport(lambda _request: response))
    with pytest.raises(ControlPlaneError) as caught:
        transport.start_rollout("mlp", 1, RolloutPolicy())
    assert (caught.value.code, caught.value.retryable) == (code, retryable)


def test_an_unreachable_api_is_retried_later() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ControlPlaneError) as caught:
        _transport(httpx.MockTransport(handler)).start_rollout("mlp", 1, RolloutPolicy())
    assert caught.value.code == "api_unreachable"
    assert caught.value.retryable


# -- the CLI ----------------------------------------------------------------------------------


def test_watch_once_exits_1_when_a_folder_is_refused(tmp_path: Path) -> None:
    model_folder(tmp_path, "not a model name", b"v1")

    result = CliRunner().invoke(app, ["watch", str(tmp_path), "--once", "--api", "http://127.0.0.1:9"])

    assert result.exit_code == 1
    assert "1 rejected" in result.stdout


def test_watch_once_exits_2_when_the_api_cannot_be_reached(tmp_path: Path) -> None:
    model_folder(tmp_path, "mlp", b"v1")

    result = CliRunner().invoke(app, ["watch", str(tmp_path), "--once", "--api", "http://127.0.0.1:9"])

    assert result.exit_code == 2
    assert "1 deferred" in result.stdout


def test_watch_refuses_an_odd_branch_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["watch", str(tmp_path), "--branch", "-x", "--once"])

    assert result.exit_code == 1
    assert "invalid_branch" in result.stderr


# -- in this process ---------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = serving_world(tmp_path / "world")
    yield world
    world.close()


def test_in_process_a_new_folder_is_registered_with_its_labels_and_rolled_out(
    world: World, tmp_path: Path
) -> None:
    root = tmp_path / "watched"
    folder = model_folder(root, "mlp", b"weights of version 3")
    (folder / "rollout.yaml").write_bytes(POLICY)
    engine = world.engine()
    watcher = Watcher(DirectorySource(root), InProcessTransport(world.registry, engine))

    results = watcher.poll()

    assert outcomes(results) == [("mlp", WatchOutcome.PUSHED), ("mlp", WatchOutcome.ROLLOUT_STARTED)]
    version = world.registry.get_version("mlp", 3)
    assert version.metadata.labels == {"source.path": str(folder.resolve())}
    rollout = engine.wait(results[1].rollout or 0, timeout=10)
    assert rollout.state is RolloutState.SUCCEEDED, rollout.reason
    assert (rollout.spec.version, rollout.actor) == (3, WATCHER_ACTOR)
    assert world.releases()[rollout.target_pool] == {"mlp": 3}


def test_in_process_a_rejected_folder_is_audited_as_watch_rejected(world: World, tmp_path: Path) -> None:
    root = tmp_path / "watched"
    folder = model_folder(root, "mlp", b"v3")
    (folder / "config.pbtxt").write_text("this is not a model configuration {", encoding="utf-8")
    watcher = Watcher(DirectorySource(root), InProcessTransport(world.registry, world.engine()))

    results = watcher.poll()

    assert outcomes(results) == [("mlp", WatchOutcome.REJECTED)]
    events = [e for e in world.registry.events(limit=500) if e.action == "watch.rejected"]
    assert len(events) == 1
    assert events[0].target == "mlp"
    assert events[0].actor == WATCHER_ACTOR
    assert events[0].details["code"] == results[0].code
    assert events[0].details["message"] in results[0].message
    assert events[0].details["source.path"] == str(folder.resolve())
    assert [v.number for v in world.registry.list_versions("mlp")] == [1, 2]


# -- the settings `up` follows a folder with ---------------------------------------------------


def test_up_reads_its_watch_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONTROLPLANE_WATCH_PATH", "models")
    monkeypatch.setenv("CONTROLPLANE_WATCH_GIT", "true")
    monkeypatch.setenv("CONTROLPLANE_WATCH_BRANCH", "release")
    monkeypatch.setenv("CONTROLPLANE_WATCH_INTERVAL_SECONDS", "2.5")

    settings = Settings()

    assert settings.watch_path == (tmp_path / "models").resolve()
    assert (settings.watch_git, settings.watch_branch, settings.watch_interval_seconds) == (
        True,
        "release",
        2.5,
    )


def test_without_a_watch_path_up_watches_nothing_and_a_zero_interval_is_refused() -> None:
    assert Settings().watch_path is None
    with pytest.raises(ValueError, match="watch_interval_seconds"):
        Settings(watch_interval_seconds=0)
