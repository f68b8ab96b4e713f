"""Command line and environment that start the bundled tritonserver.

Pure helpers (:func:`tritonserver_argv`, :func:`tritonserver_env`) take every
input as an argument so they can be unit-tested; :func:`tritonserver_command`
fills them in from the installed wheel and the running interpreter.

Orphan cleanup relies on ``--backend-config=python,shm-region-prefix-name=P``.
Observed with tritonserver 2.51 (nvidia-pytriton 0.7.0) and ``P = "cpexp_"``:

* every Python-backend model instance gets one region ``/dev/shm/P<uuid4>``,
  e.g. ``/dev/shm/cpexp_28614732-c100-448c-89dc-b6221c3db4c4`` (the default
  prefix is ``triton_python_backend_shm_region_``);
* every instance runs one stub process, a child of tritonserver, whose argv is::

      <backend-directory>/python/triton_python_backend_stub
      <repo>/<model>/<version>/model.onnx   # model.py for backend "python"
      P<uuid4>                              # the region name, no leading "/"
      1048576 1048576                       # shm default / growth byte size
      <tritonserver pid>
      <backend-directory>/python
      336                                   # IPC control handle
      mlp_0_0                               # instance name
      <backend-directory>/onnxruntime       # "DEFAULT" for backend "python"

So a supervisor finds the leftovers of a dead server by matching argv[2] of
``triton_python_backend_stub`` processes against ``P`` and globbing
``/dev/shm/P*``, then SIGKILLs the stubs and unlinks the regions. A graceful
stop removes both itself.

Network surface (measured with the same release). Triton binds HTTP, gRPC
and metrics to 0.0.0.0 unless told otherwise, and a reachable port is code
execution (a load request can carry ``file:1/model.py``), so every address
is set explicitly (loopback for the embedded stack). Its admin APIs are
restricted to requests carrying a secret header:

* ``--http-restricted-api=<apis>:<key>=<value>`` and
  ``--grpc-restricted-protocol=<apis>:<key>=<value>`` (a colon before the
  key, although ``--help`` shows a comma). Over HTTP the header is ``<key>``;
  over gRPC Triton expects the metadata key ``triton-grpc-protocol-<key>``
  (:data:`GRPC_ADMIN_KEY_HEADER`). Refusals: HTTP 403 "This API is
  restricted, expecting header '<key>'"; gRPC status UNAVAILABLE "This
  protocol is restricted, expecting header 'triton-grpc-protocol-<key>'".
* Restricted here (:data:`RESTRICTED_APIS`): everything a client of the
  proxy does not need. Health, metadata and inference stay open (HAProxy's
  health check and every Triton client use them).
* The secret is on tritonserver's command line, the only place Triton reads
  it from, so any local user can read it in ``/proc/<pid>/cmdline`` (unless
  /proc is mounted with ``hidepid``). The key keeps remote callers out;
  running Triton as its own unprivileged user keeps model code away from the
  files that hold it (``runtime.json``, mode 0600).

Start-up with models (``--load-model=*`` in explicit mode, measured): every
model folder in the repository is loaded *before* the HTTP and gRPC ports
open, so a restarted server answers nothing (HAProxy's health check fails,
the pool stays out of rotation) until its models are loaded; the example
ONNX model was READY at the first accepted connection, 1.5 s after the
start. With ``--exit-on-error=false`` a model that fails to load is logged
("failed to load all models") and left UNAVAILABLE while the server starts
and serves the others; with the default (true) the server exits with 1.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from controlplane.triton.backend_dir import pytriton_layout, tritonserver_binary

# Summaries rather than histograms: this Triton build exports no histograms.
METRICS_CONFIG: tuple[str, ...] = (
    "summary_latencies=true",
    "summary_quantiles=0.5:0.05,0.9:0.01,0.99:0.001",
)

ADMIN_KEY_HEADER = "x-controlplane-admin-key"
"""HTTP header carrying the admin key (lowercase: gRPC metadata keys must be)."""
GRPC_ADMIN_KEY_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"
"""The metadata key Triton's gRPC server checks for the same secret (it adds this prefix)."""
RESTRICTED_APIS: tuple[str, ...] = (
    "model-repository",
    "model-config",
    "shared-memory",
    "statistics",
    "trace",
    "logging",
)
"""Triton APIs that answer only requests carrying the admin key."""
DEFAULT_ADDRESS = "127.0.0.1"

