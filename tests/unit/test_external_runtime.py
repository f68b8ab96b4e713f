"""The external runtime's own parts: pool addresses from settings, the admin key file, the proxy config."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from controlplane.errors import StartupFailed
from controlplane.runtime.external import ExternalStack, ensure_admin_key, parse_pools
from controlplane.traffic.haproxy import render_config


def test_pools_are_read_as_names_with_their_replica_hosts() -> None:
    assert parse_pools("blue=triton-blue-1,triton-blue-2;green=triton-green-1,triton-green-2") == {
        "blue": ("triton-blue-1", "triton-blue-2"),
        "green": ("triton-green-1", "triton-green-2"),
    }
    assert parse_pools(" blue = a , b ; ") == {"blue": ("a", "b")}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("", "no pool is configured"),
        ("blue", "not of the form pool=host"),
        ("blue=", "names no Triton host"),
        ("blue=a;blue=b", "named twice"),
        ("blue=a,a", "names a host twice"),
        ("bl ue=a", "not of the form"),
        ("blue=a b", "host"),
        ("blue=a,b;green=c", "same number of Triton hosts"),
        ("blue_r2=a", "pool name"),
    ],
)
def test_a_malformed_pool_list_is_refused_naming_the_problem(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        parse_pools(text)


def test_the_admin_key_is_made_once_and_then_only_read(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "triton-admin-key"

    first = ensure_admin_key(path)
    again = ensure_admin_key(path)

    assert first == again and len(first) >= 32
    # The Triton containers' user reads it; only the control plane writes it.
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_corrupt_admin_key_file_stops_the_start_instead_of_being_replaced(tmp_path: Path) -> None:
    path = tmp_path / "triton-admin-key"
    path.write_text("short\n")

    with pytest.raises(StartupFailed, match="does not hold a valid Triton admin key"):
        ensure_admin_key(path)
    assert path.read_text() == "short\n"


def _stack(root: Path) -> ExternalStack:
    return ExternalStack(
        root,
        pools={"blue": ("triton-blue",), "green": ("triton-green",)},
        host="0.0.0.0",
        grpc_port=8001,
        http_port=8002,
        admin_key_file=root / "secrets" / "key",
        proxy_config_file=root / "proxy" / "haproxy.cfg",
        admin_socket=root / "proxy" / "admin.sock",
        initial_weights={"blue": 100, "green": 0},
    )


def test_the_proxy_config_routes_to_the_configured_hosts_at_the_recorded_weights(tmp_path: Path) -> None:
    stack = _stack(tmp_path)

    stack.prepare()

    written = (tmp_path / "proxy" / "haproxy.cfg").read_text()
    assert written == render_config(stack.proxy_config())
    assert "server blue triton-blue:8001 proto h2 weight 100" in written
    assert "server green triton-green:8001 proto h2 weight 0" in written
    assert "http-request del-header x-controlplane-admin-key" in written
    assert (
        "bind 0.0.0.0:8001" in written and "stats socket " + str(tmp_path / "proxy" / "admin.sock") in written
    )
    assert stat.S_IMODE((tmp_path / "proxy" / "haproxy.cfg").stat().st_mode) == 0o600


def test_each_pool_gets_a_repository_the_triton_containers_can_read_and_the_key_they_share(
    tmp_path: Path,
) -> None:
    stack = _stack(tmp_path)

    stack.prepare()

    key = (tmp_path / "secrets" / "key").read_text().strip()
    blue = stack.pools["blue"]
    assert blue.grpc_urls == ["triton-blue:8001"] and blue.metrics_urls == ["http://triton-blue:8002"]
    assert blue.admin_headers["x-controlplane-admin-key"] == key
    assert stack.pools["green"].admin_headers == blue.admin_headers
    assert blue.repository.live == tmp_path / "pools" / "blue" / "repository"
    assert stat.S_IMODE(blue.repository.live.stat().st_mode) == 0o755


def test_preparing_again_leaves_an_unchanged_proxy_config_untouched(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    stack.prepare()
    config = tmp_path / "proxy" / "haproxy.cfg"
    before = config.stat().st_mtime_ns

    _stack(tmp_path).prepare()

    assert config.stat().st_mtime_ns == before
