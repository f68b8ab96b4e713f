"""Golden set files: ``.npz`` and ``.json``, parsed without trusting them.

``.npz`` (what ``numpy.savez`` writes): arrays named ``inputs/NAME``,
``outputs/NAME`` and optional scalars ``atol/NAME`` and ``rtol/NAME``. It is
a zip archive, so before a member is read its declared size is checked
against what is left of the unpacked limit (a zip bomb is refused before it
expands), a member that inflates past its declared size is refused, and each
``.npy`` header is read first so a shape that claims more data than the
member holds allocates nothing. Arrays are read with ``allow_pickle=False``:
an object array (a pickle) is refused, never loaded.

``.json``: ``{"inputs": {NAME: nested lists}, "outputs": {...},
"tolerances": {NAME: {"atol": x, "rtol": y}}, "datatypes": {NAME: "FP32"}}``
(datatypes optional: the model's declared types otherwise). Size and nesting
depth are limited.

Every refusal is InvalidInput with code ``invalid_golden_set`` and a reason a
person can act on; the parsed set is then checked against the version's
signature (``controlplane.domain.golden.validate_golden``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from controlplane.artifacts.blobs import BlobStore
from controlplane.artifacts.golden_upload import MAX_GOLDEN_BYTES
from controlplane.domain.golden import BYTES, NUMPY_TYPES, Array, GoldenSet, validate_golden
from controlplane.domain.golden_records import GoldenFormat, Tolerance
from controlplane.domain.golden_records import golden_refusal as _refuse
from controlplane.domain.models import ModelSignature
from controlplane.errors import ArtifactCorrupted

MAX_JSON_BYTES = 16 * 1024**2
"""Largest ``.json`` golden file: parsed into Python objects, it takes many times its size in memory."""
MAX_UNPACKED_BYTES = 256 * 1024**2
"""Largest sum of the declared sizes of an ``.npz``'s members."""
MAX_NPZ_MEMBERS = 1024
MAX_JSON_DEPTH = 40
"""Deepest nesting of a ``.json`` golden file: the document, its sections, and tensors of up to 36 axes."""

_MEMBER = re.compile(r"^(inputs|outputs|atol|rtol)/(.+)\.npy$")
_JSON_SECTIONS = frozenset({"inputs", "outputs", "tolerances", "datatypes"})
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError)


def parse_golden(data: bytes, fmt: GoldenFormat, signature: ModelSignature) -> GoldenSet:
    """Parse a golden file and check it against the version's ``signature``."""
    if len(data) > MAX_GOLDEN_BYTES:
        raise _refuse(f"the file is {len(data)} bytes; the limit is {MAX_GOLDEN_BYTES}")
    if not data:
        raise _refuse("the file is empty")
    if fmt is GoldenFormat.JSON and len(data) > MAX_JSON_BYTES:
        raise _refuse(
            f"the JSON file is {len(data)} bytes; the limit is {MAX_JSON_BYTES} (.npz: {MAX_GOLDEN_BYTES})"
        )
    golden = _parse_npz(data) if fmt is GoldenFormat.NPZ else _parse_json(data, signature)
    return validate_golden(golden, signature)


def read_golden_blob(
    blobs: BlobStore, *, digest: str, size: int, fmt: GoldenFormat, signature: ModelSignature
) -> GoldenSet:
    """A stored golden file, parsed; ArtifactCorrupted unless its bytes still hash to ``digest``."""
    path = blobs.path_for(digest)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_GOLDEN_BYTES + 1)
    except FileNotFoundError as exc:
        raise ArtifactCorrupted(f"golden set blob {digest} is missing from the store") from exc
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise ArtifactCorrupted(f"golden set blob {digest} no longer matches its digest")
    return parse_golden(data, fmt, signature)


# -- .npz ---------------------------------------------------------------------------------------------


def _parse_npz(data: bytes) -> GoldenSet:
    if not data.startswith(b"PK"):
        raise _refuse("the file is not an .npz (zip) archive")
    sections: dict[str, dict[str, Array]] = {"inputs": {}, "outputs": {}, "atol": {}, "rtol": {}}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if len(members) > MAX_NPZ_MEMBERS:
                raise _refuse(f"the archive has {len(members)} members; the limit is {MAX_NPZ_MEMBERS}")
            declared = sum(m.file_size for m in members)
            if declared > MAX_UNPACKED_BYTES:
                raise _refuse(
                    f"the archive's members unpack to {declared} bytes; the limit is {MAX_UNPACKED_BYTES}"
                )
            for member in members:
                match = _MEMBER.fullmatch(member.filename)
                if match is None:
                    raise _refuse(
                        f"member {member.filename!r} is none of inputs/NAME, outputs/NAME, atol/NAME, "
                        "rtol/NAME (.npy)"
                    )
                section, name = match.group(1), match.group(2)
                if name in sections[section]:
                    raise _refuse(f"{section}/{name} appears twice", name)
                sections[section][name] = _read_member(archive, member, name)
    except _ZIP_ERRORS as exc:
        raise _refuse(f"the .npz archive cannot be read: {exc}") from None
    tolerances: dict[str, Tolerance] = {}
    for name in {*sections["atol"], *sections["rtol"]}:
        tolerances[name] = Tolerance(
            atol=_scalar(sections["atol"], "atol", name, Tolerance().atol),
            rtol=_scalar(sections["rtol"], "rtol", name, Tolerance().rtol),
        )
    return GoldenSet(inputs=sections["inputs"], outputs=sections["outputs"], tolerances=tolerances)


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, name: str) -> Array:
    with archive.open(member) as handle:
        raw = handle.read(member.file_size + 1)
    if len(raw) > member.file_size:
        raise _refuse(f"member {member.filename!r} unpacks to more than its declared size", name)
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise _refuse(f"member {member.filename!r} uses .npy format {version}, not 1.0 or 2.0", name)
    except ValueError as exc:
        raise _refuse(f"member {member.filename!r} is not a .npy array: {exc}", name) from None
    if dtype.hasobject:
        raise _refuse(f"member {member.filename!r} holds Python objects (a pickle); they are refused", name)
    if dtype.fields is not None or dtype.kind == "V":
        raise _refuse(f"member {member.filename!r} is a structured array; plain arrays only", name)
    needed = math.prod(shape) * dtype.itemsize
    if needed > len(raw) - stream.tell():
        raise _refuse(f"member {member.filename!r} declares shape {list(shape)} but holds less data", name)
    try:
        array = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
    except ValueError as exc:
        raise _refuse(f"member {member.filename!r} cannot be read: {exc}", name) from None
    return np.asarray(array)


