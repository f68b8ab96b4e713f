"""Whether a process found through a pid file is ours, and what to do with it (pure decisions).

After a kill -9 of the control plane its tritonserver and haproxy children
keep running (own sessions) and keep serving. The next start reads each pid
file, reads the process's argv from ``/proc`` and decides:

* ``ADOPT``: it is ours and runs what we would run now. Supervise it; start nothing.
* ``REPLACE``: it is ours (our binary on our repository / our config path)
  but runs something else (other ports or shm prefix; for haproxy another
  config). Stop it, then start ours.
* ``START``: nothing of ours runs there (no pid file, process gone, or the
  pid now belongs to an unrelated process, which is never signalled).

"Ours" is judged by argv alone here; the caller adds the checks that need a
live process (its uid is ours or Triton's own user, a pidfd held while
reading, see ``process.AdoptedProcess``).

A tritonserver is adopted only when it listens where we would start it and
restricts its admin APIs with the key we hold: one started by an older
release (listening on every address, admin APIs open) or with a key we no
longer know is replaced. Reasons never quote the key.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field


class Action(enum.Enum):
    """What to do with the process a pid file names (see the module docstring)."""

    ADOPT = "adopt"
    REPLACE = "replace"
    START = "start"


@dataclass(frozen=True)
class Decision:
    """What to do, and why (for the log)."""

    action: Action
    reason: str
    refresh_config: bool = False
    """ADOPT only: write the newly rendered config file (it differs in runtime state only)."""


@dataclass(frozen=True)
class TritonArgs:
    """The parts of a tritonserver argv that identify a server of ours."""

    model_repository: str
    http_port: int | None
    grpc_port: int | None
    metrics_port: int | None
    shm_prefix: str | None
    address: str | None = None
    """The one address HTTP, gRPC and metrics listen on; None when unset (every address) or mixed."""
    http_restriction: str | None = field(default=None, repr=False)
    grpc_restriction: str | None = field(default=None, repr=False)

    @property
    def admin_key(self) -> str | None:
        """The key the restricted APIs expect, when both protocols restrict with the same one."""
        if self.http_restriction is None or self.http_restriction != self.grpc_restriction:
            return None
        _apis, sep, header = self.http_restriction.partition(":")
        _name, sep2, key = header.partition("=")
        return key if sep and sep2 and key else None


_SHM_OPTION = "python,shm-region-prefix-name="
_ADDRESS_OPTIONS = ("--http-address", "--grpc-address", "--metrics-address")


def _basename(path: str) -> str:
    return os.path.basename(path)


def parse_tritonserver_argv(argv: Sequence[str]) -> TritonArgs | None:
    """The identifying options of a tritonserver argv; None if argv is not tritonserver's."""
    if not argv or _basename(argv[0]) != "tritonserver":
        return None
    options: dict[str, str] = {}
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        if not sep:
            continue
        if key == "--backend-config" and value.startswith(_SHM_OPTION):
            options["shm"] = value[len(_SHM_OPTION) :]
        else:
            options.setdefault(key, value)
    repository = options.get("--model-repository")
    if repository is None:
        return None

    def port(key: str) -> int | None:
        try:
            return int(options[key])
        except (KeyError, ValueError):
            return None

    addresses = {options.get(key) for key in _ADDRESS_OPTIONS}
    return TritonArgs(
        model_repository=repository,
        http_port=port("--http-port"),
        grpc_port=port("--grpc-port"),
        metrics_port=port("--metrics-port"),
        shm_prefix=options.get("shm"),
        address=addresses.pop() if len(addresses) == 1 else None,
        http_restriction=options.get("--http-restricted-api"),
        grpc_restriction=options.get("--grpc-restricted-protocol"),
    )


def _identity_differences(found: TritonArgs, want: TritonArgs) -> list[str]:
    differences = [
        f"{name.replace('_', ' ')} {getattr(found, name)}, wanted {getattr(want, name)}"
        for name in ("http_port", "grpc_port", "metrics_port", "shm_prefix", "address")
        if getattr(found, name) != getattr(want, name)
    ]
    if (found.http_restriction, found.grpc_restriction) != (want.http_restriction, want.grpc_restriction):
        differences.append(
            "its admin APIs are restricted otherwise or with another key"
            if found.http_restriction or found.grpc_restriction
            else "its admin APIs are open to anyone who reaches its ports"
        )
    return differences


