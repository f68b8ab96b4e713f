"""The embedded runtime with several tritonservers per pool: ``runtime.json`` and the stack's layout.

Nothing is started here: ``plan_runtime`` is pure and a ``LocalStack`` is
only constructed (ports planned, pools and proxy configuration laid out).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.runtime.local import LocalStack
from controlplane.runtime.state import (
    PoolState,
    ProxyState,
    ReplicaPorts,
    RuntimeState,
    RuntimeStateError,
    load_state,
    plan_runtime,
    save_state,
)
from controlplane.traffic.haproxy import GRPC_BACKEND, render_config

PROXY = ProxyState("127.0.0.1", 8001, 8002)
OLD_FILE = {
    "format": 1,
    "proxy": {"host": "127.0.0.1", "grpc_port": 8001, "http_port": 8002},
    "pools": {
        "blue": {
            "http_port": 40001,
            "grpc_port": 40002,
            "metrics_port": 40003,
            "shm_prefix": "cpabc_blue_",
            "initial_weight": 1,
        },
        "green": {
            "http_port": 40004,
            "grpc_port": 40005,
            "metrics_port": 40006,
            "shm_prefix": "cpabc_green_",
            "initial_weight": 0,
        },
    },
}


def _counting_ports(start: int = 50000) -> Callable[[int, frozenset[int]], list[int]]:
    def free(count: int, exclude: frozenset[int]) -> list[int]:
        return [p for p in range(start, start + count + len(exclude)) if p not in exclude][:count]

    return free


def _no_free_ports(count: int, exclude: frozenset[int]) -> list[int]:
    raise AssertionError("no new ports should be needed")


def test_a_runtime_json_from_before_replicas_reads_as_one_replica_per_pool_and_is_rewritten_unchanged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runtime.json"
    path.write_text(json.dumps(OLD_FILE, indent=2) + "\n")
    state = load_state(path)
    assert state is not None
    assert state.pools["blue"].replicas == (ReplicaPorts(40001, 40002, 40003),)
    assert state.pools["blue"].replica_shm_prefix(1) == "cpabc_blue_"

    planned = plan_runtime(
        state, pool_names=("blue", "green"), tag="abc", proxy=PROXY, free_ports=_no_free_ports, replicas=1
    )
    save_state(path, planned)

    assert planned == state
    assert json.loads(path.read_text()) == OLD_FILE


def test_two_replicas_keep_the_first_replicas_ports_and_key_and_get_fresh_ports_for_the_second(
    tmp_path: Path,
) -> None:
    previous = RuntimeState(
        pools={"blue": PoolState(40001, 40002, 40003, "cpabc_blue_", 1, admin_key="k" * 43)}, proxy=PROXY
    )

    planned = plan_runtime(
        previous, pool_names=("blue",), tag="abc", proxy=PROXY, free_ports=_counting_ports(), replicas=2
    )

    blue = planned.pools["blue"]
    assert blue.replicas == (ReplicaPorts(40001, 40002, 40003), ReplicaPorts(50000, 50001, 50002))
    assert (blue.shm_prefix, blue.admin_key, blue.initial_weight) == ("cpabc_blue_", "k" * 43, 1)
    path = tmp_path / "runtime.json"
    save_state(path, planned)
    doc = json.loads(path.read_text())["pools"]["blue"]
    assert (doc["http_port"], doc["grpc_port"], doc["metrics_port"]) == (40001, 40002, 40003)
    assert doc["extra_replicas"] == [{"http_port": 50000, "grpc_port": 50001, "metrics_port": 50002}]
    assert load_state(path) == planned
    # Planned again from what was written, nothing moves.
    assert (
        plan_runtime(
            load_state(path),
            pool_names=("blue",),
            tag="abc",
            proxy=PROXY,
            free_ports=_no_free_ports,
            replicas=2,
        )
        == planned
    )


def test_fewer_replicas_drop_the_extra_ones_ports() -> None:
    two = PoolState(40001, 40002, 40003, "cpabc_blue_").with_replicas(
        [ReplicaPorts(40001, 40002, 40003), ReplicaPorts(40011, 40012, 40013)]
    )
    planned = plan_runtime(
        RuntimeState(pools={"blue": two}),
        pool_names=("blue",),
        tag="abc",
        proxy=PROXY,
        free_ports=_no_free_ports,
        replicas=1,
    )
    assert planned.pools["blue"].replicas == (ReplicaPorts(40001, 40002, 40003),)


def test_explicit_ports_give_each_replica_of_each_pool_three_consecutive_ports() -> None:
    planned = plan_runtime(
        None,
        pool_names=("blue", "green"),
        tag="abc",
        proxy=PROXY,
        ports_base=30000,
        free_ports=_no_free_ports,
        replicas=2,
    )
    assert planned.pools["blue"].ports == tuple(range(30000, 30006))
    assert planned.pools["green"].ports == tuple(range(30006, 30012))


def test_each_replica_of_several_has_a_shm_prefix_no_other_replica_or_pool_starts_with() -> None:
    planned = plan_runtime(
        None, pool_names=("a", "a_b"), tag="abc", proxy=PROXY, free_ports=_counting_ports(), replicas=2
    )
    prefixes = [pool.replica_shm_prefix(i) for pool in planned.pools.values() for i in (1, 2)]
    assert prefixes[:2] == ["cpabc_a_r1_", "cpabc_a_r2_"]
    for one in prefixes:
        assert [other for other in prefixes if other != one and other.startswith(one)] == []


def test_two_replicas_sharing_a_port_are_refused(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(OLD_FILE))
    doc["pools"]["blue"]["extra_replicas"] = [{"http_port": 40001, "grpc_port": 40011, "metrics_port": 40012}]
    path = tmp_path / "runtime.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(RuntimeStateError, match="two replicas of pool blue"):
        load_state(path)


def test_a_local_stack_of_two_replicas_per_pool_lays_out_urls_files_and_proxy_servers(tmp_path: Path) -> None:
    stack = LocalStack(
        tmp_path / "state",
        host="127.0.0.1",
        grpc_port=8001,
        http_port=8002,
        pool_names=("blue", "green"),
        ports_base=31000,
        initial_weights={"blue": 100, "green": 0},
        triton_user=None,
        pool_replicas=2,
    )

    blue = stack.pools["blue"]
    assert blue.grpc_urls == ["127.0.0.1:31001", "127.0.0.1:31004"]
    assert blue.metrics_urls == ["http://127.0.0.1:31002", "http://127.0.0.1:31005"]
    assert blue.grpc_url == blue.grpc_urls[0]
    assert [r.pid_file.name for r in blue.replicas] == ["tritonserver-r1.pid", "tritonserver-r2.pid"]
    assert [r.log_path.name for r in blue.replicas] == ["triton-r1.log", "triton-r2.log"]
    assert len({r.shm_prefix for p in stack.pools.values() for r in p.replicas}) == 4
    config = render_config(stack.proxy_config())
    grpc_servers = [
        line.split()[1]
        for line in config.split(f"\nbackend {GRPC_BACKEND}\n")[1].split("\n\n")[0].splitlines()
        if line.strip().startswith("server ")
    ]
    assert grpc_servers == [
        f"{pool}_r{i}{standby}" for pool in ("blue", "green") for i in (1, 2) for standby in ("", "_standby")
    ]
    assert "server blue_r2 127.0.0.1:31004 proto h2 weight 100 check check-proto h1 port 31003" in config


def test_a_local_stack_of_one_replica_per_pool_keeps_the_names_it_always_had(tmp_path: Path) -> None:
    stack = LocalStack(
        tmp_path / "state",
        host="127.0.0.1",
        grpc_port=8001,
        http_port=8002,
        pool_names=("blue",),
        ports_base=32000,
        triton_user=None,
    )
    (blue,) = stack.pools["blue"].replicas
    assert (blue.pid_file.name, blue.log_path.name) == ("tritonserver.pid", "triton.log")
    assert blue.shm_prefix == stack.pools["blue"].shm_prefix
    assert "    server blue 127.0.0.1:32001 proto h2" in render_config(stack.proxy_config())
