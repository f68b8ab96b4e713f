"""Unit tests for HAProxy config rendering, answer parsing and the runtime client.

The ``show ...`` fixtures below were captured from Debian's haproxy 2.6.12 in
front of two real tritonservers (pools "blue" and "green") while the module
was developed: blue drained and green at weight 0; blue killed with SIGKILL;
green put in maintenance on the HTTP backend with weight 7 on the gRPC one.
``fixtures/haproxy_show_{servers_state,stat}_two_replicas.txt`` are the same
haproxy's answers for two pools of two replicas each (``render_config``,
nothing listening behind them, so every server is DOWN): blue at 100 with
``set weight triton_grpc/blue_r2 50`` applied (a change half applied), green
at 0 with ``triton_http/green_r1`` drained.
"""

# Captured HAProxy output is kept verbatim, so its long lines stay long.
# ruff: noqa: E501

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controlplane.errors import ProxyError
from controlplane.traffic.haproxy import (
    GRPC_ALLOWED_METHODS,
    GRPC_BACKEND,
    HTTP_BACKEND,
    HAProxyRuntime,
    PoolEndpoint,
    ProxyConfig,
    ServerState,
    describe_exit,
    haproxy_command,
    parse_servers_state,
    parse_stat_csv,
    parse_table,
    pool_of_server,
    render_config,
    standby_name,
)
from controlplane.traffic.haproxy_config import (
    HTTP_ALL_MODEL_STATS,
    HTTP_ALLOWED_GET,
    HTTP_ALLOWED_POST,
    ReplicaEndpoint,
    proxy_threads_for,
)
from controlplane.traffic.router import HAProxyRouter

STATE_DRAIN = """\
1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
4 triton_grpc 1 blue 127.0.0.1 2 8 1 1 0 15 3 3 6 0 0 0 - 11001 - 0 11000 - - 11000
4 triton_grpc 2 green 127.0.0.1 2 0 0 1 2 15 3 3 6 0 0 0 - 12001 - 0 12000 - - 12000

"""
STATE_DOWN = """\
1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
4 triton_grpc 1 blue 127.0.0.1 0 0 1 1 2 8 2 0 6 0 0 0 - 11001 - 0 11000 - - 11000
4 triton_grpc 2 green 127.0.0.1 2 0 1 1 9 15 3 3 6 0 0 0 - 12001 - 0 12000 - - 12000
5 triton_http 1 blue 127.0.0.1 0 0 1 1 2 8 2 0 6 0 0 0 - 11000 - 0 0 - - 0
5 triton_http 2 green 127.0.0.1 2 0 1 1 9 15 3 3 6 0 0 0 - 12000 - 0 0 - - 0

"""
STAT_DOWN = """\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,
grpc_in,FRONTEND,,,1,1,4096,3,255073,120192,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,2,,,,0,977,0,0,0,0,,309,327,977,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,0,2,3,3,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,977,977,9,0,0,0,0,0,0,1,0,3,977,0,0,0,0,0,0,0,0,
http_in,FRONTEND,,,0,1,4096,1,376,361,0,0,0,,,,,OPEN,,,,,,,,,1,3,0,,,,0,0,0,1,,,,0,1,0,2,0,0,,0,3,3,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,0,1,1,2,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,3,363,340,0,0,
triton_grpc,blue,0,0,0,1,,192,2098,998,,0,,0,0,0,184,DOWN,1,1,0,2,1,2,2,,1,4,1,,192,,2,0,,184,L4CON,,0,0,8,0,0,0,0,,,,8,0,0,,,,,2,Connection refused,,0,1,1,1,,,,Layer4 connection problem,,2,2,0,,,,127.0.0.1:11001,,http,,,,,,,,0,185,7,,,0,,0,1,1,1,0,0,0,184,185,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
triton_grpc,green,0,0,0,1,,966,252135,118831,,0,,0,0,0,0,UP,1,1,0,0,0,9,0,,1,4,2,,966,,2,309,,327,L7OK,200,0,0,966,0,0,0,0,,,,966,0,0,,,,,0,,,0,0,0,3,,,,Layer7 check passed,,2,2,3,,,,127.0.0.1:12001,,http,,,,,,,,0,1,965,,,1,,1,1,5,11,0,0,1,0,2,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
triton_grpc,BACKEND,0,0,0,1,410,974,254233,119829,0,0,,0,0,0,184,UP,1,1,0,,1,7,0,,1,4,0,,1158,,1,309,,327,,,,0,974,0,0,0,0,,,,974,0,0,0,0,0,0,0,,,0,0,0,3,,,,,,,,,,,,,,http,roundrobin,,,,,,,0,186,972,0,0,,,1,1,5,11,0,,,,,1,0,0,0,-,0,0,0,2914,970,6,0,0,0,0,0,0,1,0,186,1158,0,0,38,38,1440,1056,0,0,
triton_http,blue,0,0,0,1,,1,108,71,,0,,0,0,0,0,DOWN,1,1,0,2,1,2,2,,1,5,1,,1,,2,0,,1,L4CON,,0,0,1,0,0,0,0,,,,1,0,0,,,,,7,Connection refused,,0,0,0,0,,,,Layer4 connection problem,,2,2,0,,,,127.0.0.1:11000,,http,,,,,,,,0,1,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
triton_http,green,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1,1,0,0,0,9,0,,1,5,2,,0,,2,0,,0,L7OK,200,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer7 check passed,,2,2,3,,,,127.0.0.1:12000,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
triton_http,BACKEND,0,0,0,1,410,1,108,71,0,0,,0,0,0,0,UP,1,1,0,,1,7,0,,1,5,0,,1,,1,0,,1,,,,0,1,0,0,0,0,,,,1,0,0,0,0,0,0,7,,,0,0,0,0,,,,,,,,,,,,,,http,roundrobin,,,,,,,0,1,0,0,0,,,0,0,0,0,0,,,,,1,0,0,0,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,39,39,1504,1157,0,0,
grpc_errors,BACKEND,0,0,0,0,1,0,0,0,0,0,,0,0,0,0,UP,0,0,0,,0,9,,,1,6,0,,0,,1,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,0,0,0,0,-1,,,0,0,0,0,,,,,,,,,,,,,,http,roundrobin,,,,,,,0,0,0,0,0,,,0,0,0,0,0,,,,,0,0,0,0,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
stats,FRONTEND,,,0,0,4096,0,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,7,0,,,,0,0,0,0,,,,0,0,0,0,0,0,,0,0,0,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,0,0,0,0,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,

"""
TABLE = """\
# table: grpc_errors, type: string, size:1024, used:2
0x7f55f4044a88: key=blue use=0 exp=0 http_req_cnt=2
0x561b5e5720e8: key=green use=0 exp=0 http_req_cnt=2

"""
STATE_MAINT = """\
1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
4 triton_grpc 1 blue 127.0.0.1 0 0 1 1 9 8 2 0 6 0 0 0 - 11001 - 0 11000 - - 11000
4 triton_grpc 2 green 127.0.0.1 2 0 7 1 16 15 3 3 6 0 0 0 - 12001 - 0 12000 - - 12000
5 triton_http 1 blue 127.0.0.1 0 0 1 1 9 8 2 0 6 0 0 0 - 11000 - 0 0 - - 0
5 triton_http 2 green 127.0.0.1 0 1 1 1 0 15 3 0 14 0 0 0 - 12000 - 0 0 - - 0

"""
TABLE_EMPTY = "# table: grpc_errors, type: string, size:1024, used:0\n\n"
FIXTURES = Path(__file__).parent / "fixtures"
STATE_TWO_REPLICAS = (FIXTURES / "haproxy_show_servers_state_two_replicas.txt").read_text()
STAT_TWO_REPLICAS = (FIXTURES / "haproxy_show_stat_two_replicas.txt").read_text()

