"""What the registry records of a golden set, and how a golden file is named: no arrays, no numpy.

The arrays and the rules that judge a candidate by them are in
``controlplane.domain.golden``; this part is what the registry, the staging
of a version's files and the API need without loading numpy.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from controlplane.errors import InvalidInput

GOLDEN_FILE_NAMES = ("golden.npz", "golden.json")
"""Top-level files of a pushed folder that hold its golden set (never staged into Triton's repository)."""
DEFAULT_ATOL = 1e-5
"""Absolute tolerance of an output the golden set gives none for."""
DEFAULT_RTOL = 1e-4
"""Relative tolerance (of the expected value) of an output the golden set gives none for."""


class GoldenFormat(enum.StrEnum):
    NPZ = "npz"
    JSON = "json"


class GoldenSource(enum.StrEnum):
    FOLDER = "folder"
    """Came in the pushed folder: part of the version's digest and of any signature of it."""
    ATTACHED = "attached"
    """Attached after the push; replaceable."""


def is_golden_file(path: str) -> bool:
    """Whether a manifest path (relative to the model folder) is the folder's golden set."""
    return path in GOLDEN_FILE_NAMES


def format_of_file(path: str) -> GoldenFormat:
    """The format a golden file's name says (``golden.npz`` -> npz)."""
    return GoldenFormat.NPZ if path.endswith(".npz") else GoldenFormat.JSON


def golden_refusal(message: str, tensor: str | None = None) -> InvalidInput:
    """The InvalidInput (code ``invalid_golden_set``) every refusal of a golden set file is."""
    return InvalidInput(
        f"golden set: {message}",
        code="invalid_golden_set",
        details={"tensor": tensor} if tensor is not None else None,
    )


@dataclass(frozen=True)
class Tolerance:
    """How far an output may be from the expected value: ``atol + rtol * |expected|``."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL

    def as_dict(self) -> dict[str, float]:
        return {"atol": self.atol, "rtol": self.rtol}


@dataclass(frozen=True)
class GoldenRecord:
    """A version's golden set as the registry describes it (the file itself is a blob)."""

    model: str
    version: int
    digest: str
    """SHA-256 of the file: its name in the blob store."""
    size: int
    format: GoldenFormat
    rows: int
    outputs: Mapping[str, Tolerance]
    """Every expected output with the tolerance it is judged by."""
    source: GoldenSource
    actor: str
    created_at: datetime
    signed: bool = False
    """It came in the folder of a version whose signature was verified (the signature covers it)."""
