"""Tuning rules: the sweep plan and its bounds, the choice of the best configuration, names, provenance."""

from __future__ import annotations

import json

import pytest

from controlplane.domain.models import validate_model_name
from controlplane.domain.tuning import (
    MAX_CONFIGURATIONS,
    BatchingConfig,
    Measurement,
    Provenance,
    SweepSpec,
    Trial,
    choose_best,
    plan,
    tuned_model_of,
    tuning_model_name,
)
from controlplane.errors import ControlPlaneError, InvalidInput


def _trial(
    index: int, rps: float, p99: float | None, *, errors: int = 0, failure: str | None = None
) -> Trial:
    config = BatchingConfig(max_queue_delay_us=100 * index, preferred_batch_sizes=(), instance_count=1)
    if failure is not None:
        return Trial(index=index, config=config, failure=failure)
    measurement = Measurement(
        requests=int(rps * 2), errors=errors, seconds=2.0, p50_ms=None if p99 is None else p99 / 2, p99_ms=p99
    )
    return Trial(index=index, config=config, measurement=measurement)


# -- the plan -------------------------------------------------------------------------------


def test_the_plan_is_the_product_of_instance_counts_preferred_sizes_and_delays_in_that_order() -> None:
    spec = SweepSpec(p99_ms=10, delays_us=(0, 500), preferred_batch_sizes=(0, 8), instance_counts=(1, 2))

    configs = plan(spec, max_batch_size=64)

    assert [(c.instance_count, c.preferred_batch_sizes, c.max_queue_delay_us) for c in configs] == [
        (1, (), 0),
        (1, (), 500),
        (1, (8,), 0),
        (1, (8,), 500),
        (2, (), 0),
        (2, (), 500),
        (2, (8,), 0),
        (2, (8,), 500),
    ]


def test_threads_of_the_onnxruntime_backend_are_the_outermost_dimension_and_are_described() -> None:
    spec = SweepSpec(p99_ms=10, delays_us=(0,), instance_counts=(1,), backend_threads=(1, 2, 0))

    configs = plan(spec, max_batch_size=64, backend="onnxruntime")

    assert [c.backend_threads for c in configs] == [1, 2, 0]
    assert [c.describe().split(", ")[-1] for c in configs] == [
        "1 thread",
        "2 threads",
        "onnxruntime's threads",
    ]
    assert [BatchingConfig.from_dict(c.as_dict()) for c in configs] == configs


def test_a_sweep_without_threads_keeps_each_versions_own_and_stores_as_before() -> None:
    (config,) = plan(SweepSpec(p99_ms=10, delays_us=(0,), instance_counts=(1,)), max_batch_size=8)

    assert config.backend_threads is None
    assert "thread" not in config.describe()
    assert "backend_threads" not in config.as_dict()


@pytest.mark.parametrize("backend", ["python", "pytorch", None])
def test_threads_for_a_backend_other_than_onnxruntime_are_refused_naming_it(backend: str | None) -> None:
    spec = SweepSpec(p99_ms=10, backend_threads=(2,))

    with pytest.raises(InvalidInput) as refused:
        plan(spec, max_batch_size=8, backend=backend)

    assert refused.value.code == "threads_not_supported"
    assert f"the {backend or 'unnamed'} backend" in refused.value.message


def test_a_thread_count_out_of_bounds_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"backend_threads: 65 is outside 0\.\.64"):
        plan(SweepSpec(p99_ms=10, backend_threads=(65,)), max_batch_size=8, backend="onnxruntime")


def test_repeated_values_are_swept_once() -> None:
    spec = SweepSpec(p99_ms=10, delays_us=(0, 0, 500), preferred_batch_sizes=(4, 4), instance_counts=(1, 1))

    assert len(plan(spec, max_batch_size=8)) == 2


def test_a_model_that_cannot_batch_is_refused_before_anything_runs() -> None:
    with pytest.raises(InvalidInput) as refused:
        plan(SweepSpec(p99_ms=10), max_batch_size=0)

    assert refused.value.code == "batching_not_supported"


def test_a_preferred_size_over_the_models_max_batch_size_is_refused_naming_it() -> None:
    with pytest.raises(InvalidInput) as refused:
        plan(SweepSpec(p99_ms=10, preferred_batch_sizes=(4, 16)), max_batch_size=8)

    assert refused.value.code == "invalid_tuning_request"
    assert "[16]" in refused.value.message


def test_a_sweep_over_the_configuration_limit_is_refused() -> None:
    delays = tuple(range(0, 1600, 100))  # 16 delays x 2 sizes x 2 counts = 64 configurations
    spec = SweepSpec(p99_ms=10, delays_us=delays, preferred_batch_sizes=(0, 4), instance_counts=(1, 2))

    with pytest.raises(InvalidInput) as refused:
        plan(spec, max_batch_size=8)

    assert f"at most {MAX_CONFIGURATIONS}" in refused.value.message


def test_a_sweep_measuring_for_too_long_in_all_is_refused() -> None:
    spec = SweepSpec(p99_ms=10, delays_us=tuple(range(16)), instance_counts=(1, 2), seconds_per_config=60)

    with pytest.raises(InvalidInput, match="measure for 1920 s"):
        plan(spec, max_batch_size=8)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"p99_ms": 0}, "p99_ms"),
        ({"p99_ms": float("nan")}, "p99_ms"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 100_000}, "concurrency"),
        ({"seconds_per_config": 0.1}, "seconds_per_config"),
        ({"seconds_per_config": 3600}, "seconds_per_config"),
        ({"delays_us": ()}, "delays_us"),
        ({"delays_us": (-1,)}, "delays_us"),
        ({"delays_us": (10_000_000,)}, "delays_us"),
        ({"instance_counts": (0,)}, "instance_counts"),
        ({"instance_counts": (64,)}, "instance_counts"),
        ({"preferred_batch_sizes": (-4,)}, "preferred_batch_sizes"),
    ],
)
def test_absurd_requests_are_refused_naming_the_field(change: dict[str, object], named: str) -> None:
    spec = SweepSpec(**{"p99_ms": 10.0, **change})  # type: ignore[arg-type]

    with pytest.raises(InvalidInput) as refused:
        spec.validate()

    assert refused.value.code == "invalid_tuning_request"
    assert named in refused.value.message


