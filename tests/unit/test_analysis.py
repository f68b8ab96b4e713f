"""Canary analysis rules: gates, windows between two samples, verdicts."""

from __future__ import annotations

import json
import math

import pytest

from controlplane.domain.analysis import (
    Gates,
    Measurement,
    OnNoData,
    PoolSample,
    StepMove,
    Verdict,
    evaluate,
    measure,
    next_look,
    next_move,
)
from controlplane.errors import InvalidInput


def sample(
    at: float = 0.0,
    *,
    proxy_requests: int = 0,
    proxy_errors: int = 0,
    triton_success: int = 0,
    triton_failure: int = 0,
    p99_us: float | None = None,
) -> PoolSample:
    return PoolSample(
        at=at,
        proxy_requests=proxy_requests,
        proxy_errors=proxy_errors,
        triton_success=triton_success,
        triton_failure=triton_failure,
        p99_us=p99_us,
    )


def window(requests: int, errors: int, *, p99_us: float | None = None) -> Measurement:
    """A measurement where both sources agree on ``requests`` and ``errors``."""
    before = sample(10.0, proxy_requests=1000, proxy_errors=3, triton_success=990, triton_failure=3)
    after = sample(
        40.0,
        proxy_requests=1000 + requests,
        proxy_errors=3 + errors,
        triton_success=990 + requests - errors,
        triton_failure=3 + errors,
        p99_us=p99_us,
    )
    return measure(before, after)


# -- Gates ---------------------------------------------------------------------------------


def test_default_gates_check_nothing_and_need_twenty_requests() -> None:
    gates = Gates()
    assert gates.max_error_rate is None
    assert gates.max_p99_ms is None
    assert gates.min_requests == 20
    gates.validate()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_error_rate": -0.01},
        {"max_error_rate": 1.5},
        {"max_error_rate": math.nan},
        {"max_error_rate": True},
        {"max_error_rate": "0.05"},
        {"max_p99_ms": 0},
        {"max_p99_ms": -5.0},
        {"max_p99_ms": math.inf},
        {"max_p99_ms": math.nan},
        {"min_requests": -1},
        {"min_requests": 2.5},
        {"min_requests": False},
    ],
)
def test_invalid_gates_are_refused_with_code_invalid_gates(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput) as info:
        Gates(**kwargs)  # type: ignore[arg-type]
    assert info.value.code == "invalid_gates"
    assert next(iter(kwargs)) in info.value.message


def test_invalid_gates_error_names_every_problem() -> None:
    with pytest.raises(InvalidInput) as info:
        Gates(max_error_rate=2.0, max_p99_ms=-1.0, min_requests=-3)
    assert len(info.value.details["problems"]) == 3


@pytest.mark.parametrize("rate", [0, 0.0, 0.05, 1, 1.0])
def test_error_rate_bounds_zero_and_one_are_valid(rate: float) -> None:
    Gates(max_error_rate=rate).validate()


def test_gates_round_trip_through_as_dict() -> None:
    gates = Gates(max_error_rate=0.05, max_p99_ms=50.0, min_requests=10)
    assert Gates(**gates.as_dict()) == gates
    assert json.loads(json.dumps(gates.as_dict())) == gates.as_dict()


# -- PoolSample and measure ----------------------------------------------------------------


def test_sample_refuses_negative_counters() -> None:
    with pytest.raises(ValueError, match="proxy_errors"):
        sample(proxy_errors=-1)


def test_measure_diffs_counters_and_keeps_the_later_p99() -> None:
    before = sample(100.0, proxy_requests=50, proxy_errors=1, triton_success=45, triton_failure=1, p99_us=900)
    after = sample(
        130.5, proxy_requests=150, proxy_errors=4, triton_success=140, triton_failure=2, p99_us=1800
    )
    m = measure(before, after)
    assert m.proxy_requests == 100
    assert m.proxy_errors == 3
    assert m.triton_requests == 96
    assert m.triton_failures == 1
    assert m.requests == 100
    assert m.errors == 3
    assert m.error_rate == pytest.approx(0.03)
    assert m.p99_ms == pytest.approx(1.8)
    assert m.window_seconds == pytest.approx(30.5)
    assert not m.proxy_restarted
    assert not m.triton_restarted


