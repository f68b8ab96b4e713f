"""A git repository of model folders followed on a real stack: commits become versions and rollouts.

The first test drives the watcher in-process against the services ``controlplane
up`` wires (two real tritonservers, HAProxy, SQLite); the second runs ``controlplane
up`` itself with CONTROLPLANE_WATCH_PATH, and ``controlplane watch --once``
against its REST API.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from rollout_load import FIXED_INPUT
from stack import Stack, start_stack
from triton_helpers import load_examples_module, wait_until

from controlplane.domain.gitops import WatchOutcome
from controlplane.domain.rollouts import RolloutState
from controlplane.gitops.sources import GitSource
from controlplane.gitops.transports import InProcessTransport
from controlplane.gitops.watcher import FolderResult, Watcher
from controlplane.registry import rollout_store
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import Services, local_services
from controlplane.settings import Settings

pytestmark = pytest.mark.integration

examples = load_examples_module()

POLICY = """\
strategy: bluegreen
step_seconds: 0
bake_seconds: 0
gates:
  min_requests: 0
"""


def git(repo: Path, *args: str) -> str:
    """git in ``repo`` with a fixed identity and no user or system configuration."""
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


def new_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    return path


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def infer(url: str, model: str = "mlp") -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(FIXED_INPUT)
        return client.infer(model, [tensor]).as_numpy("OUTPUT0")
    finally:
        client.close()


@dataclass
class Env:
    services: Services
    settings: Settings
    grpc_url: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("gitops")
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(state_dir=root / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port)
    with local_services(settings, pool_names=("blue", "green")) as (_stack, services):
        yield Env(services, settings, f"127.0.0.1:{grpc_port}")


def _one(results: list[FolderResult], outcome: WatchOutcome) -> FolderResult:
    found = [r for r in results if r.outcome is outcome]
    assert len(found) == 1, results
    return found[0]


def _live(env: Env) -> dict[str, object]:
    """What serves: weights, each pool's release, the registry's versions and rollouts."""
    services = env.services
    with services.db.transaction() as session:
        releases = {pool: rollout_store.pool_release(session, pool) for pool in services.pools}
    return {
        "weights": services.router.weights(),
        "releases": releases,
        "versions": [(v.number, v.state.value) for v in services.registry.list_versions("mlp")],
        "rollouts": [(r.id, r.state.value) for r in services.engine.list(limit=50)],
        "ready": {
            pool: [n for n in (1, 2, 3) if p.triton.is_model_ready("mlp", n)]
            for pool, p in services.pools.items()
        },
    }


def test_commits_become_versions_and_rollouts_and_a_broken_commit_changes_nothing_live(
    env: Env, tmp_path: Path
) -> None:
    repo = new_repo(tmp_path / "models")
    folder = examples.build_mlp(repo, seed=1)
    (folder / "rollout.yaml").write_text(POLICY, encoding="utf-8")
    first = commit_all(repo, "mlp v1")
    engine = env.services.engine
    watcher = Watcher(
        GitSource(repo),
        InProcessTransport(env.services.registry, engine),
        work_dir=env.settings.uploads_dir,
    )

    results = watcher.poll()

    pushed = _one(results, WatchOutcome.PUSHED)
    assert pushed.version == 1
    started = _one(results, WatchOutcome.ROLLOUT_STARTED)
    rollout = engine.wait(started.rollout or 0, 120)
    assert rollout.state is RolloutState.SUCCEEDED, rollout.reason
    labels = env.services.registry.get_version("mlp", 1).metadata.labels
    assert labels == {"git.commit": first, "git.path": "mlp"}
    v1_outputs = examples.reference_outputs(folder, {"INPUT0": FIXED_INPUT})["OUTPUT0"]
    assert np.allclose(infer(env.grpc_url), v1_outputs, rtol=1e-5)
    assert watcher.poll() == [], "nothing new: nothing pushed"

    # New weights for the same model folder: version 2 and its rollout.
    examples.build_mlp(repo, seed=2)
    second = commit_all(repo, "mlp v2: retrained")
    results = watcher.poll()
    assert _one(results, WatchOutcome.PUSHED).version == 2
    rollout = engine.wait(_one(results, WatchOutcome.ROLLOUT_STARTED).rollout or 0, 120)
    assert rollout.state is RolloutState.SUCCEEDED, rollout.reason
    assert (rollout.spec.version, rollout.from_version) == (2, 1)
    assert env.services.registry.get_version("mlp", 2).metadata.labels["git.commit"] == second
    v2_outputs = examples.reference_outputs(folder, {"INPUT0": FIXED_INPUT})["OUTPUT0"]
    assert not np.allclose(v1_outputs, v2_outputs)
    assert np.allclose(infer(env.grpc_url), v2_outputs, rtol=1e-5)

    # A broken configuration: reported, and nothing live moves.
    before = _live(env)
    config = folder / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: 16", "dims: 17"), encoding="utf-8")
    broken = commit_all(repo, "mlp: a config that does not fit the model")
    results = watcher.poll()
    rejected = _one(results, WatchOutcome.REJECTED)
    assert rejected.folder == "mlp"
    print(f"broken commit: {rejected.message} ({rejected.code})")
    assert "INPUT0" in rejected.message
    assert len(results) == 1
    assert _live(env) == before
    assert np.allclose(infer(env.grpc_url), v2_outputs, rtol=1e-5)
    events = [e for e in env.services.registry.events(limit=1000) if e.action == "watch.rejected"]
    assert [(e.target, e.details["git.commit"], e.details["code"]) for e in events] == [
        ("mlp", broken, rejected.code)
    ]
    assert watcher.poll() == [], "the broken commit is reported once"


# -- `controlplane up` follows a folder, `controlplane watch` a repository over the API ---------


@pytest.fixture(scope="module")
def watched_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    root = tmp_path_factory.mktemp("gitops-up")
    watched = root / "watched"
    watched.mkdir()
    running = start_stack(
        root / "state",
        env={"CONTROLPLANE_WATCH_PATH": str(watched), "CONTROLPLANE_WATCH_INTERVAL_SECONDS": "0.5"},
    )
    try:
        yield running, watched
    finally:
        running.stop()


def test_up_follows_its_watch_path_and_watch_once_pushes_a_repository_over_the_api(
    watched_stack: tuple[Stack, Path], tmp_path: Path
) -> None:
    stack, watched = watched_stack
    folder = examples.build_mlp(tmp_path / "build", seed=1)
    folder.rename(watched / "mlp")

    def registered() -> bool:
        with stack.client() as client:
            return client.get("/v1/models/mlp/versions").status_code == 200

    wait_until(registered, timeout=60)
    with stack.client() as client:
        version = client.get("/v1/models/mlp/versions/1").json()
    assert version["metadata"]["labels"] == {"source.path": str((watched / "mlp").resolve())}
    assert "watch: mlp pushed as mlp version 1" in stack.log()

    repo = new_repo(tmp_path / "repo")
    examples.build_mlp(repo, seed=3, name="other")
    commit = commit_all(repo, "other v1")
    done = stack.cli("watch", str(repo), "--once")
    assert done.returncode == 0, done.stderr
    assert "1 pushed" in done.stdout
    with stack.client() as client:
        other = client.get("/v1/models/other/versions/1").json()
    assert other["metadata"]["labels"] == {"git.commit": commit, "git.path": "other"}

    again = stack.cli("watch", str(repo), "--once")
    assert again.returncode == 0, again.stderr
    assert "1 unchanged" in again.stdout, "a new watcher pushes again; the registry knows the digest"
