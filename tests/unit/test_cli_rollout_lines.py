"""What ``controlplane rollout start --watch`` prints for a rollout's measurement events."""

from __future__ import annotations

from typing import Any

from controlplane.cli import _measurement_line


def _window(requests: int, errors: int, p99_ms: float | None = None) -> dict[str, Any]:
    return {"requests": requests, "errors": errors, "p99_ms": p99_ms}


def test_a_passed_window_shows_the_candidate_and_the_baseline() -> None:
    event = {
        "reason": "analysis passed",
        "measurements": {
            **_window(300, 1, 4.3),
            "passed": True,
            "move": "pass",
            "baseline": _window(2700, 3, 4.0),
            "notes": [],
        },
    }
    assert _measurement_line(event) == (
        "  analysis passed: 1 errors of 300 requests, p99 4.3 ms"
        " (baseline 3 errors of 2700 requests, p99 4.0 ms)"
    )


def test_a_holding_step_prints_its_reason_and_the_notes_that_matter() -> None:
    event = {
        "reason": "holding: 3 of 20 requests at step 1/3, 10 s held of max 300 s",
        "measurements": {
            **_window(3, 0),
            "passed": False,
            "move": "hold",
            "baseline": None,
            "notes": ["insufficient traffic: 3 requests < min 20 (0 failed); the gates wait for more"],
        },
    }
    assert _measurement_line(event) == "  holding: 3 of 20 requests at step 1/3, 10 s held of max 300 s"


def test_a_breach_names_the_gate_and_notes_follow_on_their_own_lines() -> None:
    event = {
        "reason": "p99 ratio 3.00 > max 1.50 (candidate 30.0 ms, baseline 10.0 ms)",
        "measurements": {
            **_window(300, 0, 30.0),
            "passed": False,
            "move": "breach",
            "baseline": _window(2700, 0, 10.0),
            "notes": [
                "HAProxy restarted during the candidate's window; its counters cover only the time since"
            ],
        },
    }
    assert _measurement_line(event) == (
        "  analysis BREACH: 0 errors of 300 requests, p99 30.0 ms (baseline 0 errors of 2700 requests,"
        " p99 10.0 ms): p99 ratio 3.00 > max 1.50 (candidate 30.0 ms, baseline 10.0 ms)\n"
        "    note: HAProxy restarted during the candidate's window; its counters cover only the time since"
    )


def test_an_event_recorded_before_relative_gates_still_reads_as_before() -> None:
    event = {"reason": "error rate 0.5 > max 0.01", "measurements": {**_window(100, 50), "passed": False}}
    assert (
        _measurement_line(event) == "  analysis BREACH: 50 errors of 100 requests: error rate 0.5 > max 0.01"
    )


def test_the_warm_up_report_shows_each_replicas_timings() -> None:
    event = {
        "reason": "candidate checks passed on green",
        "measurements": {
            "warmup": {
                "requests": 10,
                "replicas": {
                    "replica 1": {"first_ms": 312.0, "p50_ms": 2.1, "last_ms": 1.9, "total_ms": 331.5}
                },
                "model_warmup": True,
            }
        },
    }
    assert _measurement_line(event) == (
        "  warm-up: 10 requests per replica (the model also runs its own model_warmup at load);"
        " replica 1: first 312.0 ms, p50 2.1 ms, last 1.9 ms, 0.33 s in all"
    )


def test_events_without_measurements_print_nothing() -> None:
    assert _measurement_line({"reason": "staging the target pool", "measurements": {}}) is None