def test_errors_are_the_max_of_both_sources_not_their_sum() -> None:
    # 5 backend exceptions: Triton counts them and HAProxy sees them as gRPC
    # errors too; 7 rejected requests only HAProxy sees.
    m = measure(
        sample(), sample(1.0, proxy_requests=100, proxy_errors=12, triton_success=88, triton_failure=5)
    )
    assert m.errors == 12
    m = measure(
        sample(), sample(1.0, proxy_requests=100, proxy_errors=2, triton_success=95, triton_failure=5)
    )
    assert m.errors == 5


def test_requests_are_the_max_of_both_sources_so_direct_traffic_counts() -> None:
    # Smoke tests straight to Triton are invisible to the proxy.
    m = measure(sample(), sample(1.0, proxy_requests=0, triton_success=8, triton_failure=2))
    assert m.requests == 10
    assert m.errors == 2
    assert m.error_rate == pytest.approx(0.2)


def test_error_rate_is_zero_without_requests() -> None:
    m = measure(sample(), sample(5.0))
    assert m.requests == 0
    assert m.error_rate == 0.0


def test_p99_is_none_when_the_later_sample_has_none() -> None:
    assert measure(sample(p99_us=5000.0), sample(1.0)).p99_ms is None


def test_proxy_counter_reset_counts_only_what_followed_the_restart() -> None:
    before = sample(0.0, proxy_requests=5000, proxy_errors=40, triton_success=100)
    after = sample(30.0, proxy_requests=60, proxy_errors=3, triton_success=150)
    m = measure(before, after)
    assert m.proxy_restarted
    assert not m.triton_restarted
    assert (m.proxy_requests, m.proxy_errors) == (60, 3)
    assert m.triton_requests == 50


def test_one_counter_going_back_resets_its_whole_source() -> None:
    # Errors grew 2 -> 4 but requests fell: HAProxy restarted, so all 4 errors are new.
    m = measure(sample(proxy_requests=500, proxy_errors=2), sample(1.0, proxy_requests=30, proxy_errors=4))
    assert m.proxy_restarted
    assert (m.proxy_requests, m.proxy_errors) == (30, 4)


def test_triton_counter_reset_counts_only_what_followed_the_restart() -> None:
    before = sample(0.0, proxy_requests=100, triton_success=900, triton_failure=9)
    after = sample(30.0, proxy_requests=130, triton_success=25, triton_failure=1)
    m = measure(before, after)
    assert m.triton_restarted
    assert not m.proxy_restarted
    assert (m.triton_requests, m.triton_failures) == (26, 1)
    assert m.requests == 30


def test_measure_refuses_samples_out_of_order() -> None:
    with pytest.raises(ValueError, match="out of order"):
        measure(sample(10.0), sample(9.0))


def test_measurement_as_dict_is_json_ready_and_includes_the_error_rate() -> None:
    d = window(200, 10, p99_us=12_345.0).as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["requests"] == 200
    assert d["errors"] == 10
    assert d["error_rate"] == pytest.approx(0.05)
    assert d["p99_ms"] == pytest.approx(12.345)
    assert d["window_seconds"] == pytest.approx(30.0)


# -- evaluate ------------------------------------------------------------------------------


def test_error_rate_above_the_gate_fails_with_a_readable_breach() -> None:
    verdict = evaluate(window(100, 31), Gates(max_error_rate=0.05))
    assert not verdict.passed
    assert verdict.breaches == ("error rate 0.31 > max 0.05 (31 of 100 requests)",)


def test_error_rate_at_the_gate_passes() -> None:
    verdict = evaluate(window(100, 5), Gates(max_error_rate=0.05))
    assert verdict.passed
    assert verdict.breaches == ()


