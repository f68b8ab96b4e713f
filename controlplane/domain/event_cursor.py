"""Where a reader of the audit log stands, so that a live stream neither skips nor repeats an event.

Audit event ids are taken when a row is inserted, but rows become visible
when their transaction commits: on PostgreSQL a transaction that began
earlier can commit after a later one, so id 12 may be readable before id 11.
A reader that jumped to 12 would never see 11. The cursor therefore stops at
a missing id and waits for it, up to ``gap_grace`` seconds: a transaction
that rolled back leaves a hole for good (PostgreSQL sequences do not roll
back), and the stream must not stall on it. SQLite writers are serial and
reuse no id, so there it never waits. Pure logic; the caller brings the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_GAP_GRACE_SECONDS = 2.0


@dataclass
class EventCursor:
    """The last id delivered (``after``) and how long the next missing id has been waited for."""

    after: int
    gap_grace: float = DEFAULT_GAP_GRACE_SECONDS
    _gap_since: float | None = field(default=None, repr=False)

    def take(self, ids: Sequence[int], now: float) -> int:
        """How many of ``ids`` (ascending, all above ``after``) to deliver now; moves ``after`` past them."""
        taken = 0
        for event_id in ids:
            if event_id <= self.after:
                raise ValueError(f"event id {event_id} is not after {self.after}")
            if event_id != self.after + 1:
                if self._gap_since is None:
                    self._gap_since = now
                if now - self._gap_since < self.gap_grace:
                    break
            self._gap_since = None
            self.after = event_id
            taken += 1
        return taken
