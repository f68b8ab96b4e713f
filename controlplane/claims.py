"""This process's side of pool claims: who it is, and a lease it keeps renewing while it lives.

Why leases and process identities: a repair interrupted by a crash has
nothing to finish that the next pass does not already do (it compares every
pool with its recorded release and reinstalls), so all that must be
recovered is the pool itself; a rollout (deploys are inplace rollouts) is
resumed by whoever adopts its claims. A claim therefore carries its owner, a string
naming this host, pid, the pid's start time and a random instance id, and a
lease that a background thread here renews every third of its length for
every operation this process drives. The claim of a dead owner is free to
take over as soon as either
- its lease has run out (any host; ``lease_seconds`` after the last renewal), or
- its owner was a process on this host that no longer exists (at once: a
  ``controlplane up`` restarted after kill -9 does not wait for the lease).

Rollouts are never taken over: the next owner adopts their claim and resumes
them (``RolloutEngine.resume``). Clocks of control planes sharing one
database must agree to well within a lease.

Concurrency: thread-safe; one instance may serve every thread of a process.
Instances are independent owners, even inside one process (tests run two
"processes" as two instances).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from sqlalchemy.orm import Session

from controlplane.domain.claims import Claim, Holder, HolderKind, Lease
from controlplane.errors import ControlPlaneError, PoolBusy
from controlplane.procfs import read_stat
from controlplane.registry import claim_store
from controlplane.registry.db import Database

log = logging.getLogger(__name__)

T = TypeVar("T")


def process_identity() -> str:
    """``host:pid:start-time:instance`` of the caller, unique across hosts, pid reuse and instances."""
    stat = read_stat(os.getpid())
    started = stat.start_time if stat is not None else 0
    return f"{socket.gethostname()}:{os.getpid()}:{started}:{secrets.token_hex(4)}"


def owner_alive(owner: str) -> bool:
    """False only when ``owner`` names a process of this host that has exited (or whose pid was reused)."""
    try:
        host, pid, started, _instance = owner.rsplit(":", 3)
        pid_number, start_time = int(pid), int(started)
    except ValueError:
        return True
    if host != socket.gethostname():
        return True
    stat = read_stat(pid_number)
    return stat is not None and not stat.exited and stat.start_time == start_time


class PoolClaims:
    """Takes, renews and ends the claims of the operations this process drives."""

    def __init__(self, db: Database, *, lease_seconds: float = 30.0, owner: str | None = None) -> None:
        self.db = db
        self.lease = Lease(owner=owner or process_identity(), seconds=lease_seconds, owner_alive=owner_alive)
        self._driving: set[Holder] = set()
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    @property
    def owner(self) -> str:
        return self.lease.owner

    def take(self, session: Session, pools: Iterable[str], holder: Holder) -> list[Claim]:
        """Claim ``pools`` for ``holder`` in the caller's transaction and keep its lease while it runs.

        PoolBusy (409) names the operation in the way. Call ``done`` when the
        operation has ended, whether or not the transaction committed.
        """
        claims = claim_store.take(session, pools, holder=holder, lease=self.lease)
        self.drive(holder)
        return claims

    def release(self, session: Session, holder: Holder) -> list[str]:
        """End ``holder``'s claims in the caller's transaction; return the pools it still held."""
        pools = claim_store.release(session, holder)
        self.done(holder)
        return pools

    def end(self, holder: Holder) -> None:
        """Release ``holder``'s claims in a transaction of their own; if the database refuses, the
        lease runs out by itself (logged), so an ending operation never fails on its release."""
        try:
            with self.db.transaction() as session:
                self.release(session, holder)
        except ControlPlaneError as exc:
            log.warning("releasing the claim of %s: %s; its lease will run out", holder, exc.message)
        finally:
            self.done(holder)

    def adopt(self, holder: Holder) -> bool:
        """Drive an operation whose owner is gone (or is this instance); False if another still drives it."""
        with self.db.transaction() as session:
            adopted = claim_store.adopt(session, holder, lease=self.lease)
        if adopted:
            self.drive(holder)
        return adopted

    def drive(self, holder: Holder) -> None:
        """Renew ``holder``'s lease from now on."""
        with self._mutex:
            self._driving.add(holder)
            if self._keeper is None or not self._keeper.is_alive():
                self._stop.clear()
                self._keeper = threading.Thread(target=self._keep, name="claim-leases", daemon=True)
                self._keeper.start()

    def done(self, holder: Holder) -> None:
        """Stop renewing ``holder``'s lease (its claims are gone, or will lapse)."""
        with self._mutex:
            self._driving.discard(holder)

    def let_go(self, holder: Holder) -> None:
        """Stop driving an operation that has not ended, so that the next owner may adopt it at once."""
        self.done(holder)
        try:
            with self.db.transaction() as session:
                claim_store.let_go(session, holder, lease=self.lease)
        except Exception as exc:  # noqa: BLE001 - the lease then runs out by itself
            log.warning("letting go of %s: %s", holder, exc)

    def renew_now(self) -> int:
        """Renew the leases of every operation this instance drives; return how many claims."""
        with self._mutex:
            driving = list(self._driving)
        if not driving:
            return 0
        with self.db.transaction() as session:
            return claim_store.renew(session, driving, lease=self.lease)

    def close(self) -> None:
        """Stop renewing; operations still driven let go of their claims."""
        with self._mutex:
            driving = list(self._driving)
        for holder in driving:
            self.let_go(holder)
        self._stop.set()

    def _keep(self) -> None:
        while not self._stop.wait(self.lease.seconds / 3):
            try:
                self.renew_now()
            except Exception:
                # A database blip must not end the renewals; the next one may well succeed.
                log.warning("renewing pool claim leases failed; retrying", exc_info=True)


ALL_KINDS = frozenset(HolderKind)


def patiently(
    attempt: Callable[[], T],
    *,
    timeout: float,
    behind: frozenset[HolderKind] = frozenset({HolderKind.REPAIR}),
    poll: float = 0.1,
) -> T:
    """Run ``attempt`` (which takes claims in a transaction of its own) again while a holder of a kind
    in ``behind`` is in the way, for up to ``timeout`` seconds.

    By default only a reconciler repair is waited out: it holds a pool for
    one install at most, so a request waits for it instead of failing; any
    other holder is answered at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except PoolBusy as exc:
            kind = (exc.details or {}).get("holder", {}).get("kind")
            if kind not in {k.value for k in behind} or time.monotonic() > deadline:
                raise
        time.sleep(poll)
