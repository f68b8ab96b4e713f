"""An uploaded golden set file before it is parsed: its size limit and the format it says it has.

Parsing (``controlplane.artifacts.golden_file``) needs numpy; what the API
checks on the way in does not, so it lives here.
"""

from __future__ import annotations

from pathlib import Path

from controlplane.domain.golden_records import GoldenFormat, golden_refusal
from controlplane.errors import UnsupportedMediaType

MAX_GOLDEN_BYTES = 64 * 1024**2
"""Largest golden file accepted (as pushed, attached or stored)."""


def golden_format(*, format_param: str | None, content_type: str) -> GoldenFormat:
    """The format of an attached file: ``?format=`` if given, else its content type."""
    if format_param:
        try:
            return GoldenFormat(format_param.lower())
        except ValueError:
            raise golden_refusal(f"format {format_param!r} is not one of npz, json") from None
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json":
        return GoldenFormat.JSON
    if kind in ("application/octet-stream", "application/x-npz", "application/zip"):
        return GoldenFormat.NPZ
    raise UnsupportedMediaType(
        f"content type {kind or 'none'!r} is not a golden set: send application/json (.json) or "
        "application/octet-stream (.npz), or say ?format=npz|json"
    )


def read_golden_upload(path: Path) -> bytes:
    """The bytes of an uploaded golden file, refused past the size limit."""
    size = path.stat().st_size
    if size > MAX_GOLDEN_BYTES:
        raise golden_refusal(f"the file is {size} bytes; the limit is {MAX_GOLDEN_BYTES}")
    return path.read_bytes()
