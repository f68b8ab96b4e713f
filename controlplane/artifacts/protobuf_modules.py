"""Generated protobuf modules of other packages, loaded without running those packages' ``__init__``.

Triton's model configuration schema (``model_config_pb2``) lives in the
``tritonclient.grpc`` package, whose ``__init__`` imports grpc and the whole
gRPC client; ONNX's schema (``onnx_ml_pb2``) lives in ``onnx``, whose
``__init__`` imports numpy and its helpers. A control plane that only parses
configurations and model files needs neither (about 40 MB together), so the
generated file is loaded on its own, under its own module name: a later
``import tritonclient.grpc`` or ``import onnx`` finds it in ``sys.modules``
and the protobuf descriptors are registered once.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING


def load_generated(name: str) -> ModuleType:
    """The module ``name`` (``top.sub.x_pb2``), from its file, without importing its parent packages."""
    if name in sys.modules:
        return sys.modules[name]
    top, *inner = name.split(".")
    package = importlib.util.find_spec(top)
    if package is None or not package.submodule_search_locations:
        raise ImportError(f"{top} is not installed", name=name)
    for folder in package.submodule_search_locations:
        path = Path(folder, *inner[:-1], f"{inner[-1]}.py")
        spec = importlib.util.spec_from_file_location(name, path)
        if path.is_file() and spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module
    raise ImportError(f"{name} not found", name=name)


if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2
else:
    model_config_pb2 = load_generated("tritonclient.grpc.model_config_pb2")

__all__ = ["load_generated", "model_config_pb2"]
