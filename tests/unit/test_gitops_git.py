"""The watcher over a git repository made with the git CLI: committed content only, one push per change."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fakes import model_folder
from gitops_fakes import POLICY, FakeTransport, outcomes

from controlplane.domain.gitops import WatchLimits, WatchOutcome
from controlplane.errors import InvalidInput
from controlplane.gitops.sources import DirectorySource, GitSource
from controlplane.gitops.watcher import Watcher, open_source


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with a fixed identity and no user or system configuration."""
    env = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=Tests", "-c", "user.email=tests@example.com", *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=30,
    )
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    return path


def _watcher(path: Path, transport: FakeTransport, **kwargs: object) -> Watcher:
    return Watcher(GitSource(path, **kwargs), transport)  # type: ignore[arg-type]


def test_the_first_pass_pushes_every_folder_with_its_commit_and_path(repo: Path) -> None:
    model_folder(repo, "mlp", b"v1")
    model_folder(repo, "other", b"v1")
    (repo / "README.md").write_text("models of the team", encoding="utf-8")
    commit = commit_all(repo, "first models")
    transport = FakeTransport()
    watcher = _watcher(repo, transport)

    assert outcomes(watcher.poll()) == [("mlp", WatchOutcome.PUSHED), ("other", WatchOutcome.PUSHED)]
    assert [p.labels for p in transport.pushes] == [
        {"git.commit": commit, "git.path": "mlp"},
        {"git.commit": commit, "git.path": "other"},
    ]
    assert watcher.poll() == []


def test_a_commit_pushes_only_the_folders_it_changed(repo: Path) -> None:
    model_folder(repo, "mlp", b"v1")
    model_folder(repo, "other", b"v1")
    commit_all(repo, "first models")
    transport = FakeTransport()
    watcher = _watcher(repo, transport)
    watcher.poll()
    (repo / "other" / "1" / "model.onnx").write_bytes(b"weights of version 2")
    second = commit_all(repo, "retrain other")

    results = watcher.poll()

    assert [(r.folder, r.outcome, r.version) for r in results] == [("other", WatchOutcome.PUSHED, 2)]
    assert transport.pushes[-1].labels == {"git.commit": second, "git.path": "other"}
    assert transport.pushes[-1].members["1/model.onnx"] == b"weights of version 2"


def test_uncommitted_changes_are_never_pushed(repo: Path) -> None:
    folder = model_folder(repo, "mlp", b"v1")
    commit_all(repo, "first model")
    (folder / "1" / "model.onnx").write_bytes(b"work in progress")
    model_folder(repo, "untracked", b"draft")
    transport = FakeTransport()
    watcher = _watcher(repo, transport)

    watcher.poll()
    git(repo, "add", "-A")  # staged, still not committed
    second = watcher.poll()

    assert [p.model for p in transport.pushes] == ["mlp"]
    assert transport.pushes[0].members["1/model.onnx"] != b"work in progress", "the commit's bytes are pushed"
    assert second == []


def test_rollout_yaml_is_read_from_the_commit_and_not_pushed(repo: Path) -> None:
    folder = model_folder(repo, "mlp", b"v1")
    (folder / "rollout.yaml").write_bytes(POLICY)
    commit_all(repo, "model with a policy")
    (folder / "rollout.yaml").write_bytes(b"strategy: inplace\n")  # not committed
    transport = FakeTransport()

    results = _watcher(repo, transport).poll()

    assert outcomes(results) == [("mlp", WatchOutcome.PUSHED), ("mlp", WatchOutcome.ROLLOUT_STARTED)]
    assert transport.rollouts[0][2].strategy.value == "bluegreen"
    assert sorted(transport.pushes[0].members) == ["1/model.onnx", "config.pbtxt"]


def test_a_committed_symlink_out_of_the_repository_is_refused(repo: Path) -> None:
    folder = model_folder(repo, "mlp", b"v1")
    (folder / "1" / "weights.bin").symlink_to("/etc/passwd")
    commit = commit_all(repo, "a link")
    transport = FakeTransport()

    results = _watcher(repo, transport).poll()

    assert outcomes(results) == [("mlp", WatchOutcome.REJECTED)]
    assert results[0].code == "symlink_not_followed"
    assert "outside the watched root" in results[0].message
    assert transport.pushes == []
    assert transport.reports[0]["git.commit"] == commit