def _scalar(values: Mapping[str, Array], which: str, name: str, default: float) -> float:
    array = values.get(name)
    if array is None:
        return default
    if array.size != 1 or array.dtype.kind not in "iuf":
        raise _refuse(f"{which}/{name} must be one number", name)
    return float(array.reshape(-1)[0])


# -- .json --------------------------------------------------------------------------------------------


def _depth(document: Any) -> int:
    """The nesting depth of a parsed JSON document (without recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                return depth
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _parse_json(data: bytes, signature: ModelSignature) -> GoldenSet:
    try:
        document = json.loads(data)
    except RecursionError:
        raise _refuse(f"the JSON document is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise _refuse(f"the file is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise _refuse("the JSON document must be an object with inputs and outputs")
    if _depth(document) > MAX_JSON_DEPTH:
        raise _refuse(f"the JSON document is nested deeper than {MAX_JSON_DEPTH} levels")
    unknown = sorted(set(document) - _JSON_SECTIONS)
    if unknown:
        raise _refuse(f"unknown key(s) {unknown}; expected inputs, outputs, tolerances, datatypes")
    sections = {key: document.get(key, {}) for key in _JSON_SECTIONS}
    for key, value in sections.items():
        if not isinstance(value, dict):
            raise _refuse(f"{key!r} must be an object keyed by tensor name")
    declared = {t.name: t.data_type for t in (*signature.inputs, *signature.outputs)}
    datatypes: dict[str, str] = {}
    for name, value in sections["datatypes"].items():
        if not isinstance(value, str) or (value not in NUMPY_TYPES and value != BYTES):
            raise _refuse(f"datatype of {name!r} must be one of {[*NUMPY_TYPES, BYTES]}, got {value!r}", name)
        datatypes[name] = value

    def data_type(name: str) -> str:
        found = datatypes.get(name) or declared.get(name)
        if found is None:
            raise _refuse(f"{name!r} is not a tensor of the model and has no datatype", name)
        return found

    inputs = {name: _json_array(name, v, data_type(name)) for name, v in sections["inputs"].items()}
    outputs = {name: _json_array(name, v, data_type(name)) for name, v in sections["outputs"].items()}
    tolerances = {name: _json_tolerance(name, v) for name, v in sections["tolerances"].items()}
    return GoldenSet(inputs=inputs, outputs=outputs, tolerances=tolerances)


def _json_tolerance(name: str, value: Any) -> Tolerance:
    if not isinstance(value, dict) or set(value) - {"atol", "rtol"}:
        raise _refuse(f"tolerance of {name!r} must be an object with atol and/or rtol", name)
    defaults = Tolerance()
    atol, rtol = value.get("atol", defaults.atol), value.get("rtol", defaults.rtol)
    for which, number in (("atol", atol), ("rtol", rtol)):
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise _refuse(f"{which} of {name!r} must be a number", name)
    return Tolerance(atol=float(atol), rtol=float(rtol))


def _json_array(name: str, value: Any, data_type: str) -> Array:
    if not isinstance(value, list):
        raise _refuse(f"{name!r} must be a list of rows", name)
    if data_type == BYTES:
        return _json_text(name, value)
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError):
        raise _refuse(f"{name!r} is not a rectangular array (rows of different lengths?)", name) from None
    wanted = NUMPY_TYPES[data_type]
    allowed = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[wanted.kind]
    if raw.size and raw.dtype.kind not in allowed:
        raise _refuse(f"{name!r} holds {raw.dtype} values, {data_type} needs numbers of that kind", name)
    if wanted.kind == "f":
        return raw.astype(wanted)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = raw.astype(wanted)
    if raw.size and not np.array_equal(cast, raw):
        raise _refuse(f"{name!r} holds values out of the range of {data_type}", name)
    return cast


def _json_text(name: str, value: list[Any]) -> Array:
    try:
        array = np.array(value, dtype=np.object_)
    except ValueError:
        raise _refuse(f"{name!r} is not a rectangular array (rows of different lengths?)", name) from None
    flat = array.reshape(-1).tolist()
    if not all(isinstance(v, str) for v in flat):
        raise _refuse(f"{name!r} is BYTES: every value must be a string, in rows of equal length", name)
    out = np.empty(len(flat), dtype=np.object_)
    out[:] = [v.encode() for v in flat]
    return out.reshape(array.shape)
