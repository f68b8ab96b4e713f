"""Reading a folder's ``rollout.yaml`` (safe YAML only) into a rollout policy."""

from __future__ import annotations

import yaml

from controlplane.domain.gitops import RolloutPolicy, parse_rollout_policy
from controlplane.errors import InvalidInput


def load_policy(text: bytes, *, file: str, model: str) -> RolloutPolicy:
    """The policy ``file`` holds; InvalidInput (``invalid_rollout_policy``) naming the file and problem."""
    try:
        # safe_load builds plain data only: no tag of the file can construct an object or run code.
        data = yaml.safe_load(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidInput(
            f"{file}: the file is not UTF-8 text", code="invalid_rollout_policy", details={"file": file}
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidInput(
            f"{file}: not valid YAML{where}: {problem}",
            code="invalid_rollout_policy",
            details={"file": file},
        ) from None
    return parse_rollout_policy(data, file=file, model=model)
