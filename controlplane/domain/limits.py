"""Bounds on what a request may carry, so every value fits both databases. Pure rules.

PostgreSQL ``integer`` columns hold up to 2^31-1 and SQLite refuses anything
beyond 2^63-1 before the query runs; ids and version numbers are therefore
bounded to 1..2^31-1 at the edge. Text that reaches the registry may not hold
control characters (PostgreSQL refuses NUL outright; the others have no
meaning in a name, a label or a signer).
"""

from __future__ import annotations

import re

from controlplane.errors import InvalidInput

MAX_ID = 2**31 - 1
MAX_TEXT = 1024
MAX_LIST_ITEMS = 100

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_control_characters(value: str) -> bool:
    """Whether ``value`` holds a C0 or C1 control character (NUL, newline, escape...)."""
    return _CONTROL.search(value) is not None


def validate_text(value: str, *, what: str, max_length: int = MAX_TEXT) -> str:
    """Return ``value``, or raise InvalidInput if it is too long or holds a control character."""
    if len(value) > max_length:
        raise InvalidInput(f"{what} is longer than {max_length} characters", code=f"invalid_{what}")
    if has_control_characters(value):
        raise InvalidInput(f"{what} {value!r} holds a control character", code=f"invalid_{what}")
    return value
