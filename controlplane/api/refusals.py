"""Every 401 and 403 is counted, logged and audited; the audit rows are rate-limited.

A flood of refused requests must stay visible (the metric counts every one)
without filling the disk: audit rows pass through a token bucket, and the
next row written after a gap says how many were suppressed. Token values are
never recorded, only the token's name when it was valid.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from controlplane.domain.limits import has_control_characters
from controlplane.domain.ratelimit import TokenBucket
from controlplane.errors import ControlPlaneError
from controlplane.metrics import AUTH_REFUSALS
from controlplane.registry import store
from controlplane.registry.db import Database

log = logging.getLogger("controlplane.auth")

AUDIT_ACTION = "auth.refused"
_MAX_PATH = 300


def printable(text: str, limit: int = _MAX_PATH) -> str:
    """``text`` cut to ``limit`` characters with control characters shown as '?' (logs and audit rows)."""
    cut = text[:limit]
    if has_control_characters(cut):
        cut = "".join("?" if has_control_characters(c) else c for c in cut)
    return cut


class RefusalRecorder:
    """Counts, logs and (rate-limited) audits refused requests."""

    def __init__(
        self,
        db: Database,
        *,
        burst: int = 20,
        per_second: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self._clock = clock
        self._bucket = TokenBucket(burst=burst, rate=per_second, clock=clock)
        self._lock = threading.Lock()

    def set_rate(self, *, burst: int, per_second: float) -> None:
        """Change the audit rate limit (a fresh, full bucket)."""
        with self._lock:
            self._bucket = TokenBucket(burst=burst, rate=per_second, clock=self._clock)

    def record(self, *, status: int, reason: str, actor: str, method: str, path: str, client: str) -> None:
        """Count, log and maybe audit one refusal. Blocking (database): call it from a worker thread."""
        AUTH_REFUSALS.labels(str(status), reason).inc()
        shown_path = printable(path)
        log.warning(
            "refused %s %s from %s: %d %s (actor %s)", method, shown_path, client, status, reason, actor
        )
        with self._lock:
            admission = self._bucket.take()
        if not admission.allowed:
            return
        details: dict[str, object] = {"method": method, "status": status, "client": client, "reason": reason}
        if admission.suppressed:
            details["suppressed"] = admission.suppressed
        try:
            with self.db.transaction() as session:
                store.append_event(
                    session, actor=actor, action=AUDIT_ACTION, target=shown_path, outcome="refused",
                    details=details,
                )
        except ControlPlaneError as exc:
            # The refusal stands either way; losing its audit row must not turn it into a 5xx.
            log.warning(
                "could not audit a refusal (%s); %d earlier refusals were suppressed",
                exc.code,
                admission.suppressed,
            )
