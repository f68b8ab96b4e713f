"""Does the configuration a Triton runs match the config.pbtxt the control plane staged?

Triton completes a configuration when it loads a model (platform from the
backend, instance group names, default file name, preferred batch sizes...),
so the running configuration is a superset of the staged one. Drift is
therefore: a field the staged file sets whose running value differs
(compared recursively, element by element for repeated fields, key by key for
maps), or a change in one of the fields that decide which code and files run
(``backend``, ``platform``, ``default_model_filename``, ``runtime``,
``model_repository_agents``, ``parameters``), which must never appear out of
nowhere. A ``load_model`` with a configuration override (Triton keeps such an
override across plain reloads until the folder changes on disk) shows up here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from controlplane.artifacts.model_config import parse_model_config
from controlplane.artifacts.protobuf_modules import model_config_pb2

# Fields Triton may fill in itself, but only with values derived from the staged ones.
_DERIVED_OK = {"platform", "default_model_filename", "runtime"}
# Fields whose appearance (not only change) on the running side is drift.
_MUST_NOT_APPEAR = ("model_repository_agents", "parameters")


def running_config(config: Mapping[str, Any]) -> model_config_pb2.ModelConfig:
    """Triton's ``get_model_config`` JSON ("config" object) as a ModelConfig message."""
    return json_format.ParseDict(dict(config), model_config_pb2.ModelConfig(), ignore_unknown_fields=True)


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.has_options
        and field.message_type.GetOptions().map_entry
    )


def _differences(staged: Message, running: Message, path: str) -> list[str]:
    found: list[str] = []
    for field, value in staged.ListFields():
        where = f"{path}{field.name}"
        other = getattr(running, field.name)
        if _is_map(field):
            for key in value:
                if key not in other:
                    found.append(f"{where}[{key!r}] is missing")
                elif field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                    found += _differences(value[key], other[key], f"{where}[{key!r}].")
                elif value[key] != other[key]:
                    found.append(f"{where}[{key!r}] is {other[key]!r}, staged {value[key]!r}")
        elif field.is_repeated:
            if len(value) != len(other):
                found.append(f"{where} has {len(other)} entries, staged {len(value)}")
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                for i, (mine, theirs) in enumerate(zip(value, other, strict=True)):
                    found += _differences(mine, theirs, f"{where}[{i}].")
            elif list(value) != list(other):
                found.append(f"{where} is {list(other)}, staged {list(value)}")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if not running.HasField(field.name):
                found.append(f"{where} is missing")
            else:
                found += _differences(value, other, f"{where}.")
        elif value != other:
            found.append(f"{where} is {other!r}, staged {value!r}")
    return found


def config_drift(staged_text: str, running: Mapping[str, Any]) -> list[str]:
    """What differs between the staged config.pbtxt and the configuration Triton runs; [] if nothing."""
    staged = parse_model_config(staged_text)
    actual = running_config(running)
    found = _differences(staged, actual, "")
    for name in _MUST_NOT_APPEAR:
        if getattr(actual, name) and not getattr(staged, name):
            found.append(f"{name} appeared: {json_format.MessageToDict(actual)[_camel(name)]}")
    if not staged.backend and actual.backend and actual.backend not in (staged.platform.split("_")[0], ""):
        found.append(f"backend is {actual.backend!r}, staged platform {staged.platform!r}")
    for name in _DERIVED_OK:
        # A derived value is fine; one that points outside the model's own files is not.
        value = getattr(actual, name)
        if "/" in value or value.startswith("."):
            found.append(f"{name} is {value!r}")
    return found


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
