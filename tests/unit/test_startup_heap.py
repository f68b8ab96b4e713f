"""What start-up built is frozen out of the garbage collector's generations before the API serves."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from controlplane.api.server import freeze_startup_heap


@pytest.fixture
def thawed() -> Iterator[None]:
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("thawed")
def test_objects_alive_at_start_up_are_no_longer_tracked_by_the_collectors_generations() -> None:
    built_at_start_up = [[n] for n in range(1000)]
    frozen_before = gc.get_freeze_count()
    freeze_startup_heap()
    assert gc.get_freeze_count() >= frozen_before + len(built_at_start_up)
