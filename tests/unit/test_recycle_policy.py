"""When an idle pool is due for a recycle."""

from __future__ import annotations

from controlplane.domain.recycling import RecyclePolicy, recycle_due


def test_an_inactive_policy_never_recycles() -> None:
    assert not RecyclePolicy().active
    assert recycle_due(RecyclePolicy(), loads=10_000, memory_bytes=10**12) is None


def test_the_load_budget_is_spent_at_exactly_its_number_of_loads() -> None:
    policy = RecyclePolicy(after_loads=3)
    assert recycle_due(policy, loads=2, memory_bytes=None) is None
    assert recycle_due(policy, loads=3, memory_bytes=None) == "3 loads since its Tritons started (policy: 3)"


def test_memory_counts_only_above_the_threshold_and_only_when_it_could_be_measured() -> None:
    policy = RecyclePolicy(above_bytes=1000)
    assert recycle_due(policy, loads=0, memory_bytes=1000) is None
    assert recycle_due(policy, loads=0, memory_bytes=None) is None
    assert recycle_due(policy, loads=0, memory_bytes=1001) == "1001 bytes in use (policy: above 1000)"