# --------------------------------------------------------------------------
# Rendering


def _pools() -> tuple[PoolEndpoint, ...]:
    return (
        PoolEndpoint(name="blue", host="127.0.0.1", grpc_port=8001, http_port=8000, weight=100),
        PoolEndpoint(name="green", host="127.0.0.1", grpc_port=9001, http_port=9000, weight=0),
    )


def _cfg(**overrides: object) -> ProxyConfig:
    fields: dict[str, object] = {
        "grpc_bind": ("127.0.0.1", 7001),
        "http_bind": ("127.0.0.1", 7000),
        "admin_socket": Path("/run/cp/haproxy.sock"),
        "pools": _pools(),
    }
    fields.update(overrides)
    return ProxyConfig(**fields)  # type: ignore[arg-type]


def _section(text: str, header: str) -> list[str]:
    """Return the indented lines of the section that starts with ``header``."""
    lines = text.splitlines()
    start = lines.index(header)
    body: list[str] = []
    for line in lines[start + 1 :]:
        if not line.startswith("    "):
            break
        body.append(line.strip())
    return body


def test_global_section_exposes_admin_socket_with_admin_level() -> None:
    text = render_config(_cfg())
    glob = _section(text, "global")
    assert "stats socket /run/cp/haproxy.sock mode 600 level admin" in glob
    assert "maxconn 4096" in glob
    assert not any("expose-fd" in line for line in glob)
    assert not any(line.startswith("pidfile") for line in glob)


def test_defaults_set_http_mode_timeouts_and_retries() -> None:
    defaults = _section(render_config(_cfg()), "defaults")
    for line in (
        "mode http",
        "timeout connect 2s",
        "timeout client 60s",
        "timeout server 60s",
        "retries 3",
        "option redispatch 1",
        "retry-on conn-failure empty-response response-timeout",
    ):
        assert line in defaults


def test_grpc_side_speaks_h2_and_checks_health_on_the_http_port() -> None:
    text = render_config(_cfg())
    frontend = _section(text, "frontend grpc_in")
    assert "bind 127.0.0.1:7001 proto h2" in frontend
    assert f"default_backend {GRPC_BACKEND}" in frontend
    backend = _section(text, f"backend {GRPC_BACKEND}")
    assert "option httpchk GET /v2/health/ready" in backend
    assert "http-check expect status 200" in backend
    assert (
        "server blue 127.0.0.1:8001 proto h2 weight 100 check check-proto h1 port 8000"
        " inter 500 fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down"
    ) in backend
    assert (
        "server green 127.0.0.1:9001 proto h2 weight 0 check check-proto h1 port 9000"
        " inter 500 fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down"
    ) in backend


def test_grpc_calls_of_all_clients_share_connections_to_triton_unless_told_otherwise() -> None:
    assert "http-reuse always" in _section(render_config(_cfg()), f"backend {GRPC_BACKEND}")
    safe = render_config(_cfg(grpc_connection_reuse="safe"))
    assert "http-reuse safe" in _section(safe, f"backend {GRPC_BACKEND}")
    assert not any("http-reuse" in line for line in _section(safe, f"backend {HTTP_BACKEND}"))


def test_thread_count_is_haproxys_default_unless_set() -> None:
    assert not any("nbthread" in line for line in _section(render_config(_cfg()), "global"))
    assert "nbthread 1" in _section(render_config(_cfg(threads=1)), "global")


@pytest.mark.parametrize("threads", [0, 65, True, "2"])
def test_a_thread_count_haproxy_cannot_run_is_refused(threads: object) -> None:
    with pytest.raises(ValueError, match="threads"):
        _cfg(threads=threads)


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 1), (4, 1), (8, 2), (32, 8), (1024, 64)])
def test_the_proxy_takes_one_thread_per_four_cpus_it_shares_with_triton(cpus: int, threads: int) -> None:
    assert proxy_threads_for(cpus) == threads


def test_an_unknown_connection_reuse_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="grpc_connection_reuse"):
        _cfg(grpc_connection_reuse="aggressive; nbthread 64")


def test_http_side_uses_http_ports_with_same_pool_names_and_weights() -> None:
    text = render_config(_cfg())
    frontend = _section(text, "frontend http_in")
    assert "bind 127.0.0.1:7000" in frontend
    assert not any("proto h2" in line for line in frontend)
    assert f"default_backend {HTTP_BACKEND}" in frontend
    backend = _section(text, f"backend {HTTP_BACKEND}")
    assert "option httpchk GET /v2/health/ready" in backend
    observe = "observe layer4 error-limit 1 on-error mark-down"
    assert f"server blue 127.0.0.1:8000 weight 100 check inter 500 fall 2 rise 2 {observe}" in backend
    assert f"server green 127.0.0.1:9000 weight 0 check inter 500 fall 2 rise 2 {observe}" in backend
    assert not any("proto h2" in line for line in backend)


