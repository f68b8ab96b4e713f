"""The watcher: each poll, push the folders whose content changed and roll out their new versions.

A folder is handled once per content (fingerprint): pushed (a new version,
or ``unchanged`` when the registry holds the same digest already) or
rejected. A rejection is logged, counted and reported (an audit event where
the transport can write one) once, and the folder is not tried again until
its content changes. Failures that may pass (the API unreachable, git busy,
a folder still being written) leave the folder to the next poll. A version
that was created and whose folder has ``rollout.yaml`` is rolled out; while
another rollout holds the pools it waits for the next poll. Nothing a folder
holds stops the watcher or the other folders.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.gitops import POLICY_FILE, RolloutPolicy, WatchLimits, WatchOutcome, changed_folders
from controlplane.domain.models import validate_model_name
from controlplane.errors import ControlPlaneError
from controlplane.gitops.policy_file import load_policy
from controlplane.gitops.sources import (
    DEFAULT_LIMITS,
    DirectorySource,
    FolderCandidate,
    GitSource,
    ModelSource,
)
from controlplane.metrics import REGISTRY

log = logging.getLogger("controlplane.watch")

WATCH_FOLDERS = Counter(
    "controlplane_watch_folders_total",
    "Watched model folders handled, by outcome (pushed, unchanged, rejected, rollout_started, "
    "rollout_refused).",
    ["outcome"],
    registry=REGISTRY,
)


class WatchTransport(Protocol):
    """Where the watcher pushes versions and starts rollouts (the REST API, or this process's services)."""

    def push(self, model: str, archive: Path, labels: Mapping[str, str]) -> tuple[int, bool]:
        """Push ``archive`` as a version of ``model``; return its number and whether it was created."""

    def start_rollout(self, model: str, number: int, policy: RolloutPolicy) -> int:
        """Start rolling out ``model`` ``number``; return the rollout's id."""

    def report_rejection(
        self, *, folder: str, outcome: WatchOutcome, error: ControlPlaneError, context: Mapping[str, Any]
    ) -> None:
        """Record a refused folder or rollout where operators read such things (the audit log).

        ``context`` says where the content came from (the version's labels, the version refused).
        """


@dataclass(frozen=True)
class FolderResult:
    """What one poll did with one folder, or with the rollout of its version."""

    folder: str
    outcome: WatchOutcome | None
    """None: nothing was decided yet, the next poll tries again."""
    message: str
    version: int | None = None
    rollout: int | None = None
    code: str | None = None


@dataclass(frozen=True)
class _PendingRollout:
    folder: str
    number: int
    policy: RolloutPolicy


def open_source(
    path: Path, *, git: bool = False, branch: str | None = None, limits: WatchLimits = DEFAULT_LIMITS
) -> ModelSource:
    """The source for ``path``: its git branch when asked or when it has ``.git``, else its files."""
    if git or branch or (path / ".git").exists():
        return GitSource(path, branch=branch, limits=limits)
    return DirectorySource(path, limits=limits)


class Watcher:
    """Polls a source and hands new content to a transport; one instance per watched root."""

    def __init__(
        self, source: ModelSource, transport: WatchTransport, *, work_dir: Path | None = None
    ) -> None:
        self.source = source
        self.transport = transport
        self.work_dir = work_dir
        # Folder -> fingerprint of the content last pushed or rejected: not handled again until it changes.
        self.handled: dict[str, str] = {}
        # Model -> a created version whose rollout could not start yet.
        self.pending: dict[str, _PendingRollout] = {}
        # What was last logged for a retried problem, so a lasting one is logged once, not every poll.
        self._last_said: dict[str, str] = {}

    def poll(self) -> list[FolderResult]:
        """One pass: push what changed, then start the rollouts that are due."""
        try:
            candidates = {c.name: c for c in self.source.scan()}
        except ControlPlaneError as exc:
            self._say_once(
                "", logging.WARNING, "watch: cannot read %s: %s", self.source.description, exc.message
            )
            return [self._rollout(model) for model in sorted(self.pending)]
        self._last_said.pop("", None)
        for gone in set(self.handled) - set(candidates):
            del self.handled[gone]
        fingerprints = {name: c.fingerprint for name, c in candidates.items()}
        results: list[FolderResult] = []
        for name in changed_folders(self.handled, fingerprints):
            results.append(self._handle(candidates[name]))
        results.extend(self._rollout(model) for model in sorted(self.pending))
        return results

    def run(self, stop: threading.Event, *, interval: float) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set; nothing a poll meets ends the loop.

        What each poll did is logged (and counted) as it happens.
        """
        log.info("watch: following %s every %g s", self.source.description, interval)
        while not stop.is_set():
            try:
                self.poll()
            except Exception:
                # A fault of the watcher itself: logged, and the next poll starts afresh.
                log.exception("watch: a poll of %s failed unexpectedly", self.source.description)
            stop.wait(interval)

    # -- one folder ----------------------------------------------------------------------------

    def _handle(self, candidate: FolderCandidate) -> FolderResult:
        try:
            model = validate_model_name(candidate.name)
            with tempfile.TemporaryDirectory(prefix="watch-", dir=self.work_dir) as tmp:
                staged = Path(tmp) / candidate.name
                staged.mkdir()
                policy_text = self.source.export(candidate, staged)
                policy = (
                    load_policy(policy_text, file=f"{candidate.where}/{POLICY_FILE}", model=model)
                    if policy_text is not None
                    else None
                )
                archive = pack_directory(staged, Path(tmp) / "model.tar.gz")
                number, created = self.transport.push(model, archive, candidate.labels)
        except ControlPlaneError as exc:
            if exc.retryable:
                return self._later(candidate, exc)
            return self._reject(candidate, exc)
        except OSError as exc:
            error = ControlPlaneError(f"{candidate.where} cannot be read: {exc}", code="folder_unreadable")
            return self._reject(candidate, error)
        except Exception as exc:
            log.exception("watch: %s failed unexpectedly", candidate.where)
            return self._reject(
                candidate, ControlPlaneError(f"{candidate.where}: {type(exc).__name__}: {exc}")
            )
        self.handled[candidate.name] = candidate.fingerprint
        self._last_said.pop(candidate.name, None)
        outcome = WatchOutcome.PUSHED if created else WatchOutcome.UNCHANGED
        WATCH_FOLDERS.labels(outcome.value).inc()
        origin = ", ".join(f"{k}={v}" for k, v in sorted(candidate.labels.items()))
        what = "pushed as" if created else "unchanged: already"
        message = f"{candidate.where} {what} {model} version {number} ({origin})"
        log.info("watch: %s", message)
        if created:
            # The folder's newest content decides: a policy rolls this version out, none only registers it.
            self.pending.pop(model, None)
            if policy is not None:
                self.pending[model] = _PendingRollout(candidate.where, number, policy)
        return FolderResult(candidate.where, outcome, message, version=number)

    def _later(self, candidate: FolderCandidate, exc: ControlPlaneError) -> FolderResult:
        message = f"{candidate.where} is tried again at the next poll: {exc.message}"
        self._say_once(candidate.name, logging.WARNING, "watch: %s", message)
        return FolderResult(candidate.where, None, message, code=exc.code)

    def _reject(self, candidate: FolderCandidate, exc: ControlPlaneError) -> FolderResult:
        self.handled[candidate.name] = candidate.fingerprint
        self._last_said.pop(candidate.name, None)
        origin = ", ".join(f"{k}={v}" for k, v in sorted(candidate.labels.items()))
        message = f"{candidate.where} rejected ({origin}): {exc.message}"
        self._report(candidate.where, WatchOutcome.REJECTED, exc, message, dict(candidate.labels))
        return FolderResult(candidate.where, WatchOutcome.REJECTED, message, code=exc.code)

    # -- rollouts ------------------------------------------------------------------------------

    def _rollout(self, model: str) -> FolderResult:
        pending = self.pending[model]
        try:
            rollout_id = self.transport.start_rollout(model, pending.number, pending.policy)
        except ControlPlaneError as exc:
            if exc.retryable:
                message = (
                    f"rollout of {model} version {pending.number} waits: {exc.message}; "
                    "it is tried again at the next poll"
                )
                self._say_once(f"rollout:{model}", logging.INFO, "watch: %s", message)
                return FolderResult(pending.folder, None, message, version=pending.number, code=exc.code)
            return self._refuse_rollout(model, pending, exc)
        except Exception as exc:
            log.exception("watch: the rollout of %s version %d failed unexpectedly", model, pending.number)
            return self._refuse_rollout(model, pending, ControlPlaneError(f"{type(exc).__name__}: {exc}"))
        del self.pending[model]
        self._last_said.pop(f"rollout:{model}", None)
        WATCH_FOLDERS.labels(WatchOutcome.ROLLOUT_STARTED.value).inc()
        strategy = pending.policy.strategy.value
        # Requested, not necessarily started: a model that requires approval holds it until approved.
        message = f"rollout {rollout_id} of {model} version {pending.number} requested ({strategy})"
        log.info("watch: %s", message)
        return FolderResult(
            pending.folder, WatchOutcome.ROLLOUT_STARTED, message, version=pending.number, rollout=rollout_id
        )

    def _refuse_rollout(self, model: str, pending: _PendingRollout, exc: ControlPlaneError) -> FolderResult:
        del self.pending[model]
        self._last_said.pop(f"rollout:{model}", None)
        message = f"rollout of {model} version {pending.number} ({pending.folder}) refused: {exc.message}"
        self._report(pending.folder, WatchOutcome.ROLLOUT_REFUSED, exc, message, {"version": pending.number})
        return FolderResult(
            pending.folder, WatchOutcome.ROLLOUT_REFUSED, message, version=pending.number, code=exc.code
        )

    # -- reporting -----------------------------------------------------------------------------

    def _report(
        self,
        folder: str,
        outcome: WatchOutcome,
        exc: ControlPlaneError,
        message: str,
        context: Mapping[str, Any],
    ) -> None:
        WATCH_FOLDERS.labels(outcome.value).inc()
        log.warning("watch: %s (%s)", message, exc.code)
        try:
            self.transport.report_rejection(folder=folder, outcome=outcome, error=exc, context=context)
        except Exception as report_error:  # noqa: BLE001 - a report that fails must not stop the watcher
            log.warning("watch: could not record the refusal of %s: %s", folder, report_error)

    def _say_once(self, key: str, level: int, fmt: str, *args: Any) -> None:
        text = fmt % args
        if self._last_said.get(key) != text:
            self._last_said[key] = text
            log.log(level, text)
