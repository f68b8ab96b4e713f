"""How many threads the stack's HAProxy runs: the setting, else a share of the CPUs it may use."""

from __future__ import annotations

import os
from pathlib import Path

from controlplane.runtime.wiring import proxy_threads
from controlplane.settings import Settings
from controlplane.traffic.haproxy_config import proxy_threads_for


def test_the_setting_decides_the_proxy_thread_count(tmp_path: Path) -> None:
    assert proxy_threads(Settings(state_dir=tmp_path, proxy_threads=3)) == 3


def test_without_the_setting_the_proxy_takes_a_thread_per_four_usable_cpus(tmp_path: Path) -> None:
    expected = proxy_threads_for(len(os.sched_getaffinity(0)))
    assert proxy_threads(Settings(state_dir=tmp_path)) == expected
