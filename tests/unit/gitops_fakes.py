"""An in-memory transport for the watcher: it stands for the registry and the rollout engine.

A push of an archive it holds already (same bytes: packing is deterministic)
is ``unchanged``, a new one is the model's next version; errors are injected
per model (pushes) or in order (rollouts).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.domain.gitops import RolloutPolicy, WatchOutcome
from controlplane.errors import ControlPlaneError
from controlplane.gitops.watcher import FolderResult

POLICY = b"strategy: bluegreen\nstep_seconds: 0\nbake_seconds: 0\ngates:\n  min_requests: 0\n"


@dataclass
class Push:
    model: str
    labels: dict[str, str]
    members: dict[str, bytes]


@dataclass
class FakeTransport:
    """Records pushes, rollouts and reports; numbers versions per model by archive digest."""

    pushes: list[Push] = field(default_factory=list)
    versions: dict[str, dict[str, int]] = field(default_factory=dict)
    rollouts: list[tuple[str, int, RolloutPolicy]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    push_errors: dict[str, ControlPlaneError] = field(default_factory=dict)
    rollout_errors: list[ControlPlaneError] = field(default_factory=list)

    def push(self, model: str, archive: Path, labels: Mapping[str, str]) -> tuple[int, bool]:
        if model in self.push_errors:
            raise self.push_errors[model]
        data = archive.read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = {
                m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile()
            }
        self.pushes.append(Push(model, dict(labels), members))
        known = self.versions.setdefault(model, {})
        digest = hashlib.sha256(data).hexdigest()
        if digest in known:
            return known[digest], False
        known[digest] = len(known) + 1
        return known[digest], True

    def start_rollout(self, model: str, number: int, policy: RolloutPolicy) -> int:
        if self.rollout_errors:
            raise self.rollout_errors.pop(0)
        self.rollouts.append((model, number, policy))
        return len(self.rollouts)

    def report_rejection(
        self, *, folder: str, outcome: WatchOutcome, error: ControlPlaneError, context: Mapping[str, Any]
    ) -> None:
        self.reports.append({"folder": folder, "outcome": outcome, "code": error.code, **context})


def outcomes(results: list[FolderResult]) -> list[tuple[str, WatchOutcome | None]]:
    return [(r.folder, r.outcome) for r in results]