def test_grpc_frontend_forwards_only_allowlisted_post_calls() -> None:
    grpc = _section(render_config(_cfg()), "frontend grpc_in")
    acl = next(line for line in grpc if line.startswith("acl grpc_allowed "))
    assert acl.split()[:4] == ["acl", "grpc_allowed", "pathq", "-m"]
    assert acl.split()[4] == "str"
    assert tuple(acl.split()[5:]) == GRPC_ALLOWED_METHODS
    assert "acl grpc_call method POST" in grpc
    deny = (
        'http-request return status 200 hdr grpc-status 7 hdr grpc-message "this method is not'
        ' available through the proxy" unless grpc_call grpc_allowed'
    )
    # The deny comes before anything else the frontend does with a request.
    assert next(line for line in grpc if line.startswith("http-request")) == deny


def test_grpc_allowlist_holds_health_metadata_readiness_and_inference_only() -> None:
    service = "/inference.GRPCInferenceService/"
    assert set(GRPC_ALLOWED_METHODS) == {
        service + "ServerLive",
        service + "ServerReady",
        service + "ModelReady",
        service + "ServerMetadata",
        service + "ModelMetadata",
        service + "ModelInfer",
        service + "ModelStreamInfer",
        "/grpc.health.v1.Health/Check",
    }


def test_http_frontend_refuses_everything_but_allowlisted_get_and_post() -> None:
    http = _section(render_config(_cfg()), "frontend http_in")
    assert "acl get_request method GET" in http
    assert "acl post_request method POST" in http
    # Backslashes doubled: the config parser turns "\\\\" back into one.
    get_words = " ".join(p.replace("\\", "\\\\") for p in HTTP_ALLOWED_GET)
    post_words = " ".join(p.replace("\\", "\\\\") for p in HTTP_ALLOWED_POST)
    assert f"acl get_allowed path -m reg {get_words}" in http
    assert f"acl post_allowed path -m reg {post_words}" in http
    assert all(p.endswith(r"\z") for p in HTTP_ALLOWED_GET + HTTP_ALLOWED_POST)
    assert f"acl all_model_stats path -m str {HTTP_ALL_MODEL_STATS}" in http
    deny = (
        "http-request return status 403 content-type application/json"
        """ string '{"error":"this endpoint is not available through the proxy"}'"""
    )
    rules = [line for line in http if line.startswith("http-request")]
    assert rules[:2] == [
        f"{deny} if all_model_stats",
        f"{deny} unless get_request get_allowed || post_request post_allowed",
    ]


def _allowed(patterns: tuple[str, ...], path: str) -> bool:
    # HAProxy uses PCRE2; of these patterns only PCRE2's end anchor \z is spelled
    # differently in Python (\Z).
    return any(re.search(pattern.replace(r"\z", r"\Z"), path) for pattern in patterns)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/v2/models/mlp",
        "/v2/models/mlp/versions/12",
        "/v2/models/mlp/ready",
        "/v2/models/my.model-v2_b/versions/3/ready",
        "/v2/models/stats/ready",
    ],
)
def test_http_get_patterns_accept_health_metadata_and_readiness(path: str) -> None:
    assert _allowed(HTTP_ALLOWED_GET, path)
    assert not _allowed(HTTP_ALLOWED_POST, path)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/mlp/infer",
        "/v2/models/mlp/versions/2/infer",
        "/v2/models/mlp/generate",
        "/v2/models/mlp/versions/1/generate_stream",
    ],
)
def test_http_post_patterns_accept_inference_only(path: str) -> None:
    assert _allowed(HTTP_ALLOWED_POST, path)
    assert not _allowed(HTTP_ALLOWED_GET, path)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/mlp/config",
        "/v2/models/mlp/stats",
        "/v2/models/mlp/versions/1/stats",
        "/v2/models/mlp/trace/setting",
        "/v2/repository/index",
        "/v2/repository/models/mlp/load",
        "/v2/systemsharedmemory/status",
        "/v2/systemsharedmemory/region/r/register",
        "/v2/cudasharedmemory/status",
        "/v2/logging",
        "/v2/trace/setting",
        "/v2/",
        "//v2/health/ready",
        "/v2//health/ready",
        "/v2/health/ready/",
        "/V2/health/ready",
        "/v2/health/READY",
        "/v2/health%2Fready",
        "/v2/models/mlp%2Fconfig",
        "/v2/models/%2e%2e/repository/index",
        "/v2/models/../repository/index",
        "/v2/models/..",
        "/v2/models/./ready",
        "/v2/models/mlp/versions/one/infer",
        "/v2/models/mlp/versions//infer",
        "/v2/models/mlp/infer/",
        "/v2/models/mlp/infer\n",
        "/v2/models/m lp/ready",
        "/metrics",
        "",
    ],
)
def test_http_patterns_refuse_admin_endpoints_and_path_tricks(path: str) -> None:
    assert not _allowed(HTTP_ALLOWED_GET, path)
    assert not _allowed(HTTP_ALLOWED_POST, path)


def test_all_model_statistics_path_is_refused_although_it_looks_like_model_metadata() -> None:
    # Triton routes the exact path to every model's statistics before its model patterns.
    assert _allowed(HTTP_ALLOWED_GET, HTTP_ALL_MODEL_STATS)
    assert HTTP_ALL_MODEL_STATS == "/v2/models/stats"


def test_http_requests_with_a_chunked_body_are_answered_411_by_the_proxy() -> None:
    rules = [line for line in _section(render_config(_cfg()), "frontend http_in") if "411" in line]
    assert len(rules) == 1
    assert rules[0].endswith("if { req.hdr(transfer-encoding) -m found }")


def test_strip_request_headers_are_deleted_on_both_frontends() -> None:
    text = render_config(_cfg(strip_request_headers=("Triton-Admin-Key", "x-other")))
    for frontend in ("frontend grpc_in", "frontend http_in"):
        rules = [line for line in _section(text, frontend) if line.startswith("http-request")]
        assert "http-request del-header Triton-Admin-Key" in rules
        assert "http-request del-header x-other" in rules
    assert "del-header" not in render_config(_cfg())