_ADMIN_KEY = re.compile(r"[A-Za-z0-9_-]{16,128}")


def new_admin_key() -> str:
    """A fresh random admin key (URL-safe, so it needs no quoting on a command line or in a header)."""
    return secrets.token_urlsafe(32)


def validate_admin_key(key: str) -> str:
    """Return ``key`` if it can be an admin key, else raise ValueError (without echoing it)."""
    if not _ADMIN_KEY.fullmatch(key):
        raise ValueError("invalid admin key: use 16-128 characters of [A-Za-z0-9_-]")
    return key


def admin_headers(key: str) -> dict[str, str]:
    """Headers that open the restricted APIs, for tritonclient's HTTP and gRPC clients alike."""
    return {ADMIN_KEY_HEADER: key, GRPC_ADMIN_KEY_HEADER: key}


# Becomes a /dev/shm file name and a --backend-config value, so keep it to
# characters that are safe in both (a comma would end the config value).
_SHM_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def validate_shm_prefix(shm_prefix: str) -> str:
    """Return ``shm_prefix`` if it is safe as a /dev/shm name prefix, else raise ValueError."""
    if not _SHM_PREFIX.fullmatch(shm_prefix) or shm_prefix.startswith("."):
        raise ValueError(
            f"invalid shm prefix {shm_prefix!r}: use 1-64 characters of [A-Za-z0-9_.-], not starting with '.'"
        )
    return shm_prefix