def decide_triton(running: Sequence[str] | None, wanted: Sequence[str]) -> Decision:
    """Decide about the process a pool's pid file names, given its argv (None: no live process).

    Ours means the tritonserver binary serving this pool's live repository.
    Adopted when also its ports, shm prefix, listening address and admin API
    restriction (key included) are the ones we would start it with; other
    differences (flags of an older release) are reported but do not force a
    restart, since a restart is what this exists to avoid.
    """
    want = parse_tritonserver_argv(wanted)
    if want is None:
        raise ValueError(f"not a tritonserver argv: {list(wanted)!r}")
    if running is None:
        return Decision(Action.START, "no live process in the pid file")
    found = parse_tritonserver_argv(running)
    if found is None or found.model_repository != want.model_repository:
        return Decision(Action.START, f"pid belongs to another program: {' '.join(running)[:200]}")
    if found != want:
        return Decision(Action.REPLACE, "runs with " + "; ".join(_identity_differences(found, want)))
    if list(running[1:]) != list(wanted[1:]):
        # Restriction flags are equal here, but keep secrets out of the log whatever happens.
        extra = sorted(a for a in set(running[1:]) ^ set(wanted[1:]) if "restricted" not in a)
        return Decision(Action.ADOPT, f"same pool, ports and shm prefix; other arguments differ: {extra}")
    return Decision(Action.ADOPT, "same command line")


def _diff(old: bytes, new: bytes, limit: int = 6) -> str:
    lines = difflib.unified_diff(
        old.decode(errors="replace").splitlines(), new.decode(errors="replace").splitlines(), n=0, lineterm=""
    )
    changed = [
        line[0] + line[1:].strip() for line in lines if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    more = f" (+{len(changed) - limit} more)" if len(changed) > limit else ""
    return "; ".join(changed[:limit]) + more


_SERVER_WEIGHT = re.compile(rb"^(\s*server\s.*?\sweight\s+)\d+", re.MULTILINE)


def mask_server_weights(config: bytes) -> bytes:
    """``config`` with every ``server ... weight N`` turned into ``weight *``.

    A server's weight is runtime state in HAProxy (``set weight`` changes it
    and the config's value is only where a fresh process starts), so two
    configs that differ only there describe the same proxy.
    """
    return _SERVER_WEIGHT.sub(rb"\g<1>*", config)


def decide_haproxy(
    running: Sequence[str] | None,
    wanted: Sequence[str],
    *,
    running_config: bytes | None,
    wanted_config: bytes,
) -> Decision:
    """Decide about the process the proxy's pid file names.

    Ours means haproxy started on our config path. Adopted when it was
    started exactly as we would start it and the config file it read (the one
    on disk: only we write it) is byte-identical to the one we would render
    now. Also adopted when the two differ only in server weights: those are
    runtime state (the running weights are kept; the caller re-applies the
    desired ones), and a caller passing its current desired weights as
    initial weights must not cost clients a proxy restart. Then
    ``refresh_config`` asks the caller to write the new rendering, so a later
    restart of the proxy starts from the newest initial weights. Anything
    else that differs needs a new process (HAProxy cannot take a new config
    without a restart, and a restart cuts open connections, so the caller logs it).
    """
    if running is None:
        return Decision(Action.START, "no live process in the pid file")
    if not running or _basename(running[0]) != "haproxy" or list(running[1:]) != list(wanted[1:]):
        ours = bool(running) and _basename(running[0]) == "haproxy" and wanted[-1] in running
        if ours:
            return Decision(Action.REPLACE, f"started with other arguments: {' '.join(running)[:200]}")
        return Decision(Action.START, f"pid belongs to another program: {' '.join(running)[:200]}")
    if running_config is None:
        return Decision(Action.REPLACE, "its configuration file is missing")
    if running_config == wanted_config:
        return Decision(Action.ADOPT, "same command line and byte-identical configuration")
    if mask_server_weights(running_config) == mask_server_weights(wanted_config):
        return Decision(
            Action.ADOPT,
            "same command line; configuration differs only in initial server weights, which are runtime "
            f"state (running weights kept): {_diff(running_config, wanted_config)}",
            refresh_config=True,
        )
    return Decision(
        Action.REPLACE,
        f"its configuration differs from the one rendered now: {_diff(running_config, wanted_config)}",
    )
