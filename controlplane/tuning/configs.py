"""A version's config.pbtxt with another batching configuration, through Triton's own protobuf schema.

Parsed with tritonclient's ``model_config_pb2`` (as at push) and written
back with protobuf's text format, so every field the tuner does not change
(inputs, outputs, backend, parameters, warm-up, the queue policy of dynamic
batching...) stays exactly what it was. What it changes:

* ``dynamic_batching.max_queue_delay_microseconds`` and
  ``preferred_batch_size`` (dynamic batching is turned on when a swept
  configuration needs it; the baseline may have it off);
* the ``count`` of every ``instance_group`` (one group, kind unset so that
  Triton picks it as for a config without groups, when there is none);
* the onnxruntime backend's ``intra_op_thread_count`` parameter, when the
  configuration sets threads (other parameters stay);
* ``name``, when a name is given (candidates load under the tuning name).
"""

from __future__ import annotations

from google.protobuf import text_format

from controlplane.artifacts.model_config import parse_model_config
from controlplane.artifacts.protobuf_modules import model_config_pb2
from controlplane.domain.tuning import BatchingConfig

DEFAULT_INSTANCE_COUNT = 1
THREADS_PARAMETER = "intra_op_thread_count"


def read_config(text: str) -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt text (InvalidModelConfig names the problem)."""
    return parse_model_config(text)


def batching_of(config: model_config_pb2.ModelConfig) -> BatchingConfig:
    """The batching configuration ``config`` declares (instance count: its first group's, else Triton's 1)."""
    delay: int | None = None
    preferred: tuple[int, ...] = ()
    if config.HasField("dynamic_batching"):
        delay = int(config.dynamic_batching.max_queue_delay_microseconds)
        preferred = tuple(int(s) for s in config.dynamic_batching.preferred_batch_size)
    count = DEFAULT_INSTANCE_COUNT
    if config.instance_group and config.instance_group[0].count > 0:
        count = int(config.instance_group[0].count)
    threads: int | None = None
    if THREADS_PARAMETER in config.parameters:
        text = config.parameters[THREADS_PARAMETER].string_value.strip()
        threads = int(text) if text.isdigit() else None
    return BatchingConfig(
        max_queue_delay_us=delay,
        preferred_batch_sizes=preferred,
        instance_count=count,
        backend_threads=threads,
    )


def with_batching(
    config: model_config_pb2.ModelConfig, batching: BatchingConfig, *, name: str | None = None
) -> model_config_pb2.ModelConfig:
    """A copy of ``config`` with ``batching`` applied (and ``name`` when given)."""
    tuned = model_config_pb2.ModelConfig()
    tuned.CopyFrom(config)
    if name is not None:
        tuned.name = name
    if batching.max_queue_delay_us is None:
        tuned.ClearField("dynamic_batching")
    else:
        tuned.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
        del tuned.dynamic_batching.preferred_batch_size[:]
        tuned.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
    if not tuned.instance_group:
        tuned.instance_group.add()
    for group in tuned.instance_group:
        group.count = batching.instance_count
    if batching.backend_threads is not None:
        tuned.parameters[THREADS_PARAMETER].string_value = str(batching.backend_threads)
    return tuned


def render_config(
    config: model_config_pb2.ModelConfig, batching: BatchingConfig, *, name: str | None = None
) -> str:
    """config.pbtxt text of ``config`` with ``batching`` applied (and ``name`` when given)."""
    return text_format.MessageToString(with_batching(config, batching, name=name))