def test_warm_up_is_short_and_never_longer_than_half_the_measurement() -> None:
    assert SweepSpec(p99_ms=5, seconds_per_config=1.0).warmup_seconds == 0.5
    assert SweepSpec(p99_ms=5, seconds_per_config=30.0).warmup_seconds == 1.0


# -- the best -------------------------------------------------------------------------------


def test_the_best_is_the_highest_throughput_whose_p99_meets_the_objective() -> None:
    trials = [_trial(0, 500, 1.0), _trial(1, 900, 4.0), _trial(2, 1500, 9.5), _trial(3, 3000, 12.0)]

    best = choose_best(trials, p99_ms=10)

    assert best.index == 2


def test_the_default_configuration_competes_and_wins_when_nothing_swept_beats_it() -> None:
    trials = [_trial(0, 9999, 0.5), _trial(1, 100, 5.0)]

    best = choose_best(trials, p99_ms=10)

    assert best.index == 0 and best.baseline


def test_a_default_configuration_that_misses_the_objective_loses_to_a_slower_one_that_meets_it() -> None:
    trials = [_trial(0, 9999, 25.0), _trial(1, 100, 5.0)]

    assert choose_best(trials, p99_ms=10).index == 1


def test_equal_throughput_goes_to_the_lower_p99() -> None:
    trials = [_trial(1, 1000, 8.0), _trial(2, 1000, 3.0), _trial(3, 1000, 6.0)]

    assert choose_best(trials, p99_ms=10).index == 2


def test_a_configuration_with_failed_requests_or_that_did_not_load_is_never_chosen() -> None:
    trials = [
        _trial(1, 5000, 2.0, errors=1),
        _trial(2, 0, None, failure="out of memory"),
        _trial(3, 200, 9.0),
    ]

    assert choose_best(trials, p99_ms=10).index == 3


def test_when_no_configuration_meets_the_objective_the_error_says_how_close_the_best_came() -> None:
    trials = [
        _trial(0, 5000, 13.0),
        _trial(1, 900, 14.0),
        _trial(2, 1500, 12.5),
        _trial(3, 10, None, errors=5),
    ]

    with pytest.raises(ControlPlaneError) as refused:
        choose_best(trials, p99_ms=10)

    assert refused.value.code == "objective_not_met"
    assert "p99 <= 10 ms" in refused.value.message
    assert "12.50 ms" in refused.value.message
    assert "nothing was written" in refused.value.message
    assert refused.value.details["closest"]["index"] == 2


# -- names ----------------------------------------------------------------------------------


def test_the_tuning_name_is_one_the_registry_can_never_hold_so_it_never_replaces_a_model() -> None:
    name = tuning_model_name("mlp")

    assert name == "mlp~tune"
    with pytest.raises(InvalidInput):
        validate_model_name(name)


def test_a_tuning_folder_is_recognised_and_names_its_model() -> None:
    assert tuned_model_of(tuning_model_name("resnet.v2")) == "resnet.v2"
    assert tuned_model_of("mlp") is None
    assert tuned_model_of("mlp.tune") is None
    assert tuned_model_of("~tune") is None


# -- provenance -------------------------------------------------------------------------------


def test_provenance_labels_name_the_source_the_configuration_its_figures_the_objective_and_the_default() -> (
    None
):
    best = Trial(
        index=3,
        config=BatchingConfig(max_queue_delay_us=500, preferred_batch_sizes=(8,), instance_count=2),
        measurement=Measurement(requests=9000, errors=0, seconds=3.0, p50_ms=1.2, p99_ms=4.25),
    )
    baseline = Trial(
        index=0,
        config=BatchingConfig(max_queue_delay_us=0, preferred_batch_sizes=(), instance_count=1),
        measurement=Measurement(requests=3000, errors=0, seconds=3.0, p50_ms=2.0, p99_ms=6.5),
    )
    spec = SweepSpec(p99_ms=5, concurrency=16, seconds_per_config=3)

    labels = Provenance(tuned_from=1, run_id="abc123", best=best, baseline=baseline, spec=spec).labels()

    assert labels["tuning.tuned_from"] == "1"
    assert labels["tuning.run"] == "abc123"
    assert json.loads(labels["tuning.config"]) == {
        "instance_count": 2,
        "max_queue_delay_us": 500,
        "preferred_batch_sizes": [8],
    }
    assert labels["tuning.throughput_rps"] == "3000.0"
    assert labels["tuning.p99_ms"] == "4.250"
    assert labels["tuning.objective_p99_ms"] == "5"
    assert json.loads(labels["tuning.default_config"])["instance_count"] == 1
    assert labels["tuning.default_throughput_rps"] == "1000.0"
    assert labels["tuning.default_p99_ms"] == "6.500"
    assert "16 concurrent" in labels["tuning.load"]


def test_a_trial_survives_its_json_form() -> None:
    trial = _trial(4, 1234.5, 3.25, errors=2)

    assert Trial.from_dict(json.loads(json.dumps(trial.as_dict(10.0)))) == trial
