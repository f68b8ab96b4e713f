"""When an idle pool's Tritons are due for a restart (recycle), by the operator's policy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecyclePolicy:
    """Recycle an idle pool after ``after_loads`` loads, or above ``above_bytes`` of memory (0: never)."""

    after_loads: int = 0
    above_bytes: int = 0

    @property
    def active(self) -> bool:
        return self.after_loads > 0 or self.above_bytes > 0


def recycle_due(policy: RecyclePolicy, *, loads: int, memory_bytes: int | None) -> str | None:
    """Why a pool without traffic should be recycled now, or None."""
    if policy.after_loads > 0 and loads >= policy.after_loads:
        return f"{loads} loads since its Tritons started (policy: {policy.after_loads})"
    if policy.above_bytes > 0 and memory_bytes is not None and memory_bytes > policy.above_bytes:
        return f"{memory_bytes} bytes in use (policy: above {policy.above_bytes})"
    return None