def test_zero_error_rate_gate_fails_on_a_single_error() -> None:
    verdict = evaluate(window(1000, 1), Gates(max_error_rate=0.0))
    assert not verdict.passed
    assert verdict.breaches == ("error rate 0.001 > max 0 (1 of 1000 requests)",)


def test_p99_above_the_gate_fails_with_a_readable_breach() -> None:
    verdict = evaluate(window(100, 0, p99_us=182_000), Gates(max_p99_ms=50))
    assert not verdict.passed
    assert verdict.breaches == ("p99 182.0 ms > max 50.0 ms",)


def test_both_gates_breached_are_both_reported() -> None:
    verdict = evaluate(window(100, 31, p99_us=182_000), Gates(max_error_rate=0.05, max_p99_ms=50))
    assert verdict.breaches == (
        "error rate 0.31 > max 0.05 (31 of 100 requests)",
        "p99 182.0 ms > max 50.0 ms",
    )


def test_healthy_window_passes_without_notes() -> None:
    verdict = evaluate(window(500, 2, p99_us=4_000), Gates(max_error_rate=0.01, max_p99_ms=50))
    assert verdict == Verdict(passed=True, measurement=verdict.measurement, breaches=(), notes=())


def test_too_few_requests_neither_pass_nor_breach_but_wait_with_a_note() -> None:
    verdict = evaluate(window(12, 1), Gates(max_error_rate=0.05, min_requests=20))
    assert not verdict.passed
    assert not verdict.evidence
    assert verdict.waiting
    assert verdict.breaches == ()
    assert verdict.notes == (
        "insufficient traffic: 12 requests < min 20 (1 failed); the gates wait for more",
    )


def test_no_traffic_at_all_is_no_pass() -> None:
    verdict = evaluate(window(0, 0), Gates(max_error_rate=0.05))
    assert not verdict.passed
    assert verdict.waiting
    assert "insufficient traffic: 0 requests" in verdict.notes[0]


def test_no_traffic_is_no_pass_even_without_any_threshold() -> None:
    verdict = evaluate(window(3, 0), Gates())
    assert not verdict.passed
    assert verdict.waiting


def test_min_requests_zero_passes_a_window_without_traffic() -> None:
    verdict = evaluate(window(0, 0), Gates(max_error_rate=0.05, min_requests=0))
    assert verdict.passed
    assert verdict.evidence


def test_too_few_requests_still_fail_when_the_errors_alone_breach_at_min_requests() -> None:
    # 5 of 5 failed: even 15 more successes would leave 5 of 20 = 0.25 > 0.05.
    verdict = evaluate(window(5, 5), Gates(max_error_rate=0.05, min_requests=20))
    assert not verdict.passed
    assert verdict.breaches == (
        "5 of 5 requests failed: error rate 0.25 > max 0.05 even counted over the minimum of 20 requests",
    )


def test_min_requests_zero_always_applies_the_error_rate_gate() -> None:
    verdict = evaluate(window(1, 1), Gates(max_error_rate=0.5, min_requests=0))
    assert verdict.breaches == ("error rate 1 > max 0.5 (1 of 1 requests)",)


def test_unknown_p99_passes_the_latency_gate_with_a_note() -> None:
    verdict = evaluate(window(100, 0, p99_us=None), Gates(max_p99_ms=50))
    assert verdict.passed
    assert "p99 unknown" in verdict.notes[0]


def test_latency_gate_waits_for_min_requests_as_a_p99_of_three_requests_is_their_slowest() -> None:
    verdict = evaluate(window(3, 0, p99_us=90_000), Gates(max_p99_ms=50, min_requests=20))
    assert verdict.breaches == ()
    assert verdict.waiting
    verdict = evaluate(window(20, 0, p99_us=90_000), Gates(max_p99_ms=50, min_requests=20))
    assert verdict.breaches == ("p99 90.0 ms > max 50.0 ms",)


def test_no_gates_pass_on_traffic_alone_with_a_note() -> None:
    verdict = evaluate(window(100, 100), Gates())
    assert verdict.passed
    assert verdict.notes == ("no gates configured; only the traffic (min 20 requests) was checked",)


