"""Warm-up: inferences on every replica of a staged candidate before it gets traffic."""

from __future__ import annotations

from typing import Any

from controlplane.domain.models import ModelVersion
from controlplane.pools import Pool


def warm_up(pool: Pool, version: ModelVersion, requests: int) -> dict[str, Any]:
    """Send ``requests`` inferences to ``version`` on every replica of ``pool``; what was measured."""
    return {}