@pytest.mark.parametrize(
    "headers",
    [("bad header",), ("x:y",), ("",), ("-x",), ("a" * 129,), ("x\ny",), "Triton-Admin-Key", (1,)],
)
def test_strip_request_headers_reject_names_unsafe_in_the_config(headers: object) -> None:
    with pytest.raises(ValueError):
        _cfg(strip_request_headers=headers)


def test_strip_request_headers_given_as_list_become_a_tuple() -> None:
    assert _cfg(strip_request_headers=["x-a"]).strip_request_headers == ("x-a",)


def test_each_pool_has_a_backup_standby_tracking_it_in_both_backends() -> None:
    text = render_config(_cfg())
    grpc = _section(text, f"backend {GRPC_BACKEND}")
    http = _section(text, f"backend {HTTP_BACKEND}")
    assert "option allbackups" in grpc
    assert "option allbackups" in http
    assert "server blue_standby 127.0.0.1:8001 proto h2 weight 1 backup track triton_grpc/blue" in grpc
    assert "server green_standby 127.0.0.1:9001 proto h2 weight 1 backup track triton_grpc/green" in grpc
    assert "server blue_standby 127.0.0.1:8000 weight 1 backup track triton_http/blue" in http
    assert "server green_standby 127.0.0.1:9000 weight 1 backup track triton_http/green" in http
    # A standby has no check of its own: it is UP, DOWN, drained exactly when its pool is.
    assert not any("_standby" in line and " check" in line for line in grpc + http)


def test_standby_names_map_back_to_their_pool() -> None:
    assert standby_name("blue") == "blue_standby"
    assert pool_of_server("blue_standby") == "blue"
    assert pool_of_server("blue") == "blue"
    assert len(standby_name("p" * 32)) == 40


def test_a_pool_name_that_looks_like_a_standby_is_refused() -> None:
    with pytest.raises(ValueError, match="_standby"):
        PoolEndpoint(name="blue_standby", host="127.0.0.1", grpc_port=1, http_port=2, weight=0)


def _two_replica_pools(blue_weight: int = 100, green_weight: int = 0) -> tuple[PoolEndpoint, ...]:
    return (
        PoolEndpoint.of_replicas(
            "blue",
            (ReplicaEndpoint("127.0.0.1", 8001, 8000), ReplicaEndpoint("127.0.0.2", 8011, 8010)),
            blue_weight,
        ),
        PoolEndpoint.of_replicas(
            "green",
            (ReplicaEndpoint("127.0.0.1", 9001, 9000), ReplicaEndpoint("127.0.0.2", 9011, 9010)),
            green_weight,
        ),
    )


def test_a_pool_of_two_replicas_has_a_checked_server_and_a_standby_per_replica_in_both_backends() -> None:
    text = render_config(_cfg(pools=_two_replica_pools()))
    grpc = [line for line in _section(text, f"backend {GRPC_BACKEND}") if line.startswith("server ")]
    http = [line for line in _section(text, f"backend {HTTP_BACKEND}") if line.startswith("server ")]
    observe = "observe layer4 error-limit 1 on-error mark-down"
    assert grpc[:4] == [
        "server blue_r1 127.0.0.1:8001 proto h2 weight 100 check check-proto h1 port 8000 inter 500 fall 2"
        f" rise 2 {observe}",
        "server blue_r1_standby 127.0.0.1:8001 proto h2 weight 1 backup track triton_grpc/blue_r1",
        "server blue_r2 127.0.0.2:8011 proto h2 weight 100 check check-proto h1 port 8010 inter 500 fall 2"
        f" rise 2 {observe}",
        "server blue_r2_standby 127.0.0.2:8011 proto h2 weight 1 backup track triton_grpc/blue_r2",
    ]
    assert http[:4] == [
        f"server blue_r1 127.0.0.1:8000 weight 100 check inter 500 fall 2 rise 2 {observe}",
        "server blue_r1_standby 127.0.0.1:8000 weight 1 backup track triton_http/blue_r1",
        f"server blue_r2 127.0.0.2:8010 weight 100 check inter 500 fall 2 rise 2 {observe}",
        "server blue_r2_standby 127.0.0.2:8010 weight 1 backup track triton_http/blue_r2",
    ]
    assert len(grpc) == len(http) == 8
    # No server is named after a pool alone: that name belongs to one-replica pools.
    assert not any(line.split()[1] in ("blue", "green") for line in grpc + http)


def test_a_one_replica_pool_keeps_the_pools_own_server_name() -> None:
    one = PoolEndpoint("blue", "127.0.0.1", 8001, 8000, 100)
    assert one.replicas == (ReplicaEndpoint("127.0.0.1", 8001, 8000),)
    assert [name for name, _r in one.servers] == ["blue"]
    same = PoolEndpoint.of_replicas("blue", (ReplicaEndpoint("127.0.0.1", 8001, 8000),), 100)
    assert render_config(_cfg(pools=(same,))) == render_config(_cfg(pools=(one,)))


@pytest.mark.parametrize(
    ("server", "pool"),
    [
        ("blue", "blue"),
        ("blue_standby", "blue"),
        ("blue_r1", "blue"),
        ("blue_r12", "blue"),
        ("blue_r2_standby", "blue"),
        ("canary-3_x_r1", "canary-3_x"),
        ("r1", "r1"),
        ("blue_rx", "blue_rx"),
    ],
)
def test_every_server_name_maps_back_to_its_pool(server: str, pool: str) -> None:
    assert pool_of_server(server) == pool


def test_pool_names_that_would_read_as_a_replica_or_a_standby_are_refused() -> None:
    for name in ("blue_r1", "blue_r10", "x_standby"):
        with pytest.raises(ValueError, match="must not end with"):
            PoolEndpoint(name=name, host="127.0.0.1", grpc_port=1, http_port=2, weight=0)
    PoolEndpoint(name="blue_rx", host="127.0.0.1", grpc_port=1, http_port=2, weight=0)


def test_pools_with_different_numbers_of_replicas_are_refused() -> None:
    two = _two_replica_pools()[0]
    one = PoolEndpoint("green", "127.0.0.1", 9001, 9000, 0)
    with pytest.raises(ValueError, match="same number of replicas"):
        _cfg(pools=(two, one))


