"""The wheel carries every package folder, and the top-level migrations as controlplane.migrations."""

from __future__ import annotations

import tomllib
from pathlib import Path

from controlplane.registry.db import MIGRATIONS_DIR

ROOT = Path(__file__).resolve().parents[2]


def _setuptools_config() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _python_folders(top: Path, package: str) -> set[str]:
    return {
        ".".join((package, *folder.relative_to(top).parts)).rstrip(".")
        for folder in [top, *(p for p in top.rglob("*") if p.is_dir())]
        if "__pycache__" not in folder.parts and any(folder.glob("*.py"))
    }


def test_every_folder_with_python_code_is_a_listed_package() -> None:
    listed = set(_setuptools_config()["packages"])  # type: ignore[call-overload]
    on_disk = _python_folders(ROOT / "controlplane", "controlplane") | _python_folders(
        ROOT / "migrations", "controlplane.migrations"
    )
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - on_disk == set()


def test_the_migrations_package_maps_to_the_top_level_folder() -> None:
    assert _setuptools_config()["package-dir"] == {"controlplane.migrations": "migrations"}
    assert MIGRATIONS_DIR.resolve() == (ROOT / "migrations").resolve()
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("0001_*.py")) == ["0001_initial.py"]


def test_test_modules_outside_packages_have_names_unique_across_the_test_folders() -> None:
    # pytest imports such modules by their basename: two with one name fail the whole collection.
    modules = [p for p in (ROOT / "tests").rglob("test_*.py") if not (p.parent / "__init__.py").exists()]
    names = [p.name for p in modules]
    assert sorted({n for n in names if names.count(n) > 1}) == []
