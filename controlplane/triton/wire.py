"""Triton's HTTP inference body with the binary tensor extension, built and split without numpy.

A request is one JSON header (inputs with name, shape, datatype and
``binary_data_size``; outputs asked for as binary) followed by each input's
raw bytes in order; its length travels in the ``Inference-Header-Content-Length``
header. An answer has the same form, one blob per output in the order the
JSON lists them. Raw bytes are what Triton stores: little-endian, row-major;
a BYTES element is a 4-byte little-endian length and that many bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

HEADER_LENGTH = "Inference-Header-Content-Length"

ELEMENT_BYTES: Mapping[str, int] = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "BF16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
}
"""Bytes per element of each fixed-size Triton data type (BYTES has no fixed size)."""

_EMPTY_STRING = b"\0\0\0\0"  # a BYTES element of length 0


@dataclass(frozen=True)
class Tensor:
    """One tensor on the wire: Triton's name for its type, its shape and its raw bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes


@dataclass(frozen=True)
class Zeros:
    """A zero-filled input described, not allocated: a BYTES one holds empty strings."""

    datatype: str
    shape: tuple[int, ...]

    def raw(self) -> bytes:
        """The tensor's bytes as Triton reads them."""
        count = math.prod(self.shape)
        if self.datatype == "BYTES":
            return _EMPTY_STRING * count
        return bytes(ELEMENT_BYTES[self.datatype] * count)


def is_known_datatype(datatype: str) -> bool:
    """Whether ``datatype`` is a Triton data type this module can put on the wire."""
    return datatype == "BYTES" or datatype in ELEMENT_BYTES


def infer_request(inputs: Sequence[Tensor], outputs: Sequence[str]) -> tuple[bytes, int]:
    """The request body and the length of its JSON header."""
    header = {
        "inputs": [
            {
                "name": t.name,
                "shape": list(t.shape),
                "datatype": t.datatype,
                "parameters": {"binary_data_size": len(t.raw)},
            }
            for t in inputs
        ],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([head, *(t.raw for t in inputs)]), len(head)


class MalformedAnswer(ValueError):
    """An inference answer that does not have the form Triton's protocol gives it."""


def split_infer_answer(body: bytes, header_length: int | None) -> dict[str, Tensor]:
    """The outputs of an inference answer by name; MalformedAnswer when it does not parse."""
    length = len(body) if header_length is None else header_length
    if not 0 <= length <= len(body):
        raise MalformedAnswer(f"header length {length} outside a body of {len(body)} bytes")
    try:
        header = json.loads(body[:length])
        found: dict[str, Tensor] = {}
        offset = length
        for output in header.get("outputs", []):
            name, datatype = str(output["name"]), str(output["datatype"])
            shape = tuple(int(d) for d in output["shape"])
            size = (output.get("parameters") or {}).get("binary_data_size")
            if size is None:
                raise MalformedAnswer(f"output {name!r} came back as JSON data, asked for as binary")
            raw = body[offset : offset + int(size)]
            if len(raw) != int(size):
                raise MalformedAnswer(f"output {name!r} is cut short")
            offset += int(size)
            found[name] = Tensor(name, datatype, shape, raw)
    except MalformedAnswer:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedAnswer(f"not an inference answer: {exc}") from exc
    return found
