"""HAProxy as the traffic router between Triton pools.

This module is the import point for the rest of the control plane; it
re-exports the configuration side (``haproxy_config``: pure rendering) and the
runtime side (``haproxy_runtime``: admin-socket client), and says how to run
the binary. Process supervision lives elsewhere (``controlplane.runtime``).

How to run it (``haproxy_command``): ``haproxy -db -f CONFIG``, one process in
the foreground, so the supervisor's child *is* the proxy and its stderr
(server UP/DOWN events, alerts, why it refused to start) is the supervisor's.

* SIGUSR1: soft stop. Listeners close, open streams finish (bounded by
  ``hard-stop-after`` in the rendered config), then exit status 0.
* SIGTERM: hard stop, open connections cut; the process ends by the signal
  (``Popen.returncode == -15``). ``describe_exit`` turns a status into words.
* Any signal works from the first instant: before HAProxy installs its
  handlers, the default action of both signals also ends the process.

Not ``-W`` (master-worker), though it prints friendlier exit messages and can
reload in place: measured here with 2.6.12, the master re-executes itself just
after printing "Loading success." and during that window (~15 ms) a SIGUSR1
is lost: 10 of 10 sent right after that line left haproxy running. Not
``-Ws`` either: besides the same race it would send sd_notify READY to
whatever ``NOTIFY_SOCKET`` the control plane inherited. Weight and state
changes need no reload (runtime API); a configuration change means a restart.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from controlplane.errors import ProxyError
from controlplane.traffic.haproxy_config import (
    GRPC_ALLOWED_METHODS,
    GRPC_BACKEND,
    GRPC_ERROR_TABLE,
    GRPC_FRONTEND,
    HTTP_BACKEND,
    HTTP_FRONTEND,
    POOL_BACKENDS,
    PoolEndpoint,
    ProxyConfig,
    ReplicaEndpoint,
    is_standby,
    pool_of_server,
    render_config,
    replica_server_names,
    standby_name,
)
from controlplane.traffic.haproxy_runtime import (
    AdminState,
    HAProxyRuntime,
    ServerState,
    StatRow,
    TableEntry,
    parse_servers_state,
    parse_stat_csv,
    parse_table,
)

__all__ = [
    "GRPC_ALLOWED_METHODS",
    "GRPC_BACKEND",
    "GRPC_ERROR_TABLE",
    "GRPC_FRONTEND",
    "HTTP_BACKEND",
    "HTTP_FRONTEND",
    "POOL_BACKENDS",
    "AdminState",
    "HAProxyRuntime",
    "PoolEndpoint",
    "ProxyConfig",
    "ReplicaEndpoint",
    "ServerState",
    "StatRow",
    "TableEntry",
    "describe_exit",
    "haproxy_binary",
    "haproxy_check_command",
    "haproxy_command",
    "is_standby",
    "parse_servers_state",
    "parse_stat_csv",
    "parse_table",
    "pool_of_server",
    "render_config",
    "replica_server_names",
    "standby_name",
]

# Debian installs haproxy in /usr/sbin, which is not on a non-root user's PATH.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def haproxy_binary() -> Path:
    """Return the path of the haproxy executable, or raise ProxyError saying how to install it."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN_DIRS])
    found = shutil.which("haproxy", path=search)
    if found is None:
        raise ProxyError(
            "haproxy executable not found on PATH or in /usr/sbin: "
            "install it with `apt-get install haproxy` (2.6 or later)",
            details={"searched": search},
        )
    return Path(found)


def haproxy_command(config_path: Path, *, binary: Path | None = None) -> list[str]:
    """Return the argv that runs haproxy as one process in the foreground.

    Stop it with SIGUSR1 (graceful, exit 0) or SIGTERM (immediate, killed by
    the signal); ``describe_exit`` explains the status it ends with.
    """
    exe = binary if binary is not None else haproxy_binary()
    return [str(exe), "-db", "-f", str(config_path)]


def haproxy_check_command(config_path: Path, *, binary: Path | None = None) -> list[str]:
    """Return the argv that checks ``config_path`` without starting (exit 0 = valid)."""
    exe = binary if binary is not None else haproxy_binary()
    return [str(exe), "-c", "-f", str(config_path)]


def describe_exit(returncode: int) -> str:
    """Say why a haproxy started with ``haproxy_command`` ended, from its ``Popen.returncode``."""
    if returncode == 0:
        return "stopped gracefully (SIGUSR1 soft stop finished, or hard-stop-after expired)"
    if returncode == -signal.SIGTERM:
        return "stopped by SIGTERM (hard stop: open connections were cut)"
    if returncode == -signal.SIGUSR1:
        return "stopped by SIGUSR1 before it had finished starting"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"died on {name}"
    if returncode == 1:
        return "refused to start: configuration or bind error (its stderr says which)"
    return f"exited with status {returncode} (its stderr says why)"
