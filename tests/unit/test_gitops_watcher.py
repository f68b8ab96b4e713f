"""The watcher over a plain folder of model folders, with an in-memory transport."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from fakes import model_folder
from gitops_fakes import POLICY, FakeTransport, outcomes

from controlplane.domain.gitops import WatchLimits, WatchOutcome
from controlplane.errors import ControlPlaneError, InvalidModelConfig, PoolBusy
from controlplane.gitops.sources import DirectorySource
from controlplane.gitops.watcher import WATCH_FOLDERS, Watcher


def _counter(outcome: WatchOutcome) -> float:
    return WATCH_FOLDERS.labels(outcome.value)._value.get()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


def _watcher(root: Path, transport: FakeTransport, **limits: int) -> Watcher:
    return Watcher(DirectorySource(root, limits=WatchLimits(**limits)), transport)


def _touch_later(path: Path) -> None:
    """Give ``path`` a modification time the fingerprint cannot confuse with the previous one."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_a_new_folder_is_pushed_with_its_source_path_and_then_left_alone(root: Path) -> None:
    model_folder(root, "mlp", b"v1")
    transport = FakeTransport()
    watcher = _watcher(root, transport)
    pushed_before = _counter(WatchOutcome.PUSHED)

    assert outcomes(watcher.poll()) == [("mlp", WatchOutcome.PUSHED)]
    assert outcomes(watcher.poll()) == []

    assert len(transport.pushes) == 1
    push = transport.pushes[0]
    assert push.model == "mlp"
    assert push.labels == {"source.path": str((root / "mlp").resolve())}
    assert sorted(push.members) == ["1/model.onnx", "config.pbtxt"]
    assert transport.rollouts == [], "a folder without rollout.yaml is only registered"
    assert _counter(WatchOutcome.PUSHED) == pushed_before + 1


def test_a_changed_folder_becomes_the_next_version(root: Path) -> None:
    folder = model_folder(root, "mlp", b"v1")
    transport = FakeTransport()
    watcher = _watcher(root, transport)
    watcher.poll()
    (folder / "1" / "model.onnx").write_bytes(b"weights of version 2")
    _touch_later(folder / "1" / "model.onnx")

    results = watcher.poll()

    assert [(r.outcome, r.version) for r in results] == [(WatchOutcome.PUSHED, 2)]
    assert transport.pushes[-1].members["1/model.onnx"] == b"weights of version 2"


def test_a_touched_folder_with_the_same_content_is_unchanged_and_not_rolled_out(root: Path) -> None:
    folder = model_folder(root, "mlp", b"v1")
    (folder / "rollout.yaml").write_bytes(POLICY)
    transport = FakeTransport()
    watcher = _watcher(root, transport)
    watcher.poll()
    assert len(transport.rollouts) == 1
    _touch_later(folder / "config.pbtxt")

    results = watcher.poll()

    assert [(r.outcome, r.version) for r in results] == [(WatchOutcome.UNCHANGED, 1)]
    assert len(transport.rollouts) == 1, "an unchanged version is not rolled out again"


def test_a_new_version_of_a_folder_with_rollout_yaml_is_rolled_out_with_its_settings(root: Path) -> None:
    folder = model_folder(root, "mlp", b"v1")
    (folder / "rollout.yaml").write_bytes(POLICY)
    (folder / ".notes.swp").write_bytes(b"editor state")
    transport = FakeTransport()

    results = _watcher(root, transport).poll()

    assert outcomes(results) == [("mlp", WatchOutcome.PUSHED), ("mlp", WatchOutcome.ROLLOUT_STARTED)]
    assert results[1].rollout == 1
    model, number, policy = transport.rollouts[0]
    assert (model, number, policy.strategy.value, policy.step_seconds) == ("mlp", 1, "bluegreen", 0.0)
    assert policy.gates.min_requests == 0
    assert sorted(transport.pushes[0].members) == ["1/model.onnx", "config.pbtxt"], (
        "rollout.yaml and dot-files are not part of the model"
    )


def test_a_bad_folder_is_reported_once_and_the_others_are_still_pushed(root: Path) -> None:
    model_folder(root, "bad", b"x")
    model_folder(root, "good", b"y")
    transport = FakeTransport(
        push_errors={"bad": InvalidModelConfig("config.pbtxt: input INPUT0 has no data_type")}
    )
    watcher = _watcher(root, transport)
    rejected_before = _counter(WatchOutcome.REJECTED)

    first = watcher.poll()
    second = watcher.poll()

    assert outcomes(first) == [("bad", WatchOutcome.REJECTED), ("good", WatchOutcome.PUSHED)]
    assert "INPUT0 has no data_type" in first[0].message
    assert first[0].code == "invalid_model_config"
    assert second == [], "the same bad content is not tried (nor reported) again"
    assert transport.reports == [
        {
            "folder": "bad",
            "outcome": WatchOutcome.REJECTED,
            "code": "invalid_model_config",
            "source.path": str((root / "bad").resolve()),
        }
    ]
    assert _counter(WatchOutcome.REJECTED) == rejected_before + 1


