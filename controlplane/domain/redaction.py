"""Errors shown to clients carry no server paths and no stack traces. Pure text rules.

Triton's load errors quote the files it opened (``Load model from
/state/pools/blue/repository/mlp/1/model.onnx failed``) and, for Python-based
backends, the stack of the stub (``At:`` followed by ``/path/file.py(42):
function`` lines); Python errors may carry a ``Traceback (most recent call
last):`` block. Those tell an attacker where the state directory, the virtual
environment and the backends live. :func:`redact` keeps what a client needs
(the error itself, the file inside the model folder) and drops the rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

SERVER_PATH = "<server path>"
TRACEBACK_HEADER = "Traceback (most recent call last):"
# A line of a Triton Python-backend stack: "  /path/to/file.py(123): function"
_STUB_FRAME = re.compile(r"^\s+\S.*\(\d+\): \S+\s*$")
# A line of a Python traceback: '  File "/path/x.py", line 3, in f'
_PY_FRAME = re.compile(r'^\s*File "[^"]*", line \d+')
# An absolute path: "/" not preceded by a character that makes it part of a relative path or URL.
# API routes quoted in messages ("/v1/models/...", Triton's "/v2/health/ready") are not server paths.
_ABSOLUTE = re.compile(r"(?<![\w.:/~$-])/(?!v\d+/)(?:[^\s'\"`,;:()\[\]{}<>|]+)")


def _drop_stacks(lines: list[str]) -> list[str]:
    kept: list[str] = []
    in_stack = False
    for line in lines:
        stripped = line.strip()
        if stripped == TRACEBACK_HEADER or stripped == "At:":
            in_stack = True
            continue
        if _PY_FRAME.match(line):
            in_stack = True
            continue
        if in_stack and (line.startswith((" ", "\t")) or _STUB_FRAME.match(line) or not stripped):
            # Frame lines and the source lines under them are indented; the final exception line is not.
            continue
        in_stack = False
        kept.append(line)
    return kept


def _relative_to_roots(text: str, roots: Sequence[str]) -> str:
    # Longest first, so a pool repository wins over the state directory that holds it.
    for root in sorted({r.rstrip("/") for r in roots if r.strip("/")}, key=len, reverse=True):
        text = text.replace(root + "/", "")
    return text


def redact(text: str, *, model_roots: Sequence[str] = ()) -> str:
    """``text`` without stack traces and without absolute server paths.

    A path under one of ``model_roots`` (folders that hold model folders, such
    as a pool's live repository) becomes relative to it (``mlp/1/model.onnx``);
    any other absolute path becomes ``<server path>``. Lines emptied by the
    removal are dropped and the result is stripped.
    """
    lines = _drop_stacks(text.splitlines())
    joined = "\n".join(line.rstrip() for line in lines)
    joined = _relative_to_roots(joined, model_roots)
    joined = _ABSOLUTE.sub(SERVER_PATH, joined)
    joined = re.sub(r"\n{2,}", "\n", joined)
    return joined.strip().rstrip(";").strip()