def test_a_committed_file_above_the_limit_is_refused_before_it_is_read(repo: Path) -> None:
    folder = model_folder(repo, "mlp", b"v1")
    (folder / "1" / "model.onnx").write_bytes(b"x" * 5000)
    commit_all(repo, "a big model")
    transport = FakeTransport()

    watcher = Watcher(GitSource(repo, limits=WatchLimits(max_file_bytes=4096)), transport)
    results = watcher.poll()

    assert results[0].code == "file_too_large"
    assert transport.pushes == []


def test_the_branch_named_is_followed_whatever_head_is(repo: Path) -> None:
    model_folder(repo, "mlp", b"main")
    commit_all(repo, "main's model")
    git(repo, "checkout", "-q", "-b", "release")
    (repo / "mlp" / "1" / "model.onnx").write_bytes(b"release weights")
    release = commit_all(repo, "release model")
    git(repo, "checkout", "-q", "main")
    transport = FakeTransport()

    watcher = _watcher(repo, transport, branch="release")
    watcher.poll()

    assert transport.pushes[0].labels["git.commit"] == release
    assert transport.pushes[0].members["1/model.onnx"] == b"release weights"
    assert "branch release" in watcher.source.description


def test_a_folder_inside_a_repository_watches_only_its_own_folders(repo: Path) -> None:
    model_folder(repo / "models", "mlp", b"v1")
    model_folder(repo, "elsewhere", b"v1")
    commit_all(repo, "nested")
    transport = FakeTransport()

    results = Watcher(GitSource(repo / "models"), transport).poll()

    assert outcomes(results) == [("models/mlp", WatchOutcome.PUSHED)]
    assert transport.pushes[0].model == "mlp"
    assert transport.pushes[0].labels["git.path"] == "models/mlp"


@pytest.mark.parametrize("branch", ["--upload-pack=touch /tmp/pwned", "main~1", "HEAD^", "a..b"])
def test_odd_refs_are_refused_before_git_sees_them(repo: Path, branch: str) -> None:
    model_folder(repo, "mlp", b"v1")
    commit_all(repo, "first")
    with pytest.raises(InvalidInput) as caught:
        GitSource(repo, branch=branch)
    assert caught.value.code == "invalid_branch"


def test_a_branch_that_does_not_exist_is_refused(repo: Path) -> None:
    model_folder(repo, "mlp", b"v1")
    commit_all(repo, "first")
    with pytest.raises(InvalidInput, match="branch 'nope' does not exist"):
        GitSource(repo, branch="nope")


def test_a_detached_head_needs_a_branch_named(repo: Path) -> None:
    model_folder(repo, "mlp", b"v1")
    commit = commit_all(repo, "first")
    git(repo, "checkout", "-q", "--detach", commit)
    with pytest.raises(InvalidInput, match="detached"):
        GitSource(repo)
    assert GitSource(repo, branch="main").head() == commit


def test_a_folder_with_git_is_followed_as_a_repository_and_others_as_files(
    repo: Path, tmp_path: Path
) -> None:
    model_folder(repo, "mlp", b"v1")
    commit_all(repo, "first")
    plain = tmp_path / "plain"
    plain.mkdir()

    assert isinstance(open_source(repo), GitSource)
    assert isinstance(open_source(plain), DirectorySource)
    with pytest.raises(InvalidInput) as caught:
        open_source(plain, git=True)
    assert caught.value.code == "not_a_repository"


def test_a_committed_model_folder_that_is_a_symlink_is_refused_and_its_target_not_read(repo: Path) -> None:
    model_folder(repo / "shared", "mlp", b"v1")
    (repo / "mlp").symlink_to("shared/mlp", target_is_directory=True)
    commit_all(repo, "a linked model folder")
    transport = FakeTransport()

    results = _watcher(repo, transport).poll()

    by_folder = {r.folder: r for r in results}
    assert by_folder["mlp"].outcome is WatchOutcome.REJECTED
    assert by_folder["mlp"].code == "symlink_not_followed"
    assert "inside the watched root" in by_folder["mlp"].message
    assert "mlp" not in [p.model for p in transport.pushes]