def tritonserver_argv(
    *,
    binary: Path,
    model_repository: Path,
    backend_directory: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    shm_prefix: str,
    address: str = DEFAULT_ADDRESS,
    admin_key: str | None = None,
    load_all_models: bool = False,
    exit_timeout_secs: int = 5,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Build the tritonserver argv (pure: no file system or environment access).

    HTTP, gRPC and metrics listen on ``address`` only (an IP address).
    With ``admin_key`` the APIs in :data:`RESTRICTED_APIS` answer only
    requests carrying it (see :func:`admin_headers`); None leaves them open,
    for test servers that nothing but the test reaches. ``load_all_models``
    loads every model folder of the repository before the ports open, and a
    model that fails does not stop the server (see the module docstring).

    Explicit model control so the control plane decides what loads; a short
    exit timeout because an idle keep-alive connection otherwise holds
    shutdown for the whole default 30 s.

    Readiness is deliberately not strict: with ``--strict-readiness=true`` a
    single failed ``load_model`` makes the whole server report NOT ready (and
    it stays so after unloading that model, until a load of it succeeds), so
    the proxy's health check on ``/v2/health/ready`` would take every model
    out of rotation after one failed deploy. Per-model readiness is checked by
    the control plane itself.
    """
    for name, port in (("http", http_port), ("grpc", grpc_port), ("metrics", metrics_port)):
        if not 0 < port < 65536:
            raise ValueError(f"{name}_port out of range: {port}")
    if exit_timeout_secs < 0:
        raise ValueError(f"exit_timeout_secs must be >= 0, got {exit_timeout_secs}")
    validate_shm_prefix(shm_prefix)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"address must be an IP address, got {address!r}") from None
    argv = [
        str(binary),
        f"--model-repository={model_repository}",
        f"--backend-directory={backend_directory}",
        "--model-control-mode=explicit",
        f"--http-address={address}",
        f"--grpc-address={address}",
        f"--metrics-address={address}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        f"--exit-timeout-secs={exit_timeout_secs}",
        "--strict-readiness=false",
    ]
    argv += [f"--metrics-config={setting}" for setting in METRICS_CONFIG]
    if admin_key is not None:
        restriction = f"{','.join(RESTRICTED_APIS)}:{ADMIN_KEY_HEADER}={validate_admin_key(admin_key)}"
        argv += [f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"]
    if load_all_models:
        argv += ["--load-model=*", "--exit-on-error=false"]
    argv += list(extra_args)
    return argv


def _prepend_path(entry: str, current: str | None) -> str:
    # Drop later copies of the entry so repeated calls do not grow the variable.
    rest = [part for part in (current or "").split(os.pathsep) if part and part != entry]
    return os.pathsep.join([entry, *rest])


def tritonserver_env(
    *,
    base_env: Mapping[str, str],
    libs_dir: Path,
    venv: Path | None,
    bin_dir: Path,
) -> dict[str, str]:
    """Build tritonserver's environment from ``base_env`` (pure).

    * ``LD_LIBRARY_PATH`` starts with ``libs_dir`` (``nvidia_pytriton.libs``):
      the stub and ``libtriton_python.so`` are copied out of the wheel, so their
      ``$ORIGIN`` RPATH no longer reaches the vendored libraries.
    * ``PATH`` starts with ``bin_dir`` and ``VIRTUAL_ENV`` is ``venv`` (when
      given): the stub embeds the system libpython, ignores ``PYTHONPATH`` and
      finds the virtualenv's site-packages (numpy, onnxruntime) only through the
      ``python3`` it sees first on ``PATH``.
    * ``PYTHONHOME`` is dropped: it would override that discovery.
    * ``CONTROLPLANE_*`` variables are dropped: model code inherits this
      environment, and those may hold a database URL with its password or an
      API token.
    """
    env = {key: value for key, value in base_env.items() if not key.startswith("CONTROLPLANE_")}
    env["LD_LIBRARY_PATH"] = _prepend_path(str(libs_dir), env.get("LD_LIBRARY_PATH"))
    env["PATH"] = _prepend_path(str(bin_dir), env.get("PATH"))
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
    env.pop("PYTHONHOME", None)
    return env


def current_virtualenv() -> Path | None:
    """The virtualenv of the running interpreter, or None outside one."""
    return Path(sys.prefix) if sys.prefix != sys.base_prefix else None


def tritonserver_command(
    *,
    model_repository: Path,
    backend_directory: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    shm_prefix: str,
    address: str = DEFAULT_ADDRESS,
    admin_key: str | None = None,
    load_all_models: bool = False,
    exit_timeout_secs: int = 5,
    extra_args: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """Return ``(argv, env)`` to start the bundled tritonserver, e.g. with ``subprocess.Popen``.

    ``backend_directory`` should come from
    :func:`controlplane.triton.backend_dir.build_backend_directory`. The
    environment is ``os.environ`` plus what the wheel's binary and the Python
    backend stub need (see :func:`tritonserver_env`), derived from
    ``sys.prefix``. ``shm_prefix`` names this server's Python-backend
    ``/dev/shm`` regions and appears in its stubs' argv (see the module
    docstring for the exact shapes), which is what orphan cleanup matches on;
    Triton appends a UUID directly, so end prefixes with a separator and never
    let one server's prefix be a prefix of another's (``cp_a_`` vs ``cp_a_b_``).
    ``address``, ``admin_key`` and ``load_all_models`` are as in :func:`tritonserver_argv`.
    """
    argv = tritonserver_argv(
        binary=tritonserver_binary(),
        model_repository=Path(model_repository).absolute(),
        backend_directory=Path(backend_directory).absolute(),
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        shm_prefix=shm_prefix,
        address=address,
        admin_key=admin_key,
        load_all_models=load_all_models,
        exit_timeout_secs=exit_timeout_secs,
        extra_args=extra_args,
    )
    env = tritonserver_env(
        base_env=os.environ,
        libs_dir=pytriton_layout().libs_dir,
        venv=current_virtualenv(),
        bin_dir=Path(sys.prefix) / "bin",
    )
    return argv, env