@pytest.mark.parametrize(
    "replicas",
    [
        (ReplicaEndpoint("127.0.0.2", 8001, 8000),),
        (ReplicaEndpoint("127.0.0.1", 8001, 8000), ReplicaEndpoint("127.0.0.1", 8001, 8010)),
        (ReplicaEndpoint("127.0.0.1", 8001, 8000), ReplicaEndpoint("127.0.0.1", 8011, 8000)),
        tuple(ReplicaEndpoint("127.0.0.1", 8001 + i, 20000 + i) for i in range(65)),
        ("127.0.0.1",),
    ],
    ids=["not-the-pools-address", "shared-grpc", "shared-http", "too-many", "not-a-replica"],
)
def test_pool_replicas_must_start_at_the_pools_address_and_be_distinct(replicas: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        PoolEndpoint("blue", "127.0.0.1", 8001, 8000, 1, replicas)  # type: ignore[arg-type]


def test_grpc_errors_are_tracked_per_server_name_in_a_stick_table() -> None:
    text = render_config(_cfg())
    grpc = _section(text, f"backend {GRPC_BACKEND}")
    assert (
        "http-response track-sc0 srv_name table grpc_errors if { res.hdr(grpc-status) -m found }"
        " !{ res.hdr(grpc-status) -m str 0 }"
    ) in grpc
    table = _section(text, "backend grpc_errors")
    assert table == ["stick-table type string len 64 size 1k store http_req_cnt"]
    # Only the gRPC backend counts gRPC errors.
    assert not any("track-sc" in line for line in _section(text, f"backend {HTTP_BACKEND}"))


def test_optional_pidfile_and_stats_frontend() -> None:
    text = render_config(_cfg(pid_file=Path("/run/cp/haproxy.pid"), stats_bind=("127.0.0.1", 7002)))
    assert "pidfile /run/cp/haproxy.pid" in _section(text, "global")
    stats = _section(text, "frontend stats")
    assert "bind 127.0.0.1:7002" in stats
    assert "stats uri /stats" in stats
    assert "frontend stats" not in render_config(_cfg())


def test_health_path_can_be_liveness_instead_of_readiness() -> None:
    text = render_config(_cfg(health_path="/v2/health/live"))
    for backend in (GRPC_BACKEND, HTTP_BACKEND):
        assert "option httpchk GET /v2/health/live" in _section(text, f"backend {backend}")
    assert "/v2/health/ready" not in text


def test_ipv6_literals_are_bracketed() -> None:
    pools = (PoolEndpoint(name="blue", host="::1", grpc_port=8001, http_port=8000, weight=1),)
    text = render_config(_cfg(grpc_bind=("::1", 7001), pools=pools))
    assert "bind [::1]:7001 proto h2" in _section(text, "frontend grpc_in")
    assert any(
        line.startswith("server blue [::1]:8001 proto h2")
        for line in _section(text, f"backend {GRPC_BACKEND}")
    )


def test_pools_given_as_list_become_a_tuple() -> None:
    cfg = _cfg(pools=list(_pools()))
    assert isinstance(cfg.pools, tuple)
    assert hash(cfg) == hash(_cfg())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "blue green"},
        {"name": "blue;set"},
        {"name": ""},
        {"name": "x" * 33},
        {"host": ""},
        {"host": "bad host"},
        {"host": "a/b"},
        {"grpc_port": 0},
        {"grpc_port": 65536},
        {"http_port": -1},
        {"http_port": True},
        {"weight": -1},
        {"weight": 257},
        {"weight": 1.5},
    ],
)
def test_pool_endpoint_rejects_invalid_fields(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "name": "blue", "host": "127.0.0.1", "grpc_port": 8001, "http_port": 8000, "weight": 1,
    }  # fmt: skip
    fields.update(kwargs)
    with pytest.raises(ValueError):
        PoolEndpoint(**fields)  # type: ignore[arg-type]


def test_pool_endpoint_accepts_boundaries() -> None:
    PoolEndpoint(name="Pool_1-a", host="triton-blue.local", grpc_port=1, http_port=65535, weight=0)
    PoolEndpoint(name="b", host="10.0.0.1", grpc_port=8001, http_port=8000, weight=256)


