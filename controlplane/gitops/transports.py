"""The two ways the watcher reaches the registry and the rollout engine.

``HttpTransport`` talks to a running control plane's REST API with a token
(``controlplane watch``); ``InProcessTransport`` calls the services of this
process (``controlplane up`` with CONTROLPLANE_WATCH_PATH). Both turn every
failure into a ControlPlaneError whose ``retryable`` tells the watcher
whether the next poll should try again.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from controlplane.domain.gitops import RolloutPolicy, WatchOutcome
from controlplane.domain.models import VersionMetadata
from controlplane.errors import ControlPlaneError
from controlplane.rollout.engine import RolloutEngine
from controlplane.services import audit
from controlplane.services.registry import Registry

WATCHER_ACTOR = "watcher"
# Answers that may change without anything the watcher sends changing: asked again at the next poll.
_RETRYABLE_STATUS = frozenset({401, 403, 408, 429})


class HttpTransport:
    """Pushes and rollouts through ``POST /v1/models/{m}/versions`` and ``POST /v1/rollouts``.

    Rejections are not reported separately: the API audits the refused push
    itself, and offers no endpoint to record anything else.
    """

    def __init__(self, api: str, *, token: str | None = None, client: httpx.Client | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.api = api
        self.client = client or httpx.Client(
            base_url=api, timeout=httpx.Timeout(600.0, connect=5.0), headers=headers
        )

    def close(self) -> None:
        self.client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ControlPlaneError(
                f"cannot reach the control plane at {self.api}: {exc}", code="api_unreachable", retryable=True
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code < 400:
            return body
        error = body.get("error", {}) if isinstance(body, dict) else {}
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code") or f"http_{response.status_code}")
        message = str(error.get("message") or response.text.strip()[:500] or response.reason_phrase)
        retryable = (
            response.status_code >= 500 or response.status_code in _RETRYABLE_STATUS or code == "pool_busy"
        )
        raise ControlPlaneError(message, code=code, details=error.get("details"), retryable=retryable)

    def push(self, model: str, archive: Path, labels: Mapping[str, str]) -> tuple[int, bool]:
        params = [("label", f"{name}={value}") for name, value in sorted(labels.items())]
        with open(archive, "rb") as body:
            result = self._call(
                "POST",
                f"/v1/models/{model}/versions",
                params=params,
                content=body,
                headers={"content-type": "application/gzip"},
            )
        return int(result["version"]), bool(result["created"])

    def start_rollout(self, model: str, number: int, policy: RolloutPolicy) -> int:
        result = self._call("POST", "/v1/rollouts", json=policy.as_request(model, number))
        return int(result["id"])

    def report_rejection(
        self, *, folder: str, outcome: WatchOutcome, error: ControlPlaneError, context: Mapping[str, Any]
    ) -> None:
        """Nothing to send: see the class's docstring."""


class InProcessTransport:
    """Pushes through the registry service and rollouts through the engine of this process."""

    def __init__(self, registry: Registry, engine: RolloutEngine, *, actor: str = WATCHER_ACTOR) -> None:
        self.registry = registry
        self.engine = engine
        self.actor = actor

    def push(self, model: str, archive: Path, labels: Mapping[str, str]) -> tuple[int, bool]:
        version, created = self.registry.push(
            model=model, archive=archive, metadata=VersionMetadata(labels=dict(labels)), actor=self.actor
        )
        return version.number, created

    def start_rollout(self, model: str, number: int, policy: RolloutPolicy) -> int:
        return self.engine.start(policy.spec(model, number), actor=self.actor).id

    def report_rejection(
        self, *, folder: str, outcome: WatchOutcome, error: ControlPlaneError, context: Mapping[str, Any]
    ) -> None:
        """A ``watch.rejected`` audit event: the error's code and message, and where the folder came from."""
        audit.record(
            self.registry.db,
            actor=self.actor,
            action="watch.rejected",
            target=folder,
            outcome=outcome.value,
            details={"code": error.code, "message": error.message, **context},
        )
