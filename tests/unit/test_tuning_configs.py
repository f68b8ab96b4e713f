"""A version's config.pbtxt with another batching configuration, and the tuning report (table, chart)."""

from __future__ import annotations

from controlplane.artifacts.model_config import parse_model_config, read_signature
from controlplane.domain.tuning import BatchingConfig, Measurement, Trial
from controlplane.tuning.configs import batching_of, read_config, render_config
from controlplane.tuning.report import chart, ratios, table

CONFIG = """name: "mlp"
max_batch_size: 64
input { name: "INPUT0" data_type: TYPE_FP32 dims: 16 }
output { name: "OUTPUT0" data_type: TYPE_FP32 dims: 4 }
instance_group { count: 1 kind: KIND_CPU }
dynamic_batching {
  priority_levels: 2
  default_priority_level: 1
}
parameters { key: "threads" value: { string_value: "1" } }
backend: "onnxruntime"
"""

TUNED = BatchingConfig(max_queue_delay_us=500, preferred_batch_sizes=(8,), instance_count=3)


def test_rendering_sets_the_delay_the_preferred_size_the_instance_count_and_the_name() -> None:
    text = render_config(read_config(CONFIG), TUNED, name="mlp~tune")

    parsed = parse_model_config(text)
    assert parsed.name == "mlp~tune"
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(parsed.dynamic_batching.preferred_batch_size) == [8]
    assert [g.count for g in parsed.instance_group] == [3]
    assert batching_of(parsed) == TUNED


def test_rendering_keeps_every_field_it_does_not_tune() -> None:
    original = read_config(CONFIG)

    parsed = parse_model_config(render_config(original, TUNED))

    assert parsed.name == "mlp"
    assert parsed.dynamic_batching.priority_levels == 2
    assert parsed.dynamic_batching.default_priority_level == 1
    assert parsed.instance_group[0].kind == original.instance_group[0].kind
    assert parsed.parameters["threads"].string_value == "1"
    assert read_signature(render_config(original, TUNED).encode(), model_name="mlp") == read_signature(
        CONFIG.encode(), model_name="mlp"
    )


def test_rendering_threads_sets_the_native_backends_parameter_and_keeps_the_others() -> None:
    threaded = BatchingConfig(
        max_queue_delay_us=500, preferred_batch_sizes=(), instance_count=1, backend_threads=2
    )

    parsed = parse_model_config(render_config(read_config(CONFIG), threaded))

    assert parsed.parameters["intra_op_thread_count"].string_value == "2"
    assert parsed.parameters["threads"].string_value == "1"
    assert batching_of(parsed) == threaded
    assert batching_of(read_config(CONFIG)).backend_threads is None


def test_a_config_without_a_name_keeps_none_unless_one_is_given() -> None:
    nameless = read_config(CONFIG.replace('name: "mlp"\n', ""))

    assert parse_model_config(render_config(nameless, TUNED)).name == ""
    assert parse_model_config(render_config(nameless, TUNED, name="mlp~tune")).name == "mlp~tune"


def test_a_config_without_batching_or_groups_gets_them_and_its_own_configuration_reads_as_such() -> None:
    bare = read_config(
        'max_batch_size: 8\ninput { name: "A" data_type: TYPE_FP32 dims: 2 }\n'
        'output { name: "B" data_type: TYPE_FP32 dims: 2 }\nbackend: "onnxruntime"\n'
    )

    assert batching_of(bare) == BatchingConfig(
        max_queue_delay_us=None, preferred_batch_sizes=(), instance_count=1
    )
    parsed = parse_model_config(render_config(bare, TUNED))
    assert parsed.HasField("dynamic_batching")
    assert [g.count for g in parsed.instance_group] == [3]


def test_the_baseline_renders_back_to_the_same_configuration() -> None:
    original = read_config(CONFIG)

    assert parse_model_config(render_config(original, batching_of(original))) == original


def test_turning_batching_off_as_a_baseline_may_declare_removes_dynamic_batching() -> None:
    off = BatchingConfig(max_queue_delay_us=None, preferred_batch_sizes=(), instance_count=1)

    assert not parse_model_config(render_config(read_config(CONFIG), off)).HasField("dynamic_batching")


# -- the report ------------------------------------------------------------------------------


def _trials() -> list[Trial]:
    def trial(index: int, delay: int, rps: float, p99: float, errors: int = 0) -> Trial:
        return Trial(
            index=index,
            config=BatchingConfig(max_queue_delay_us=delay, preferred_batch_sizes=(), instance_count=1),
            measurement=Measurement(
                requests=int(rps * 2), errors=errors, seconds=2.0, p50_ms=p99 / 3, p99_ms=p99
            ),
        )

    return [
        trial(0, 0, 1000, 4.0),
        trial(1, 100, 1500, 6.0),
        trial(2, 2000, 2500, 20.0),
        trial(3, 50, 800, 1, 3),
    ]


def test_the_table_has_a_line_per_configuration_with_its_ratios_to_the_default_and_its_verdict() -> None:
    trials = _trials()

    lines = table(trials, p99_ms=10, best=trials[1])

    assert len(lines) == 1 + 4  # a header, then the trials
    assert "(default)" in lines[1] and "1.00x    1.00x" in lines[1]
    assert "1.50x    1.50x" in lines[2] and lines[2].endswith("BEST")
    assert "2.50x    5.00x" in lines[3] and lines[3].endswith("over objective")
    assert "0.80x    0.25x" in lines[4] and lines[4].endswith("errors")


def test_the_chart_marks_each_configuration_the_best_and_the_objective() -> None:
    trials = _trials()

    lines = chart(trials, p99_ms=10, best=trials[1], width=40, height=10)

    rows = [line.split("|", 1)[1] for line in lines[1:11]]  # the plot area, right of the axis
    plot = "".join(rows)
    assert plot.count("*") == 1  # the best
    assert all(plot.count(mark) == 1 for mark in "023")
    assert "1" not in plot  # drawn as the best instead
    objective = {row.index("|") for row in rows}
    assert len(objective) == 1  # one vertical line...
    assert all(row.count("|") == 1 for row in rows)  # ...over every row
    assert "objective p99 <= 10 ms" in lines[-1]


def test_the_chart_of_nothing_measured_says_so() -> None:
    failed = Trial(index=1, config=TUNED, failure="did not load")

    assert chart([failed], p99_ms=10) == ["(nothing was measured)"]


def test_ratios_compare_the_best_with_the_default() -> None:
    trials = _trials()

    assert ratios(trials[1], trials[0]) == "throughput 1.50x, p99 1.50x the default configuration's"
