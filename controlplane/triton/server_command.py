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
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from controlplane.triton.backend_dir import pytriton_layout, tritonserver_binary

# Summaries rather than histograms: this Triton build exports no histograms.
METRICS_CONFIG: tuple[str, ...] = (
    "summary_latencies=true",
    "summary_quantiles=0.5:0.05,0.9:0.01,0.99:0.001",
)

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
    exit_timeout_secs: int = 5,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Build the tritonserver argv (pure: no file system or environment access).

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
    argv = [
        str(binary),
        f"--model-repository={model_repository}",
        f"--backend-directory={backend_directory}",
        "--model-control-mode=explicit",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        f"--exit-timeout-secs={exit_timeout_secs}",
        "--strict-readiness=false",
    ]
    argv += [f"--metrics-config={setting}" for setting in METRICS_CONFIG]
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
    """
    env = dict(base_env)
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
    """
    argv = tritonserver_argv(
        binary=tritonserver_binary(),
        model_repository=Path(model_repository).absolute(),
        backend_directory=Path(backend_directory).absolute(),
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        shm_prefix=shm_prefix,
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
