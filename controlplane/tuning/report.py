"""A tuning run's results as text: a table and an ASCII chart of throughput against p99.

Pure functions of the domain's ``Trial`` objects, shared by the CLI (which
rebuilds them from the API's JSON with ``Trial.from_dict``) and the
benchmark. Figures relative to the baseline (the version's own
configuration, trial 0) are ratios of the same run, the only comparison a
shared machine allows.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence

from controlplane.domain.tuning import Trial

_MARKS = string.digits + string.ascii_letters
BEST_MARK = "*"
OBJECTIVE_MARK = "|"


def mark_of(trial: Trial) -> str:
    """The character that stands for ``trial`` in the chart (``+`` past 0-9, a-z, A-Z)."""
    return _MARKS[trial.index] if trial.index < len(_MARKS) else "+"


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _verdict(trial: Trial, p99_ms: float, best: Trial | None) -> str:
    if trial.failure is not None:
        return "not loaded"
    m = trial.measurement
    if m is None:
        return "not measured"
    if m.errors:
        return "errors"
    if best is not None and trial.index == best.index:
        return "BEST"
    return "meets" if trial.meets(p99_ms) else "over objective"


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value is not None and base else "-"


def table(trials: Sequence[Trial], *, p99_ms: float, best: Trial | None = None) -> list[str]:
    """A line per trial, baseline first: configuration, figures, their ratios to the baseline's, verdict."""
    baseline = next((t.measurement for t in trials if t.baseline and t.measurement is not None), None)
    names = {t.index: t.config.describe() + (" (default)" if t.baseline else "") for t in trials}
    width = max([len(n) for n in names.values()] + [len("configuration")])
    lines = [
        f"{'#':>3}  {'configuration':<{width}}  {'req/s':>9}  {'p50 ms':>8}  {'p99 ms':>8}  "
        f"{'errors':>6}  {'req/s x':>8}  {'p99 x':>7}  objective"
    ]
    for trial in sorted(trials, key=lambda t: t.index):
        m = trial.measurement
        rps, p50, p99 = (m.throughput_rps, m.p50_ms, m.p99_ms) if m is not None else (None, None, None)
        lines.append(
            f"{trial.index:>3}  {names[trial.index]:<{width}}  {_number(rps, 1):>9}  {_number(p50):>8}  "
            f"{_number(p99):>8}  {'-' if m is None else m.errors:>6}  "
            f"{_ratio(rps, baseline.throughput_rps if baseline else None):>8}  "
            f"{_ratio(p99, baseline.p99_ms if baseline else None):>7}  {_verdict(trial, p99_ms, best)}"
        )
        if trial.failure is not None:
            lines.append(f"     {trial.failure}")
        elif m is not None and m.first_error:
            lines.append(f"     first error: {m.first_error}")
    return lines


def chart(
    trials: Sequence[Trial],
    *,
    p99_ms: float,
    best: Trial | None = None,
    width: int = 60,
    height: int = 14,
) -> list[str]:
    """Throughput (up) against p99 (right), a mark per measured trial, the objective as a vertical line.

    Marks are the trials' numbers (``mark_of``); the best one is ``*``. Where
    two trials share a cell, the best shows, then the default configuration,
    then the later trial.
    """
    points = [
        (t, t.measurement.p99_ms, t.measurement.throughput_rps)
        for t in trials
        if t.measurement is not None and t.measurement.p99_ms is not None and t.measurement.requests > 0
    ]
    if not points:
        return ["(nothing was measured)"]
    x_max = max([p for _t, p, _r in points] + [p99_ms]) * 1.1
    y_max = max(r for _t, _p, r in points) * 1.1 or 1.0

    def column(x: float) -> int:
        return min(width - 1, max(0, round(x / x_max * (width - 1))))

    def row(y: float) -> int:
        return min(height - 1, max(0, round(y / y_max * (height - 1))))

    grid = [[" "] * width for _ in range(height)]
    objective = column(p99_ms)
    for line in grid:
        line[objective] = OBJECTIVE_MARK

    def drawing_order(point: tuple[Trial, float, float]) -> tuple[bool, bool, int]:
        trial = point[0]
        return (best is not None and trial.index == best.index, trial.baseline, trial.index)

    for trial, p99, rps in sorted(points, key=drawing_order):
        mark = BEST_MARK if best is not None and trial.index == best.index else mark_of(trial)
        grid[height - 1 - row(rps)][column(p99)] = mark
    label_width = max(len(f"{y_max:.0f}"), len("req/s"))
    lines = [f"{'req/s':>{label_width}}"]
    for index, cells in enumerate(grid):
        value = y_max * (height - 1 - index) / (height - 1)
        label = f"{value:.0f}" if index in (0, height // 2, height - 1) else ""
        lines.append(f"{label:>{label_width}} |{''.join(cells)}")
    lines.append(f"{'':>{label_width}} +{'-' * width}")
    right = f"{x_max:.1f}"
    lines.append(f"{'':>{label_width}}  0{'p99 ms':^{width - 1 - len(right)}}{right}")
    legend = f"{OBJECTIVE_MARK} objective p99 <= {p99_ms:g} ms   0 the default configuration"
    if best is not None:
        legend += f"   {BEST_MARK} the best (#{best.index})"
    lines.append(f"{'':>{label_width}}  {legend}")
    return lines


def ratios(best: Trial, baseline: Trial | None) -> str:
    """``throughput 1.84x, p99 0.61x the default's`` (or why there is no ratio)."""
    if baseline is None or baseline.measurement is None or best.measurement is None:
        return "no baseline measured"
    b, m = baseline.measurement, best.measurement
    parts = []
    if b.throughput_rps > 0:
        parts.append(f"throughput {m.throughput_rps / b.throughput_rps:.2f}x")
    if b.p99_ms and m.p99_ms is not None and math.isfinite(b.p99_ms):
        parts.append(f"p99 {m.p99_ms / b.p99_ms:.2f}x")
    return (", ".join(parts) + " the default configuration's") if parts else "no baseline figures"