def test_a_fixed_folder_is_pushed_at_the_next_poll(root: Path) -> None:
    folder = model_folder(root, "mlp", b"v1")
    transport = FakeTransport(push_errors={"mlp": InvalidModelConfig("broken")})
    watcher = _watcher(root, transport)
    watcher.poll()
    del transport.push_errors["mlp"]
    (folder / "config.pbtxt").write_text((folder / "config.pbtxt").read_text() + "\n", encoding="utf-8")
    _touch_later(folder / "config.pbtxt")

    assert outcomes(watcher.poll()) == [("mlp", WatchOutcome.PUSHED)]


def test_a_failure_that_may_pass_leaves_the_folder_to_the_next_poll_and_is_logged_once(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_folder(root, "mlp", b"v1")
    transport = FakeTransport(
        push_errors={"mlp": ControlPlaneError("cannot reach the API", code="api_unreachable", retryable=True)}
    )
    watcher = _watcher(root, transport)

    with caplog.at_level(logging.WARNING, logger="controlplane.watch"):
        assert outcomes(watcher.poll()) == [("mlp", None)]
        assert outcomes(watcher.poll()) == [("mlp", None)]
    assert [r.getMessage() for r in caplog.records] == [
        "watch: mlp is tried again at the next poll: cannot reach the API"
    ]
    assert transport.reports == []
    del transport.push_errors["mlp"]
    assert outcomes(watcher.poll()) == [("mlp", WatchOutcome.PUSHED)]


def test_an_invalid_rollout_yaml_rejects_the_folder_before_anything_is_pushed(root: Path) -> None:
    folder = model_folder(root, "mlp", b"v1")
    (folder / "rollout.yaml").write_bytes(b"strategy: canary\nsteps: [50, 10]\nmodel: other\n")
    transport = FakeTransport()

    results = _watcher(root, transport).poll()

    assert outcomes(results) == [("mlp", WatchOutcome.REJECTED)]
    assert results[0].code == "invalid_rollout_policy"
    assert "mlp/rollout.yaml" in results[0].message
    assert transport.pushes == []


def test_a_rollout_refused_by_the_control_plane_is_reported_and_not_retried(root: Path) -> None:
    folder = model_folder(root, "mlp", b"v1")
    (folder / "rollout.yaml").write_bytes(POLICY)
    refusal = ControlPlaneError("the interface breaks clients of version 1", code="breaking_change")
    transport = FakeTransport(rollout_errors=[refusal])
    watcher = _watcher(root, transport)

    results = watcher.poll()

    assert outcomes(results) == [("mlp", WatchOutcome.PUSHED), ("mlp", WatchOutcome.ROLLOUT_REFUSED)]
    assert transport.reports == [
        {"folder": "mlp", "outcome": WatchOutcome.ROLLOUT_REFUSED, "code": "breaking_change", "version": 1}
    ]
    assert watcher.poll() == []
    assert transport.rollouts == []


def test_a_rollout_blocked_by_a_running_one_starts_at_a_later_poll(root: Path) -> None:
    folder = model_folder(root, "mlp", b"v1")
    (folder / "rollout.yaml").write_bytes(POLICY)
    busy = PoolBusy("pool green is held by rollout 4", details={"pool": "green"})
    transport = FakeTransport(rollout_errors=[busy, busy])
    watcher = _watcher(root, transport)

    first = watcher.poll()
    second = watcher.poll()
    third = watcher.poll()

    assert outcomes(first) == [("mlp", WatchOutcome.PUSHED), ("mlp", None)]
    assert outcomes(second) == [("mlp", None)]
    assert outcomes(third) == [("mlp", WatchOutcome.ROLLOUT_STARTED)]
    assert [(m, n) for m, n, _p in transport.rollouts] == [("mlp", 1)]
    assert transport.reports == []


def test_a_newer_version_replaces_a_rollout_still_waiting(root: Path) -> None:
    folder = model_folder(root, "mlp", b"v1")
    (folder / "rollout.yaml").write_bytes(POLICY)
    transport = FakeTransport(rollout_errors=[PoolBusy("busy")])
    watcher = _watcher(root, transport)
    watcher.poll()
    (folder / "1" / "model.onnx").write_bytes(b"v2")
    _touch_later(folder / "1" / "model.onnx")

    watcher.poll()

    assert [(m, n) for m, n, _p in transport.rollouts] == [("mlp", 2)]


def test_a_symlink_out_of_the_root_is_refused_and_never_followed(root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not ship", encoding="utf-8")
    folder = model_folder(root, "mlp", b"v1")
    (folder / "1" / "extra.bin").symlink_to(secret)
    transport = FakeTransport()

    results = _watcher(root, transport).poll()

    assert outcomes(results) == [("mlp", WatchOutcome.REJECTED)]
    assert results[0].code == "symlink_not_followed"
    assert "outside the watched root" in results[0].message
    assert transport.pushes == []


def test_a_model_folder_that_is_a_symlink_is_refused(root: Path, tmp_path: Path) -> None:
    elsewhere = model_folder(tmp_path / "elsewhere", "mlp", b"v1")
    (root / "mlp").symlink_to(elsewhere, target_is_directory=True)
    transport = FakeTransport()

    results = _watcher(root, transport).poll()

    assert outcomes(results) == [("mlp", WatchOutcome.REJECTED)]
    assert results[0].code == "symlink_not_followed"
    assert transport.pushes == []


def test_a_file_above_the_size_limit_is_refused_unread(root: Path) -> None:
    folder = model_folder(root, "mlp", b"v1")
    (folder / "1" / "model.onnx").write_bytes(b"x" * 2048)
    transport = FakeTransport()

    results = _watcher(root, transport, max_file_bytes=1024).poll()

    assert outcomes(results) == [("mlp", WatchOutcome.REJECTED)]
    assert results[0].code == "file_too_large"
    assert "mlp/1/model.onnx holds 2048 bytes" in results[0].message
    assert transport.pushes == []


def test_an_oversized_rollout_yaml_is_refused(root: Path) -> None:
    folder = model_folder(root, "mlp", b"v1")
    (folder / "rollout.yaml").write_bytes(b"# " + b"x" * 100 + b"\n")

    results = _watcher(root, FakeTransport(), max_policy_bytes=64).poll()

    assert results[0].code == "policy_file_too_large"


def test_a_folder_whose_name_is_not_a_model_name_is_refused(root: Path) -> None:
    model_folder(root, "not a model!", b"v1")
    model_folder(root, "mlp", b"v1")
    transport = FakeTransport()

    results = _watcher(root, transport).poll()

    assert outcomes(results) == [("mlp", WatchOutcome.PUSHED), ("not a model!", WatchOutcome.REJECTED)]
    assert results[1].code == "invalid_model_name"
    assert [p.model for p in transport.pushes] == ["mlp"]


def test_dot_folders_and_top_level_files_are_not_model_folders(root: Path) -> None:
    model_folder(root, ".cache", b"v1")
    (root / "README.md").write_text("models", encoding="utf-8")

    assert _watcher(root, FakeTransport()).poll() == []


def test_a_folder_removed_and_added_again_is_pushed_again(root: Path) -> None:
    folder = model_folder(root, "mlp", b"v1")
    transport = FakeTransport()
    watcher = _watcher(root, transport)
    watcher.poll()
    hidden = root.parent / "mlp-aside"
    folder.rename(hidden)
    assert watcher.poll() == []
    hidden.rename(folder)

    assert outcomes(watcher.poll()) == [("mlp", WatchOutcome.UNCHANGED)]


def test_a_folder_that_changes_while_it_is_read_is_read_again_at_the_next_poll(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = model_folder(root, "mlp", b"v1")
    transport = FakeTransport()
    watcher = _watcher(root, transport)
    source = watcher.source
    assert isinstance(source, DirectorySource)
    real_export = DirectorySource.export
    calls = 0

    def export_while_written(self: DirectorySource, candidate: Any, dest: Path) -> bytes | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            (folder / "1" / "model.onnx").write_bytes(b"still being written")
            _touch_later(folder / "1" / "model.onnx")
        return real_export(self, candidate, dest)

    monkeypatch.setattr(DirectorySource, "export", export_while_written)

    first = watcher.poll()
    second = watcher.poll()

    assert outcomes(first) == [("mlp", None)]
    assert first[0].code == "folder_changing"
    assert outcomes(second) == [("mlp", WatchOutcome.PUSHED)]
    assert transport.pushes[0].members["1/model.onnx"] == b"still being written"


def test_an_unreadable_root_is_reported_and_the_watcher_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    watcher = _watcher(root, FakeTransport())
    root.rmdir()

    assert watcher.poll() == []
    root.mkdir()
    model_folder(root, "mlp", b"v1")
    assert outcomes(watcher.poll()) == [("mlp", WatchOutcome.PUSHED)]
