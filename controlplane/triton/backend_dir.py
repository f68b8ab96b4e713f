"""Build a Triton ``--backend-directory`` out of the nvidia-pytriton wheel.

The wheel ships a real tritonserver with the Python backend, but the backend
files live inside site-packages, which must not be written to. Triton looks for
each backend under ``<backend-directory>/<name>/``, so the project builds its
own folder:

``<target>/python/``
    ``libtriton_python.so``, ``triton_python_backend_utils.py`` and the
    ``triton_python_backend_stub`` built for the running Python version.
``<target>/onnxruntime/model.py``
    The Python-based stand-in for the native ONNX Runtime backend (see
    ``controlplane/triton/backends/onnxruntime/model.py``), so model folders
    with ``backend: "onnxruntime"`` load unchanged.

Everything is copied, never symlinked: Triton refuses a backend library whose
real path "escapes" the backend directory.
"""

from __future__ import annotations

import filecmp
import importlib.resources
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from controlplane.files import copy_atomically

PYTHON_BACKEND_LIBRARY = "libtriton_python.so"
PYTHON_BACKEND_UTILS = "triton_python_backend_utils.py"
PYTHON_BACKEND_STUB = "triton_python_backend_stub"
ONNXRUNTIME_BACKEND_NAME = "onnxruntime"


@dataclass(frozen=True)
class PytritonLayout:
    """Where the pieces Triton needs sit inside an installed nvidia-pytriton wheel."""

    package_dir: Path

    @property
    def tritonserver_dir(self) -> Path:
        """Root of the bundled Triton (``bin``, ``backends``, stubs)."""
        return self.package_dir / "tritonserver"

    @property
    def binary(self) -> Path:
        """The ``tritonserver`` executable."""
        return self.tritonserver_dir / "bin" / "tritonserver"

    @property
    def python_backend_dir(self) -> Path:
        """Folder holding ``libtriton_python.so`` and ``triton_python_backend_utils.py``."""
        return self.tritonserver_dir / "backends" / "python"

    @property
    def libs_dir(self) -> Path:
        """``nvidia_pytriton.libs``: vendored shared libraries (libtritonserver, ...).

        auditwheel puts it next to the top-level package, i.e. beside ``pytriton/``.
        """
        return self.package_dir.parent / "nvidia_pytriton.libs"

    def stub(self, python_version: str) -> Path:
        """The backend stub built for ``python_version`` (``"3.11"``)."""
        return self.tritonserver_dir / "python_backend_stubs" / python_version / PYTHON_BACKEND_STUB


def running_python_version() -> str:
    """``"X.Y"`` of the interpreter running this code (the stub must match it)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def pytriton_layout() -> PytritonLayout:
    """Locate the installed nvidia-pytriton wheel without importing it.

    ``find_spec`` does not execute ``pytriton/__init__.py``, which would pull in
    the whole PyTriton runtime just to learn a path.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded runtime needs the nvidia-pytriton package, which is not installed:"
            " pip install 'triton-controlplane[embedded]' (or run with CONTROLPLANE_RUNTIME=external)"
        )
    return PytritonLayout(package_dir=Path(next(iter(spec.submodule_search_locations))))


def tritonserver_binary() -> Path:
    """Path of the ``tritonserver`` executable bundled with nvidia-pytriton."""
    binary = pytriton_layout().binary
    if not binary.is_file():
        raise FileNotFoundError(f"tritonserver binary not found at {binary}")
    return binary


def onnxruntime_backend_model_file() -> Path:
    """The stand-in ``onnxruntime`` backend's ``model.py`` shipped in this package."""
    resource = (
        importlib.resources.files("controlplane.triton") / "backends" / ONNXRUNTIME_BACKEND_NAME / "model.py"
    )
    return Path(str(resource))


def backend_sources(
    layout: PytritonLayout | None = None, python_version: str | None = None
) -> dict[str, Path]:
    """Map each file of the backend directory (relative path) to its source file.

    Raises ``FileNotFoundError`` naming the first missing source, e.g. when the
    wheel has no stub for this Python version.
    """
    layout = layout or pytriton_layout()
    version = python_version or running_python_version()
    sources = {
        f"python/{PYTHON_BACKEND_LIBRARY}": layout.python_backend_dir / PYTHON_BACKEND_LIBRARY,
        f"python/{PYTHON_BACKEND_UTILS}": layout.python_backend_dir / PYTHON_BACKEND_UTILS,
        f"python/{PYTHON_BACKEND_STUB}": layout.stub(version),
        f"{ONNXRUNTIME_BACKEND_NAME}/model.py": onnxruntime_backend_model_file(),
    }
    for relative, source in sources.items():
        if not source.is_file():
            raise FileNotFoundError(f"source for {relative} not found at {source}")
    return sources


def _ensure_real_dir(path: Path) -> None:
    # A symlinked directory from some older build would make Triton's
    # "escapes backend directory" check fail just like a symlinked file.
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)


def _install_copy(source: Path, destination: Path) -> None:
    if (
        destination.is_file()
        and not destination.is_symlink()
        and filecmp.cmp(source, destination, shallow=False)
    ):
        # Leave an identical file alone: a running tritonserver may have it mapped.
        return
    # Copy next to the destination, then rename over it: the rename swaps the
    # directory entry atomically, so a running server keeps its old inode intact
    # (overwriting a mapped .so in place can crash it) and concurrent builders
    # never see a half-written file. It also replaces a symlink by a real file.
    copy_atomically(source, destination)


def build_backend_directory(target: Path) -> Path:
    """Create or refresh a Triton backend directory at ``target`` and return it.

    Copies (never symlinks) the Python backend library, its utils module and the
    stub for the running Python into ``target/python/``, and the stand-in ONNX
    Runtime backend into ``target/onnxruntime/model.py``. Idempotent: files that
    already match are left untouched, stale ones or symlinks from an older build
    are replaced atomically, so calling it while a server uses ``target`` is safe.
    Pass the result as ``--backend-directory``.
    """
    target = Path(target).absolute()
    sources = backend_sources()
    target.mkdir(parents=True, exist_ok=True)
    for relative, source in sources.items():
        destination = target / relative
        _ensure_real_dir(destination.parent)
        _install_copy(source, destination)
    return target
