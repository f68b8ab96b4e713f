"""Who may take over or adopt a pool's claim, and how a process's identity tells it is gone."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

from controlplane.claims import owner_alive, process_identity
from controlplane.domain.claims import Claim, Holder, HolderKind, Lease, may_adopt, may_take_over

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
ME = Lease(owner="me", seconds=30, owner_alive=lambda owner: owner != "dead")


def _claim(kind: HolderKind, *, owner: str = "other", lease_left: float = 10.0) -> Claim:
    return Claim(
        "blue", Holder(kind, "1"), owner, NOW - timedelta(seconds=5), NOW + timedelta(seconds=lease_left)
    )


def test_a_deploy_or_repair_is_taken_over_only_once_its_owner_is_gone() -> None:
    for kind in (HolderKind.DEPLOY, HolderKind.REPAIR):
        assert not may_take_over(_claim(kind), now=NOW, lease=ME)
        assert may_take_over(_claim(kind, lease_left=0), now=NOW, lease=ME)
        assert may_take_over(_claim(kind, owner="dead"), now=NOW, lease=ME)


def test_a_rollout_is_never_taken_over_even_when_its_owner_is_gone() -> None:
    assert not may_take_over(_claim(HolderKind.ROLLOUT, owner="dead", lease_left=-60), now=NOW, lease=ME)


def test_a_rollout_is_adopted_by_its_own_owner_or_once_its_owner_is_gone() -> None:
    assert may_adopt(_claim(HolderKind.ROLLOUT, owner="me"), now=NOW, lease=ME)
    assert may_adopt(_claim(HolderKind.ROLLOUT, lease_left=0), now=NOW, lease=ME)
    assert may_adopt(_claim(HolderKind.ROLLOUT, owner="dead"), now=NOW, lease=ME)
    assert not may_adopt(_claim(HolderKind.ROLLOUT), now=NOW, lease=ME)


def test_an_own_claim_whose_lease_ran_out_can_be_taken_again() -> None:
    assert may_take_over(_claim(HolderKind.DEPLOY, owner="me", lease_left=0), now=NOW, lease=ME)
    assert not may_take_over(_claim(HolderKind.DEPLOY, owner="me"), now=NOW, lease=ME)


def test_this_process_is_alive_and_a_vanished_pid_of_this_host_is_not() -> None:
    me = process_identity()
    host, pid, started, _instance = me.split(":")
    assert pid == str(os.getpid()) and host == socket.gethostname()
    assert owner_alive(me)
    assert not owner_alive(f"{host}:{pid}:{int(started) + 1}:x"), "same pid, another start time: reused"
    assert not owner_alive(f"{host}:999999999:1:x")


def test_an_owner_on_another_host_or_unreadable_is_presumed_alive() -> None:
    assert owner_alive("some-other-host:1:1:x")
    assert owner_alive("not an identity")
