"""Print the requirements of pyproject.toml, one per line, for a pip install inside an image build.

    python3 requirements.py PYPROJECT                 # every dependency (no extras)
    python3 requirements.py PYPROJECT NAME [NAME...]  # only these, from the dependencies or any
                                                      # extra (each must be listed)

Only the standard library: it runs on the bare Python of the base image.
"""

from __future__ import annotations

import re
import sys
import tomllib


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: str, names: list[str]) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    dependencies: list[str] = project["dependencies"]
    if not names:
        return dependencies
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    by_name = {}
    for requirement in dependencies + [r for listed in extras.values() for r in listed]:
        match = re.match(r"[A-Za-z0-9_.-]+", requirement)
        if match:
            by_name[canonical(match.group(0))] = requirement
    missing = [name for name in names if canonical(name) not in by_name]
    if missing:
        raise SystemExit(f"{pyproject} does not list {', '.join(missing)}")
    return [by_name[canonical(name)] for name in names]


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
