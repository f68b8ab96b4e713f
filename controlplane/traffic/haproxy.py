"""HAProxy as the traffic router between Triton pools.

This module is the import point for the rest of the control plane; it
re-exports the configuration side (``haproxy_config``: pure rendering) and the
runtime side (``haproxy_runtime``: admin-socket client), and says how to run
the binary. Process supervision lives elsewhere (``controlplane.runtime``).

How to run it (``haproxy_command``): ``haproxy -W -db -f CONFIG``.

* ``-db`` keeps it in the foreground, so the supervisor's child is HAProxy itself
  and its stderr (server UP/DOWN events, alerts) is the supervisor's to read.
* ``-W`` (master-worker) makes that child a master that outlives reloads and
  reports why its worker ended. SIGTERM: hard stop, master exits 0 after
  logging "Current worker (PID) exited with code 143 (Terminated)". SIGUSR1:
  soft stop (finish open streams, bounded by ``hard-stop-after``), exit 0.
  SIGUSR2: reload with the same argv. A crashed worker makes the master log
  "exited with code N (...)" and exit with N (137 for SIGKILL), so a non-zero
  exit status always means "died", never "was asked to stop". Without ``-W``,
  SIGTERM ends the process with status 143 and no message.
* Not ``-Ws``: it only adds sd_notify, and if the control plane itself runs as
  a systemd ``Type=notify`` unit, HAProxy would inherit ``NOTIFY_SOCKET`` and
  tell systemd *the control plane* is ready.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from controlplane.errors import ProxyError
from controlplane.traffic.haproxy_config import (
    GRPC_BACKEND,
    GRPC_ERROR_TABLE,
    GRPC_FRONTEND,
    GRPC_MODEL_CONTROL_METHODS,
    HTTP_BACKEND,
    HTTP_FRONTEND,
    POOL_BACKENDS,
    PoolEndpoint,
    ProxyConfig,
    render_config,
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
    "GRPC_BACKEND",
    "GRPC_ERROR_TABLE",
    "GRPC_FRONTEND",
    "GRPC_MODEL_CONTROL_METHODS",
    "HTTP_BACKEND",
    "HTTP_FRONTEND",
    "POOL_BACKENDS",
    "AdminState",
    "HAProxyRuntime",
    "PoolEndpoint",
    "ProxyConfig",
    "ServerState",
    "StatRow",
    "TableEntry",
    "haproxy_binary",
    "haproxy_check_command",
    "haproxy_command",
    "parse_servers_state",
    "parse_stat_csv",
    "parse_table",
    "render_config",
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
    """Return the argv that runs haproxy in the foreground as a master-worker pair.

    Stop it with SIGUSR1 (graceful) or SIGTERM (immediate); see the module
    docstring for the exit statuses and messages a supervisor will see.
    """
    exe = binary if binary is not None else haproxy_binary()
    return [str(exe), "-W", "-db", "-f", str(config_path)]


def haproxy_check_command(config_path: Path, *, binary: Path | None = None) -> list[str]:
    """Return the argv that checks ``config_path`` without starting (exit 0 = valid)."""
    exe = binary if binary is not None else haproxy_binary()
    return [str(exe), "-c", "-f", str(config_path)]