def test_restarts_are_noted_in_the_verdict() -> None:
    m = measure(
        sample(proxy_requests=900, triton_success=800),
        sample(1.0, proxy_requests=40, triton_success=30),
    )
    verdict = evaluate(m, Gates(max_error_rate=0.05))
    assert verdict.passed
    assert any("HAProxy restarted" in note for note in verdict.notes)
    assert any("Triton's counters went backwards" in note for note in verdict.notes)


def test_verdict_as_dict_is_json_ready() -> None:
    verdict = evaluate(window(100, 31, p99_us=182_000), Gates(max_error_rate=0.05))
    d = verdict.as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["passed"] is False
    assert d["measurement"]["errors"] == 31


# -- relative gates ------------------------------------------------------------------------


def test_a_candidate_worse_than_the_baseline_by_more_than_the_increase_breaches_under_the_absolute_gate() -> (
    None
):
    gates = Gates(max_error_rate=0.10, max_error_rate_increase=0.02, min_requests=20)
    verdict = evaluate(window(100, 5), gates, baseline=window(400, 4))
    assert not verdict.passed
    assert verdict.breaches == (
        "error rate increase 0.04 > max 0.02 (candidate 0.05: 5 of 100 requests;"
        " baseline 0.01: 4 of 400 requests)",
    )


def test_a_candidate_as_good_as_the_baseline_passes_the_relative_error_gate() -> None:
    gates = Gates(max_error_rate_increase=0.02, min_requests=20)
    verdict = evaluate(window(100, 5), gates, baseline=window(400, 16))
    assert verdict.passed
    assert verdict.baseline is not None and verdict.baseline.requests == 400


def test_a_candidate_slower_than_the_baseline_by_more_than_the_ratio_breaches_under_the_absolute_gate() -> (
    None
):
    gates = Gates(max_p99_ms=100.0, max_p99_ratio=1.5, min_requests=20)
    verdict = evaluate(window(100, 0, p99_us=24_000), gates, baseline=window(300, 0, p99_us=4_000))
    assert verdict.breaches == ("p99 ratio 6.00 > max 1.50 (candidate 24.0 ms, baseline 4.0 ms)",)


def test_a_p99_within_the_ratio_passes() -> None:
    gates = Gates(max_p99_ratio=1.5, min_requests=20)
    verdict = evaluate(window(100, 0, p99_us=5_000), gates, baseline=window(300, 0, p99_us=4_000))
    assert verdict.passed


def test_a_baseline_with_too_little_traffic_skips_the_relative_gates_with_notes() -> None:
    gates = Gates(max_error_rate_increase=0.0, max_p99_ratio=1.0, min_requests=20)
    verdict = evaluate(window(100, 50, p99_us=90_000), gates, baseline=window(5, 0, p99_us=1_000))
    assert verdict.passed
    assert verdict.notes == (
        "baseline has too little traffic: 5 requests < min 20; error rate increase gate not applied",
        "baseline has too little traffic: 5 requests < min 20; p99 ratio gate not applied",
    )


def test_a_baseline_without_traffic_is_no_yardstick_even_with_min_requests_zero() -> None:
    verdict = evaluate(
        window(10, 5), Gates(max_error_rate_increase=0.0, min_requests=0), baseline=window(0, 0)
    )
    assert verdict.passed
    assert "baseline has too little traffic: 0 requests < min 1" in verdict.notes[0]


def test_a_baseline_without_p99_skips_the_ratio_gate_with_a_note() -> None:
    gates = Gates(max_p99_ratio=1.2, min_requests=20)
    verdict = evaluate(window(100, 0, p99_us=50_000), gates, baseline=window(100, 0, p99_us=None))
    assert verdict.passed
    assert verdict.notes == (
        "baseline p99 unknown (Triton reported no recent request durations); p99 ratio gate not applied",
    )


