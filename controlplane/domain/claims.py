"""Pool claims: which operation may change a pool right now.

A pool is changed (folders, loaded models, weights it takes) by at most one
operation at a time: a rollout of any strategy (a deploy is an inplace
rollout, a rollback a blue-green one), a reconciler repair, a recycle or a tuning run.
The operation holds the pool's claim from the transaction that creates it
to the one that ends it.

A claim names its holder (kind and id), the control-plane process that drives
it (``owner``) and until when that process vouches for it (``lease_until``,
renewed while the process lives). Who may take a claimed pool over:

- nobody, while the owner renews its lease;
- for a repair or a recycle whose owner died (lease run out, or the owner was a process
  on this host that no longer exists): any new operation, which deletes the
  stale claim and takes the pool; what the dead repair left half-done is the
  next repair's to finish, under its own claim;
- for a rollout: no other operation, ever, until the rollout ends; a control
  plane whose owner died *adopts* the claim and resumes the rollout from its
  recorded state.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class HolderKind(enum.StrEnum):
    ROLLOUT = "rollout"
    DEPLOY = "deploy"
    """Taken by deploys of earlier releases (deploys are inplace rollouts now); taken over like a repair's."""
    REPAIR = "repair"
    RECYCLE = "recycle"
    """A restart of an idle pool's Triton(s) to give back memory; taken over like a repair's."""
    TUNE = "tune"
    """A tuning run measuring batching configurations on an idle pool; taken over like a repair's."""


@dataclass(frozen=True)
class Holder:
    """The operation that holds (or wants) a claim."""

    kind: HolderKind
    id: str

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"


@dataclass(frozen=True)
class Claim:
    pool: str
    holder: Holder
    owner: str
    taken_at: datetime
    lease_until: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.holder.kind.value,
            "id": self.holder.id,
            "owner": self.owner,
            "taken_at": self.taken_at.isoformat(),
            "lease_until": self.lease_until.isoformat(),
        }


def _always_alive(_owner: str) -> bool:
    return True


@dataclass(frozen=True)
class Lease:
    """Who takes a claim, for how long, and how to tell whether another owner still lives."""

    owner: str
    seconds: float = 30.0
    owner_alive: Callable[[str], bool] = _always_alive
    """False only when it is certain that the process named by an owner string is gone."""


def abandoned(claim: Claim, *, now: datetime, lease: Lease) -> bool:
    """Whether the process driving ``claim`` is gone (its lease ran out, or it is known dead)."""
    if claim.lease_until <= now:
        return True
    return claim.owner != lease.owner and not lease.owner_alive(claim.owner)


def may_take_over(claim: Claim, *, now: datetime, lease: Lease) -> bool:
    """Whether a new operation may delete ``claim`` and take the pool: a deploy or repair nobody drives."""
    return claim.holder.kind is not HolderKind.ROLLOUT and abandoned(claim, now=now, lease=lease)


def may_adopt(claim: Claim, *, now: datetime, lease: Lease) -> bool:
    """Whether ``lease.owner`` may drive the operation holding ``claim`` (its own, or an abandoned one)."""
    return claim.owner == lease.owner or abandoned(claim, now=now, lease=lease)
