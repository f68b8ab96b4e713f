"""The accuracy gate: a candidate's metric against production's, as both versions' metadata state it.

Pure rules. ``Gates.metric`` names a metric of the versions' metadata (set at
push or later); the candidate may be worse than the version serving
production by at most ``Gates.metric_max_drop``, in the direction
``Gates.metric_lower_is_better`` says. A gate that cannot be judged is not
passed: a metric either version lacks refuses the rollout (``metric_missing``,
422: set the metric, then start again); a candidate worse by more than the
margin refuses it (``metric_worse``, 409: it conflicts with what serves).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.domain.analysis import Gates
from controlplane.errors import Conflict, InvalidInput


@dataclass(frozen=True)
class MetricComparison:
    """A judged metric: both values, how much worse the candidate is (negative: better) and the margin."""

    metric: str
    production: float
    candidate: float
    worse_by: float
    max_drop: float
    lower_is_better: bool

    def as_dict(self) -> dict[str, Any]:
        """The comparison as JSON-ready values."""
        return {
            "metric": self.metric,
            "production": self.production,
            "candidate": self.candidate,
            "worse_by": self.worse_by,
            "max_drop": self.max_drop,
            "lower_is_better": self.lower_is_better,
        }


def _exceeds(worse_by: float, max_drop: float) -> bool:
    # 0.95 - 0.94 is 0.01000...9 in binary floating point: a drop equal to the margin is within it.
    return worse_by > max_drop and not math.isclose(worse_by, max_drop, rel_tol=1e-9, abs_tol=1e-12)


def check_metric(
    gates: Gates,
    *,
    production: Mapping[str, float],
    candidate: Mapping[str, float],
    production_version: int,
    candidate_version: int,
) -> MetricComparison | None:
    """Judge ``gates.metric`` (None when no metric is gated); raise when the candidate may not roll out.

    InvalidInput ``metric_missing`` when either version lacks the metric,
    Conflict ``metric_worse`` when the candidate is worse by more than the margin.
    """
    metric = gates.metric
    if metric is None:
        return None
    lacking: list[tuple[str, int]] = []
    if metric not in candidate:
        lacking.append(("candidate", candidate_version))
    if metric not in production:
        lacking.append(("production", production_version))
    if lacking:
        who = " and ".join(
            f"{'the candidate' if side == 'candidate' else 'production'} (version {number})"
            for side, number in lacking
        )
        raise InvalidInput(
            f"metric {metric!r} cannot be judged: {who} has no value for it; set it with "
            "PATCH .../metadata (controlplane metrics set) and start again",
            code="metric_missing",
            details={
                "metric": metric,
                "missing_in": [side for side, _number in lacking],
                "production_version": production_version,
                "candidate_version": candidate_version,
            },
        )
    old, new = float(production[metric]), float(candidate[metric])
    worse_by = new - old if gates.metric_lower_is_better else old - new
    comparison = MetricComparison(
        metric=metric,
        production=old,
        candidate=new,
        worse_by=worse_by,
        max_drop=float(gates.metric_max_drop),
        lower_is_better=gates.metric_lower_is_better,
    )
    if _exceeds(worse_by, comparison.max_drop):
        direction = "higher" if gates.metric_lower_is_better else "lower"
        raise Conflict(
            f"metric {metric!r} of version {candidate_version} is {new:.6g}, {worse_by:.6g} {direction} "
            f"than production's {old:.6g} (version {production_version}): more than the margin of "
            f"{comparison.max_drop:.6g}",
            code="metric_worse",
            details={
                **comparison.as_dict(),
                "production_version": production_version,
                "candidate_version": candidate_version,
            },
        )
    return comparison