@pytest.mark.parametrize(
    "overrides",
    [
        {"pools": ()},
        {"pools": (_pools()[0], _pools()[0])},
        {"pools": ("blue",)},
        {"grpc_bind": ("127.0.0.1", 0)},
        {"http_bind": ("127.0.0.1",)},
        {"http_bind": ("127.0.0.1", 7001)},
        {"stats_bind": ("127.0.0.1", 7000)},
        {"admin_socket": "/run/cp/haproxy.sock"},
        {"admin_socket": Path("/run/c p/haproxy.sock")},
        {"admin_socket": Path("/" + "s" * 120)},
        {"pid_file": Path("/run/#x.pid")},
        {"health_path": "/v2/repository/index"},
    ],
)
def test_proxy_config_rejects_invalid_fields(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _cfg(**overrides)


# --------------------------------------------------------------------------
# Parsing captured answers


def test_parse_servers_state_drain_and_weight_zero() -> None:
    states = {s.name: s for s in parse_servers_state(STATE_DRAIN)}
    blue, green = states["blue"], states["green"]
    assert (blue.backend, blue.addr, blue.port) == ("triton_grpc", "127.0.0.1", 11001)
    assert (blue.admin, blue.admin_flags, blue.weight) == ("drain", 8, 1)
    assert blue.operational == "running"
    assert blue.check_result == "passed"
    assert not blue.serving
    assert (green.admin, green.weight, green.initial_weight) == ("ready", 0, 1)
    assert not green.serving


def test_parse_servers_state_down_after_kill() -> None:
    states = parse_servers_state(STATE_DOWN)
    assert [(s.backend, s.name) for s in states] == [
        ("triton_grpc", "blue"), ("triton_grpc", "green"),
        ("triton_http", "blue"), ("triton_http", "green"),
    ]  # fmt: skip
    down = [s for s in states if s.name == "blue"]
    assert all(s.operational == "stopped" and s.check_result == "failed" for s in down)
    assert all(s.admin == "ready" for s in down)
    up = [s for s in states if s.name == "green"]
    assert all(s.serving for s in up)


def test_parse_servers_state_maint_and_changed_weight() -> None:
    states = {(s.backend, s.name): s for s in parse_servers_state(STATE_MAINT)}
    assert states[("triton_http", "green")].admin == "maint"
    assert states[("triton_http", "green")].operational == "stopped"
    assert states[("triton_grpc", "green")].weight == 7
    assert states[("triton_grpc", "green")].initial_weight == 1


def test_parse_stat_csv_server_rows() -> None:
    rows = parse_stat_csv(STAT_DOWN)
    servers = {(r.pxname, r.svname): r for r in rows if r.kind == "server"}
    assert set(servers) == {
        ("triton_grpc", "blue"), ("triton_grpc", "green"),
        ("triton_http", "blue"), ("triton_http", "green"),
    }  # fmt: skip
    blue = servers[("triton_grpc", "blue")]
    assert (blue.status, blue.check_status, blue.weight) == ("DOWN", "L4CON", 1)
    # Requests sent to blue after the kill were redispatched to green: none failed.
    assert (blue.stot, blue.wredis, blue.eresp, blue.hrsp_5xx) == (192, 184, 0, 0)
    green = servers[("triton_grpc", "green")]
    assert (green.status, green.check_status, green.scur, green.stot) == ("UP", "L7OK", 0, 966)
    assert green.hrsp_2xx == 966
    assert green.raw["addr"] == "127.0.0.1:12001"
    kinds = {(r.pxname, r.kind) for r in rows if r.kind != "server"}
    assert ("grpc_in", "frontend") in kinds
    assert ("triton_grpc", "backend") in kinds


def test_parse_table_counts_per_server() -> None:
    entries = parse_table(TABLE)
    assert {e.key: e.data for e in entries} == {
        "blue": {"http_req_cnt": 2},
        "green": {"http_req_cnt": 2},
    }
    assert parse_table(TABLE_EMPTY) == []


@pytest.mark.parametrize(
    ("parser", "answer"),
    [
        (parse_servers_state, "Can't find backend.\n\n"),
        (parse_stat_csv, "Unknown command\n"),
        (parse_table, "No such table\n\n"),
        (parse_servers_state, ""),
    ],
)
def test_parsers_reject_error_answers(parser: Callable[[str], object], answer: str) -> None:
    with pytest.raises(ValueError):
        parser(answer)


# --------------------------------------------------------------------------
# Runtime client against a fake admin socket


class FakeAdminSocket:
    """Answers one command per connection like HAProxy's non-interactive CLI."""

    def __init__(self, path: Path, answer: Callable[[str], str | None]) -> None:
        self.path = path
        self.answer = answer
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(8)
        self._sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                cmd = data.decode().strip()
                self.commands.append(cmd)
                reply = self.answer(cmd)
                if reply is None:
                    # Simulate a hung haproxy: keep the connection open, say nothing.
                    self._stop.wait(5)
                    continue
                conn.sendall(reply.encode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 107-byte limit of a Unix socket path.
    path = Path(tempfile.mkdtemp(prefix="hx", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(short_dir: Path) -> Iterator[Callable[[Callable[[str], str | None]], FakeAdminSocket]]:
    made: list[FakeAdminSocket] = []

    def make(answer: Callable[[str], str | None]) -> FakeAdminSocket:
        server = FakeAdminSocket(short_dir / f"admin{len(made)}.sock", answer)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def _answering(state: str) -> Callable[[str], str]:
    """An admin socket that knows the servers of ``state`` and accepts every setter."""
    return lambda cmd: state if cmd == "show servers state" else "\n"


def _setters(server: FakeAdminSocket) -> list[str]:
    return [cmd for cmd in server.commands if cmd.startswith("set ")]


def test_set_pool_weight_sets_both_backends(fake: Callable[..., FakeAdminSocket]) -> None:
    server = fake(_answering(STATE_DOWN))
    HAProxyRuntime(server.path).set_pool_weight("green", 25)
    assert _setters(server) == ["set weight triton_grpc/green 25", "set weight triton_http/green 25"]


def test_set_pool_state_sets_both_backends(fake: Callable[..., FakeAdminSocket]) -> None:
    server = fake(_answering(STATE_DOWN))
    HAProxyRuntime(server.path).set_pool_state("blue", "drain")
    assert _setters(server) == [
        "set server triton_grpc/blue state drain",
        "set server triton_http/blue state drain",
    ]


def test_a_pool_weight_moves_every_replica_server_found_in_the_proxy(
    fake: Callable[..., FakeAdminSocket],
) -> None:
    server = fake(_answering(STATE_TWO_REPLICAS))
    HAProxyRuntime(server.path).set_pool_weight("blue", 30)
    assert server.commands[0] == "show servers state"
    assert _setters(server) == [
        "set weight triton_grpc/blue_r1 30",
        "set weight triton_grpc/blue_r2 30",
        "set weight triton_http/blue_r1 30",
        "set weight triton_http/blue_r2 30",
    ]


def test_a_pool_state_reaches_every_replica_server_and_never_a_standby(
    fake: Callable[..., FakeAdminSocket],
) -> None:
    server = fake(_answering(STATE_TWO_REPLICAS))
    HAProxyRuntime(server.path).set_pool_state("green", "ready")
    assert _setters(server) == [
        f"set server {backend}/green_r{i} state ready"
        for backend in (GRPC_BACKEND, HTTP_BACKEND)
        for i in (1, 2)
    ]


def test_a_pool_the_proxy_does_not_have_is_an_error_before_any_change(
    fake: Callable[..., FakeAdminSocket],
) -> None:
    server = fake(_answering(STATE_TWO_REPLICAS))
    with pytest.raises(ProxyError, match="no server of pool 'purple'") as info:
        HAProxyRuntime(server.path).set_pool_weight("purple", 1)
    assert info.value.details["missing_backends"] == [GRPC_BACKEND, HTTP_BACKEND]
    assert _setters(server) == []


def test_a_refused_replica_says_which_servers_already_changed(fake: Callable[..., FakeAdminSocket]) -> None:
    server = fake(
        lambda cmd: (
            STATE_TWO_REPLICAS
            if cmd == "show servers state"
            else "No such server.\n\n"
            if cmd.endswith("blue_r2 0")
            else "\n"
        )
    )
    with pytest.raises(ProxyError) as info:
        HAProxyRuntime(server.path).set_pool_weight("blue", 0)
    assert info.value.details["applied_to"] == ["triton_grpc/blue_r1"]


class _CannedStates(HAProxyRuntime):
    """An HAProxyRuntime whose ``show servers state`` answers are captured text; setters are recorded."""

    def __init__(self, text: str) -> None:
        super().__init__(Path("/nonexistent/admin.sock"))
        self.text = text
        self.set: list[tuple[str, str, int]] = []

    def servers_state(self, backend: str | None = None) -> list[ServerState]:
        return [s for s in parse_servers_state(self.text) if backend is None or s.backend == backend]

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        self.set.append((backend, server, weight))
        self.text = "\n".join(
            re.sub(r"^(\d+ \S+ \d+ \S+ \S+ \d+ \d+ )\d+", rf"\g<1>{weight}", line)
            if line.split()[1:2] == [backend] and line.split()[3:4] == [server]
            else line
            for line in self.text.splitlines()
        )


def test_router_weights_are_one_per_pool_and_a_split_pool_is_left_out_until_set_again() -> None:
    runtime = _CannedStates(STATE_TWO_REPLICAS)
    router = HAProxyRouter(runtime)
    # blue_r2 at 50 on the gRPC side, blue_r1 at 100: blue has no one weight.
    assert router.weights() == {"green": 0}

    router.set_weights({"blue": 100, "green": 0})

    assert router.weights() == {"blue": 100, "green": 0}
    assert {(b, s) for b, s, w in runtime.set if w == 100} == {
        (backend, f"blue_r{i}") for backend in (GRPC_BACKEND, HTTP_BACKEND) for i in (1, 2)
    }


def test_a_pool_is_up_only_when_every_replica_server_is() -> None:
    up = "2 0 {w} {w} 5 15 3 3 6"
    lines = STATE_DRAIN.splitlines()
    text = "\n".join(
        [
            *lines[:2],
            f"4 triton_grpc 1 blue_r1 127.0.0.1 {up.format(w=1)} 0 0 0 - 11001 - 0 11000 - - 11000",
            f"4 triton_grpc 2 blue_r2 127.0.0.1 {up.format(w=1)} 0 0 0 - 11011 - 0 11010 - - 11010",
            # green_r2 failed its last check and is down.
            "4 triton_grpc 3 green_r1 127.0.0.1 2 0 0 0 5 15 3 3 6 0 0 0 - 12001 - 0 12000 - - 12000",
            "4 triton_grpc 4 green_r2 127.0.0.1 0 0 0 0 5 8 2 0 6 0 0 0 - 12011 - 0 12010 - - 12010",
        ]
    )
    router = HAProxyRouter(_CannedStates(text + "\n"))
    assert router.pool_up("blue")
    assert not router.pool_up("green")
    assert not router.pool_up("purple")


def _two_replica_stat_with_scur(busy: dict[str, int]) -> str:
    header, *rows = STAT_TWO_REPLICAS.splitlines()
    index = header[2:].split(",").index("scur")
    patched = []
    for row in rows:
        cols = row.split(",")
        if len(cols) > index and f"{cols[0]}/{cols[1]}" in busy:
            cols[index] = str(busy[f"{cols[0]}/{cols[1]}"])
        patched.append(",".join(cols))
    return "\n".join([header, *patched]) + "\n"


def test_a_pool_is_idle_only_once_every_replica_and_standby_is(fake: Callable[..., FakeAdminSocket]) -> None:
    answers = iter(
        [
            _two_replica_stat_with_scur({"triton_grpc/blue_r2": 2, "triton_http/blue_r1_standby": 1}),
            _two_replica_stat_with_scur({"triton_http/blue_r1_standby": 1}),
            _two_replica_stat_with_scur({"triton_grpc/green_r1": 5}),
        ]
    )
    server = fake(lambda cmd: next(answers))
    sleeps: list[float] = []
    HAProxyRuntime(server.path).wait_pool_idle("blue", timeout=10, poll_interval=0.5, sleep=sleeps.append)
    # Green's busy server is not blue's business.
    assert sleeps == [0.5, 0.5]


def test_waiting_for_a_pool_the_statistics_lack_fails(fake: Callable[..., FakeAdminSocket]) -> None:
    server = fake(lambda cmd: STAT_TWO_REPLICAS)
    with pytest.raises(ProxyError, match="no server of pool purple"):
        HAProxyRuntime(server.path).wait_pool_idle("purple", timeout=1)


def test_refusal_names_command_and_answer(fake: Callable[..., FakeAdminSocket]) -> None:
    server = fake(lambda cmd: "No such server.\n\n")
    with pytest.raises(ProxyError) as info:
        HAProxyRuntime(server.path).set_weight("triton_grpc", "nope", 3)
    assert "set weight triton_grpc/nope 3" in str(info.value)
    assert "No such server." in str(info.value)
    assert info.value.code == "proxy_error"
    assert info.value.details["answer"] == "No such server.\n\n"


def test_partial_pool_change_says_which_backend_changed(
    fake: Callable[..., FakeAdminSocket],
) -> None:
    server = fake(
        lambda cmd: (
            STATE_DOWN
            if cmd == "show servers state"
            else "No such server.\n\n"
            if "triton_http" in cmd
            else "\n"
        )
    )
    with pytest.raises(ProxyError) as info:
        HAProxyRuntime(server.path).set_pool_weight("blue", 0)
    assert "triton_grpc" in str(info.value)
    assert info.value.details["applied_to"] == ["triton_grpc/blue"]


def test_command_raises_on_unknown_command(fake: Callable[..., FakeAdminSocket]) -> None:
    server = fake(
        lambda cmd: "Unknown command, but maybe one of the following ones is a better match:\n  help\n\n"
    )
    with pytest.raises(ProxyError, match="Unknown command"):
        HAProxyRuntime(server.path).command("bogus")


def test_command_returns_answer_text(fake: Callable[..., FakeAdminSocket]) -> None:
    server = fake(lambda cmd: "1 (initial 1)\n\n")
    assert HAProxyRuntime(server.path).command("get weight triton_grpc/blue") == "1 (initial 1)\n\n"


def test_command_refuses_chained_commands(fake: Callable[..., FakeAdminSocket]) -> None:
    server = fake(lambda cmd: "\n")
    runtime = HAProxyRuntime(server.path)
    for bad in ("show stat; show info", "show stat\nshow info"):
        with pytest.raises(ValueError):
            runtime.command(bad)
    assert server.commands == []


def test_invalid_arguments_are_rejected_before_sending(
    fake: Callable[..., FakeAdminSocket],
) -> None:
    server = fake(lambda cmd: "\n")
    runtime = HAProxyRuntime(server.path)
    with pytest.raises(ValueError):
        runtime.set_weight("triton_grpc", "blue", 300)
    with pytest.raises(ValueError):
        runtime.set_state("triton_grpc", "blue", "down")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        runtime.set_pool_weight("blue/x", 1)
    assert server.commands == []


def test_servers_state_and_error_counts_parse_answers(fake: Callable[..., FakeAdminSocket]) -> None:
    answers = {"show servers state triton_grpc": STATE_DRAIN, "show table grpc_errors": TABLE}
    server = fake(lambda cmd: answers.get(cmd, "Unknown command\n"))
    runtime = HAProxyRuntime(server.path)
    assert [s.name for s in runtime.servers_state("triton_grpc")] == ["blue", "green"]
    assert runtime.grpc_error_counts() == {"blue": 2, "green": 2}


def test_unexpected_show_answer_raises(fake: Callable[..., FakeAdminSocket]) -> None:
    server = fake(lambda cmd: "Can't find backend.\n\n")
    with pytest.raises(ProxyError, match="Can't find backend"):
        HAProxyRuntime(server.path).servers_state("nope")


def test_missing_socket_raises_proxy_error(short_dir: Path) -> None:
    with pytest.raises(ProxyError, match="does not exist"):
        HAProxyRuntime(short_dir / "none.sock").command("show info")


def test_stale_socket_file_raises_proxy_error(short_dir: Path) -> None:
    path = short_dir / "stale.sock"
    # Bound but never listening: what a crashed haproxy leaves behind.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        with pytest.raises(ProxyError, match="refused"):
            HAProxyRuntime(path).command("show info")


def test_silent_haproxy_times_out(fake: Callable[..., FakeAdminSocket]) -> None:
    server = fake(lambda cmd: None)
    with pytest.raises(ProxyError, match="timed out"):
        HAProxyRuntime(server.path, timeout=0.2).command("show info")


def _stat_with_scur(scur: int) -> str:
    header, *rows = STAT_DOWN.splitlines()
    fields = header[2:].split(",")
    index = fields.index("scur")
    patched = []
    for row in rows:
        cols = row.split(",")
        if cols[:2] == ["triton_grpc", "green"]:
            cols[index] = str(scur)
        patched.append(",".join(cols))
    return "\n".join([header, *patched]) + "\n"


def test_wait_until_idle_polls_until_no_request_in_flight(
    fake: Callable[..., FakeAdminSocket],
) -> None:
    answers = iter([_stat_with_scur(3), _stat_with_scur(1), _stat_with_scur(0)])
    server = fake(lambda cmd: next(answers))
    sleeps: list[float] = []
    HAProxyRuntime(server.path).wait_until_idle(
        "triton_grpc", "green", timeout=10, poll_interval=0.5, sleep=sleeps.append
    )
    assert sleeps == [0.5, 0.5]


def test_wait_until_idle_times_out_with_in_flight_count(
    fake: Callable[..., FakeAdminSocket],
) -> None:
    server = fake(lambda cmd: _stat_with_scur(2))
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(ProxyError, match="still busy") as info:
        HAProxyRuntime(server.path).wait_until_idle(
            "triton_grpc", "green", timeout=1, poll_interval=0.25, clock=lambda: now[0], sleep=sleep
        )
    assert info.value.details["busy"] == {"triton_grpc/green": 2}


def test_wait_until_idle_unknown_server(fake: Callable[..., FakeAdminSocket]) -> None:
    server = fake(lambda cmd: STAT_DOWN)
    with pytest.raises(ProxyError, match="no server triton_grpc/purple"):
        HAProxyRuntime(server.path).wait_until_idle("triton_grpc", "purple", timeout=1)


def test_haproxy_command_runs_one_process_in_foreground() -> None:
    argv = haproxy_command(Path("/etc/cp/haproxy.cfg"), binary=Path("/usr/sbin/haproxy"))
    assert argv == ["/usr/sbin/haproxy", "-db", "-f", "/etc/cp/haproxy.cfg"]


@pytest.mark.parametrize(
    ("returncode", "words"),
    [
        (0, "gracefully"),
        (-signal.SIGTERM, "SIGTERM"),
        (-signal.SIGUSR1, "before it had finished starting"),
        (-signal.SIGSEGV, "died on SIGSEGV"),
        (1, "refused to start"),
        (3, "status 3"),
    ],
)
def test_describe_exit_explains_status(returncode: int, words: str) -> None:
    assert words in describe_exit(returncode)


def test_with_a_dns_resolver_a_host_that_does_not_resolve_yet_does_not_stop_the_proxy_from_starting() -> None:
    text = render_config(_cfg(dns_resolver=("127.0.0.11", 53)))

    assert _section(text, "resolvers pool_hosts")[0] == "nameserver dns1 127.0.0.11:53"
    assert "default-server init-addr last,libc,none resolvers pool_hosts resolve-prefer ipv4" in _section(
        text, "defaults"
    )
    assert "resolvers" not in render_config(_cfg()), "hosts resolve once at start without one"


def test_a_rendered_config_with_a_resolver_and_unresolvable_hosts_passes_haproxys_own_check(
    tmp_path: Path,
) -> None:
    haproxy = shutil.which("haproxy", path="/usr/sbin:/usr/bin")
    if haproxy is None:
        pytest.skip("haproxy is not installed")
    pools = (
        PoolEndpoint(name="blue", host="triton-blue.invalid", grpc_port=8001, http_port=8000, weight=100),
        PoolEndpoint(name="green", host="triton-green.invalid", grpc_port=8001, http_port=8000, weight=0),
    )
    path = tmp_path / "haproxy.cfg"
    path.write_text(
        render_config(_cfg(pools=pools, dns_resolver=("127.0.0.1", 53), admin_socket=tmp_path / "a.sock"))
    )

    checked = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)

    assert checked.returncode == 0, checked.stderr
