"""What the benchmarks share: the example models' build script, imported from its path."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def examples_module() -> ModuleType:
    """``model_repository/build_examples.py`` (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(
        "build_examples", REPO / "model_repository" / "build_examples.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
