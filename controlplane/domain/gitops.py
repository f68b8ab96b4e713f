"""Following a folder (or a git repository) of model folders. Pure rules.

A watched root holds one folder per model: ``ROOT/<model>/config.pbtxt``,
one version directory and, optionally, a golden set and ``rollout.yaml``.
Each poll gives every folder a fingerprint (file stats, or a git tree id);
a folder whose fingerprint differs from the one last handled is pushed. The
policy file says how a newly created version is rolled out: the settings of
``POST /v1/rollouts`` without the model and version, which come from the
folder and from the push.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from controlplane.domain.analysis import Gates
from controlplane.domain.rollouts import RolloutSpec, Strategy, make_spec
from controlplane.errors import ControlPlaneError, InvalidInput

POLICY_FILE = "rollout.yaml"
# The defaults of POST /v1/rollouts, so a policy file means what the same request would.
DEFAULT_STRATEGY = Strategy.CANARY
DEFAULT_STEP_SECONDS = 30.0
DEFAULT_BAKE_SECONDS = 60.0

_POLICY_KEYS = ("strategy", "steps", "step_seconds", "bake_seconds", "gates", "allow_breaking")
# allow_breaking is a top-level setting in the API's request, not one of its gates.
_GATE_KEYS = tuple(f.name for f in fields(Gates) if f.name != "allow_breaking")
_COMMIT_ID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_BRANCH_CHARS = re.compile(r"^[A-Za-z0-9._/+\-]{1,200}$")


class WatchOutcome(enum.StrEnum):
    """What became of a folder (or of its version's rollout) in one poll."""

    PUSHED = "pushed"
    UNCHANGED = "unchanged"
    REJECTED = "rejected"
    ROLLOUT_STARTED = "rollout_started"
    ROLLOUT_REFUSED = "rollout_refused"


@dataclass(frozen=True)
class WatchLimits:
    """Bounds on what a watched folder may hold; beyond them the folder is refused unread."""

    max_file_bytes: int = 4 * 1024**3
    max_policy_bytes: int = 64 * 1024
    max_files: int = 10_000

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"WatchLimits.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class RolloutPolicy:
    """How a folder's new versions are rolled out (its ``rollout.yaml``)."""

    strategy: Strategy = DEFAULT_STRATEGY
    steps: tuple[int, ...] | None = None
    step_seconds: float = DEFAULT_STEP_SECONDS
    bake_seconds: float = DEFAULT_BAKE_SECONDS
    gates: Gates = field(default_factory=Gates)

    def spec(self, model: str, version: int) -> RolloutSpec:
        """The validated rollout of ``model`` ``version`` under this policy."""
        return make_spec(
            model=model,
            version=version,
            strategy=self.strategy,
            steps=self.steps,
            step_seconds=self.step_seconds,
            bake_seconds=self.bake_seconds,
            gates=self.gates,
        )

    def as_request(self, model: str, version: int) -> dict[str, Any]:
        """The body of ``POST /v1/rollouts`` for ``model`` ``version``."""
        gates = self.gates.as_dict()
        allow_breaking = bool(gates.pop("allow_breaking"))
        return {
            "model": model,
            "version": version,
            "strategy": self.strategy.value,
            "steps": list(self.steps) if self.steps is not None else None,
            "step_seconds": self.step_seconds,
            "bake_seconds": self.bake_seconds,
            "gates": gates,
            "allow_breaking": allow_breaking,
        }


def _policy_error(file: str, problems: list[str], **details: Any) -> InvalidInput:
    return InvalidInput(
        f"{file}: " + "; ".join(problems),
        code="invalid_rollout_policy",
        details={"file": file, "problems": problems, **details},
    )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_top_level(data: Mapping[Any, Any]) -> list[str]:
    problems: list[str] = []
    for key in data:
        if key in ("model", "version"):
            problems.append(f"{key!r} is not set here: the model is the folder's, the version the push's")
        elif key not in _POLICY_KEYS:
            problems.append(f"unknown setting {key!r} (known: {', '.join(_POLICY_KEYS)})")
    strategy = data.get("strategy", DEFAULT_STRATEGY.value)
    if strategy not in {s.value for s in Strategy}:
        problems.append(f"strategy must be one of {', '.join(s.value for s in Strategy)}, got {strategy!r}")
    steps = data.get("steps")
    if steps is not None and (
        not isinstance(steps, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps)
    ):
        problems.append(f"steps must be a list of whole percentages, e.g. [10, 50, 100], got {steps!r}")
    for name in ("step_seconds", "bake_seconds"):
        if name in data and not _number(data[name]):
            problems.append(f"{name} must be a number of seconds, got {data[name]!r}")
    if "allow_breaking" in data and not isinstance(data["allow_breaking"], bool):
        problems.append(f"allow_breaking must be true or false, got {data['allow_breaking']!r}")
    return problems


def _check_gate_keys(gates: object) -> list[str]:
    if not isinstance(gates, Mapping):
        return [f"gates must be a mapping of gate settings, got {gates!r}"]
    return [
        f"unknown gate {key!r} (known: {', '.join(_GATE_KEYS)})" for key in gates if key not in _GATE_KEYS
    ]


def parse_rollout_policy(data: object, *, file: str, model: str) -> RolloutPolicy:
    """A policy from a parsed policy file; InvalidInput (``invalid_rollout_policy``) naming ``file``.

    ``data`` is what the file held (None for an empty file: every setting at
    its default). The settings are checked by the rules of ``POST /v1/rollouts``
    (for ``model``), and every problem found is named at once.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise _policy_error(file, [f"the file must hold a mapping of settings, got {type(data).__name__}"])
    problems = _check_top_level(data)
    gates_data = data.get("gates", {})
    problems += _check_gate_keys(gates_data)
    if problems:
        raise _policy_error(file, problems)
    try:
        gates = Gates(**dict(gates_data), allow_breaking=data.get("allow_breaking", False))
        policy = RolloutPolicy(
            strategy=Strategy(data.get("strategy", DEFAULT_STRATEGY.value)),
            steps=tuple(data["steps"]) if data.get("steps") else None,
            step_seconds=float(data.get("step_seconds", DEFAULT_STEP_SECONDS)),
            bake_seconds=float(data.get("bake_seconds", DEFAULT_BAKE_SECONDS)),
            gates=gates,
        )
        # A placeholder version: the rules do not depend on it.
        policy.spec(model, 1)
    except ControlPlaneError as exc:
        nested = exc.details.get("problems") if isinstance(exc.details, Mapping) else None
        raise _policy_error(file, list(nested or [exc.message]), cause=exc.code) from None
    return policy


def is_packed(relative_path: str) -> bool:
    """Whether a file of a model folder (path relative to it, '/'-separated) belongs in its archive.

    The policy file is the watcher's, not the model's; dot-files (``.git``,
    editors' leftovers) are no part of a model either.
    """
    parts = relative_path.split("/")
    if any(part.startswith(".") for part in parts):
        return False
    return parts != [POLICY_FILE]


def is_watched_entry(name: str) -> bool:
    """Whether a top-level entry of the watched root is considered at all (dot-entries are not)."""
    return bool(name) and not name.startswith(".")


def changed_folders(handled: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """Folders (sorted) whose fingerprint is new or differs from the one last handled."""
    return sorted(name for name, fingerprint in current.items() if handled.get(name) != fingerprint)


def check_branch(name: str) -> str:
    """Return ``name`` if it is a plain branch name; InvalidInput (``invalid_branch``) otherwise.

    Stricter than git itself: no option-like or relative names (``-x``,
    ``HEAD~1``, ``a..b``, ``@{u}``), only a name a branch is commonly given.
    """
    refused = (
        not _BRANCH_CHARS.fullmatch(name)
        or name.startswith(("-", "/", "."))
        or name.endswith(("/", ".", ".lock"))
        or ".." in name
        or "//" in name
        or "/." in name
    )
    if refused:
        raise InvalidInput(
            f"branch {name!r} is not allowed: use letters, digits, '.', '_', '-', '+' and '/' as a branch "
            "name (not a revision expression)",
            code="invalid_branch",
        )
    return name


def is_commit_id(text: str) -> bool:
    """Whether ``text`` is a full hexadecimal commit id (SHA-1 or SHA-256)."""
    return _COMMIT_ID.fullmatch(text) is not None