def test_relative_gates_without_a_baseline_measurement_are_skipped_with_a_note() -> None:
    verdict = evaluate(window(100, 50), Gates(max_error_rate_increase=0.01, min_requests=20))
    assert verdict.passed
    assert verdict.notes == ("no baseline measured; error rate increase gate not applied",)


def test_errors_already_seen_breach_the_relative_gate_before_the_evidence_is_complete() -> None:
    # 4 failed of 5: even over 20 requests the rate is 0.2, 0.19 above the baseline's 0.01.
    gates = Gates(max_error_rate_increase=0.05, min_requests=20)
    verdict = evaluate(window(5, 4), gates, baseline=window(100, 1))
    assert not verdict.passed
    assert verdict.breaches == (
        "4 of 5 requests failed: error rate 0.2 even counted over the minimum of 20 requests,"
        " an increase of 0.19 > max 0.05 (baseline 0.01: 1 of 100 requests)",
    )


def test_relative_gates_wait_for_the_candidates_evidence() -> None:
    gates = Gates(max_error_rate_increase=0.05, max_p99_ratio=1.1, min_requests=20)
    verdict = evaluate(window(5, 0, p99_us=80_000), gates, baseline=window(100, 1, p99_us=1_000))
    assert verdict.breaches == ()
    assert verdict.waiting


def test_verdict_as_dict_holds_both_measurements() -> None:
    gates = Gates(max_error_rate_increase=0.5)
    d = evaluate(window(100, 2), gates, baseline=window(50, 1)).as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["measurement"]["requests"] == 100
    assert d["baseline"]["requests"] == 50
    assert d["evidence"] is True


# -- what a step does next -----------------------------------------------------------------


def _waiting() -> Verdict:
    return evaluate(window(3, 0), Gates(max_error_rate=0.05, min_requests=20))


def test_a_step_passes_on_evidence_and_rolls_back_on_a_breach_whatever_it_held() -> None:
    gates = Gates(max_error_rate=0.05, min_requests=20)
    assert next_move(evaluate(window(50, 0), gates), gates, held_seconds=0.0) is StepMove.PASS
    assert next_move(evaluate(window(50, 10), gates), gates, held_seconds=999.0) is StepMove.BREACH


def test_a_step_without_evidence_holds_until_max_hold_seconds() -> None:
    gates = Gates(max_error_rate=0.05, min_requests=20, max_hold_seconds=60.0)
    assert next_move(_waiting(), gates, held_seconds=0.0) is StepMove.HOLD
    assert next_move(_waiting(), gates, held_seconds=59.9) is StepMove.HOLD
    assert next_move(_waiting(), gates, held_seconds=60.0) is StepMove.ABORT


@pytest.mark.parametrize(
    ("on_no_data", "move"),
    [(OnNoData.ABORT, StepMove.ABORT), (OnNoData.PROMOTE, StepMove.PROMOTE), (OnNoData.HOLD, StepMove.HOLD)],
)
def test_after_the_hold_on_no_data_decides(on_no_data: OnNoData, move: StepMove) -> None:
    gates = Gates(max_error_rate=0.05, min_requests=20, max_hold_seconds=60.0, on_no_data=on_no_data)
    assert next_move(_waiting(), gates, held_seconds=61.0) is move


def test_a_zero_hold_applies_on_no_data_at_the_first_window_without_evidence() -> None:
    gates = Gates(min_requests=20, max_hold_seconds=0.0, on_no_data=OnNoData.PROMOTE)
    assert next_move(_waiting(), gates, held_seconds=0.0) is StepMove.PROMOTE


def test_a_holding_step_looks_again_after_a_step_cut_at_the_hold_limit() -> None:
    gates = Gates(max_hold_seconds=50.0)
    assert next_look(gates, step_seconds=30.0, held_seconds=0.0) == 30.0
    assert next_look(gates, step_seconds=30.0, held_seconds=30.0) == 20.0
    # Past the limit (on_no_data=hold): a step at a time.
    assert next_look(gates, step_seconds=30.0, held_seconds=80.0) == 30.0
