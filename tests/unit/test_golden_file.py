"""Golden files (.npz, .json): parsed into a checked set, or refused with a reason; never trusted."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controlplane.artifacts import golden_file
from controlplane.artifacts.blobs import BlobStore
from controlplane.artifacts.golden_file import parse_golden, read_golden_blob
from controlplane.artifacts.golden_upload import golden_format
from controlplane.domain.golden_records import GoldenFormat, Tolerance
from controlplane.domain.models import ModelSignature, TensorSpec
from controlplane.errors import ArtifactCorrupted, InvalidInput, UnsupportedMediaType

SIGNATURE = ModelSignature(
    backend="onnxruntime",
    max_batch_size=8,
    inputs=(TensorSpec("INPUT0", "FP32", (4,)),),
    outputs=(TensorSpec("OUTPUT0", "FP32", (2,)), TensorSpec("LABEL", "BYTES", (1,))),
)
INPUT = np.arange(12, dtype=np.float32).reshape(3, 4)
OUTPUT = np.arange(6, dtype=np.float32).reshape(3, 2)


def npz(*, compressed: bool = False, **arrays: Any) -> bytes:
    """An .npz as numpy writes it; ``inputs__X`` becomes the member ``inputs/X.npy``."""
    buffer = io.BytesIO()
    named = {key.replace("__", "/"): value for key, value in arrays.items()}
    (np.savez_compressed if compressed else np.savez)(buffer, **named)
    return buffer.getvalue()


def refused(data: bytes, fmt: GoldenFormat = GoldenFormat.NPZ) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_golden(data, fmt, SIGNATURE)
    assert caught.value.code == "invalid_golden_set"
    return caught.value


# -- .npz ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_an_npz_with_inputs_outputs_and_tolerances_parses_into_a_checked_set(compressed: bool) -> None:
    data = npz(
        compressed=compressed,
        inputs__INPUT0=INPUT,
        outputs__OUTPUT0=OUTPUT,
        atol__OUTPUT0=np.float64(0.5),
        rtol__OUTPUT0=np.array([0.0]),
    )
    golden = parse_golden(data, GoldenFormat.NPZ, SIGNATURE)
    assert golden.rows == 3
    np.testing.assert_array_equal(golden.inputs["INPUT0"], INPUT)
    np.testing.assert_array_equal(golden.outputs["OUTPUT0"], OUTPUT)
    assert golden.tolerance("OUTPUT0") == Tolerance(atol=0.5, rtol=0.0)


def test_an_npz_with_only_atol_keeps_the_default_rtol() -> None:
    data = npz(inputs__INPUT0=INPUT, outputs__OUTPUT0=OUTPUT, atol__OUTPUT0=np.float32(0.25))
    assert parse_golden(data, GoldenFormat.NPZ, SIGNATURE).tolerance("OUTPUT0") == Tolerance(atol=0.25)


def test_a_pickled_object_array_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    objects = np.empty((3, 1), dtype=np.object_)
    objects[:] = Payload()
    data = npz(inputs__INPUT0=INPUT, outputs__OUTPUT0=OUTPUT, outputs__LABEL=objects)
    reason = refused(data)
    assert "pickle" in reason.message and "outputs/LABEL.npy" in reason.message
    assert not marker.exists()


def test_a_zip_bomb_is_refused_by_the_declared_sizes_before_anything_is_inflated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(golden_file, "MAX_UNPACKED_BYTES", 1024**2)
    bomb = np.zeros((3, 4 * 1024**2 // 3), dtype=np.float32)  # 16 MiB of zeros, a few KiB deflated
    data = npz(compressed=True, inputs__INPUT0=bomb, outputs__OUTPUT0=OUTPUT)
    assert len(data) < 64 * 1024
    reason = refused(data)
    assert "unpack to" in reason.message and "limit" in reason.message


def _lie_about_sizes(data: bytes, declared: int) -> bytes:
    """The same zip with every member's uncompressed size (local and central headers) set to ``declared``."""
    patched = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (start := patched.find(signature, start)) != -1:
            patched[start + offset : start + offset + 4] = struct.pack("<I", declared)
            start += 4
    return bytes(patched)


def test_a_member_that_inflates_past_its_declared_size_is_refused() -> None:
    data = _lie_about_sizes(npz(compressed=True, inputs__INPUT0=INPUT, outputs__OUTPUT0=OUTPUT), 100)
    # zipfile stops at the declared size, so the member's checksum no longer matches.
    assert "cannot be read: Bad CRC-32 for file 'inputs/INPUT0.npy'" in refused(data).message


def test_more_members_than_the_limit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(golden_file, "MAX_NPZ_MEMBERS", 2)
    data = npz(inputs__INPUT0=INPUT, outputs__OUTPUT0=OUTPUT, atol__OUTPUT0=np.float32(1))
    assert "3 members" in refused(data).message


def test_a_header_claiming_more_data_than_the_member_holds_is_refused_without_allocating() -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 4)}
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("inputs/INPUT0.npy", header.getvalue() + b"\0" * 64)
        archive.writestr("outputs/OUTPUT0.npy", _npy(OUTPUT))
    reason = refused(buffer.getvalue())
    assert "declares shape" in reason.message and reason.details == {"tensor": "INPUT0"}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_an_unknown_member_is_refused_naming_it() -> None:
    data = npz(inputs__INPUT0=INPUT, outputs__OUTPUT0=OUTPUT, weights=np.zeros(2))
    assert "'weights.npy'" in refused(data).message


def test_a_file_that_is_not_a_zip_is_refused() -> None:
    assert "not an .npz" in refused(b"\x93NUMPY not a zip").message
    assert "cannot be read" in refused(b"PK\x03\x04 truncated").message


def test_an_npz_whose_rows_do_not_fit_the_model_is_refused_naming_the_tensor() -> None:
    data = npz(inputs__INPUT0=np.zeros((3, 5), dtype=np.float32), outputs__OUTPUT0=OUTPUT)
    reason = refused(data)
    assert reason.details == {"tensor": "INPUT0"} and "[5]" in reason.message


def test_a_tolerance_that_is_not_one_number_is_refused() -> None:
    data = npz(inputs__INPUT0=INPUT, outputs__OUTPUT0=OUTPUT, atol__OUTPUT0=np.array([0.1, 0.2]))
    assert "atol/OUTPUT0 must be one number" in refused(data).message


def test_a_file_over_the_size_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(golden_file, "MAX_GOLDEN_BYTES", 100)
    assert "limit is 100" in refused(npz(inputs__INPUT0=INPUT, outputs__OUTPUT0=OUTPUT)).message


# -- .json --------------------------------------------------------------------------------------------


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


def test_a_json_set_takes_the_models_data_types_and_its_own_tolerances() -> None:
    data = _json(
        {
            "inputs": {"INPUT0": INPUT.tolist()},
            "outputs": {"OUTPUT0": OUTPUT.tolist(), "LABEL": [["a"], ["b"], ["é"]]},
            "tolerances": {"OUTPUT0": {"atol": 0.1}},
        }
    )
    golden = parse_golden(data, GoldenFormat.JSON, SIGNATURE)
    assert golden.inputs["INPUT0"].dtype == np.float32
    np.testing.assert_array_equal(golden.outputs["OUTPUT0"], OUTPUT)
    assert golden.outputs["LABEL"].tolist() == [[b"a"], [b"b"], ["é".encode()]]
    assert golden.tolerance("OUTPUT0") == Tolerance(atol=0.1)


def test_json_datatypes_override_the_models_and_are_then_checked_against_it() -> None:
    data = _json({"inputs": {"INPUT0": INPUT.tolist()}, "outputs": {"OUTPUT0": OUTPUT.tolist()}})
    assert parse_golden(data, GoldenFormat.JSON, SIGNATURE).rows == 3
    typed = _json({**json.loads(data), "datatypes": {"INPUT0": "FP64"}})
    assert "FP32" in refused(typed, GoldenFormat.JSON).message


def test_json_expected_values_may_be_nan() -> None:
    data = b'{"inputs": {"INPUT0": [[0, 0, 0, 0]]}, "outputs": {"OUTPUT0": [[NaN, 1.0]]}}'
    golden = parse_golden(data, GoldenFormat.JSON, SIGNATURE)
    assert np.isnan(golden.outputs["OUTPUT0"][0, 0])


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"inputs": {"INPUT0": [[1, 2, 3, 4], [1, 2]]}, "outputs": {}}, "not a rectangular array"),
        ({"inputs": {"INPUT0": [["a", "b", "c", "d"]]}, "outputs": {}}, "needs numbers"),
        ({"inputs": {"INPUT0": 1.0}, "outputs": {}}, "list of rows"),
        ({"inputs": {}, "outputs": {}, "weights": {}}, "unknown key"),
        ({"inputs": {"X": [[1.0]]}, "outputs": {}}, "not a tensor of the model"),
        ([1, 2, 3], "must be an object"),
        (
            {
                "inputs": {"INPUT0": INPUT.tolist()},
                "outputs": {"OUTPUT0": OUTPUT.tolist()},
                "tolerances": {"OUTPUT0": {"atol": "0.1"}},
            },
            "must be a number",
        ),
        (
            {"inputs": {"INPUT0": INPUT.tolist()}, "outputs": {"LABEL": [[1], [2], [3]]}},
            "every value must be a string",
        ),
    ],
)
def test_malformed_json_sets_are_refused_with_a_reason(document: object, reason: str) -> None:
    assert reason in refused(_json(document), GoldenFormat.JSON).message


def test_json_nested_deeper_than_the_limit_is_refused() -> None:
    deep = "[" * 60 + "]" * 60
    data = ('{"inputs": {"INPUT0": ' + deep + '}, "outputs": {}}').encode()
    assert "nested deeper" in refused(data, GoldenFormat.JSON).message
    abyss = ("[" * 100_000 + "]" * 100_000).encode()
    assert "nested deeper" in refused(abyss, GoldenFormat.JSON).message


def test_a_json_file_over_its_own_smaller_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(golden_file, "MAX_JSON_BYTES", 10)
    assert "JSON file is" in refused(_json({"inputs": {}, "outputs": {}}), GoldenFormat.JSON).message


def test_a_file_that_is_not_json_is_refused() -> None:
    assert "not valid JSON" in refused(b"{inputs: }", GoldenFormat.JSON).message
    assert "not valid JSON" in refused(b"\xff\xfe\x00garbage", GoldenFormat.JSON).message


# -- formats and the stored file ------------------------------------------------------------------------


def test_the_format_comes_from_the_query_or_else_the_content_type() -> None:
    assert golden_format(format_param="json", content_type="application/octet-stream") is GoldenFormat.JSON
    assert (
        golden_format(format_param=None, content_type="application/json; charset=utf-8") is GoldenFormat.JSON
    )
    assert golden_format(format_param=None, content_type="application/x-npz") is GoldenFormat.NPZ
    with pytest.raises(UnsupportedMediaType):
        golden_format(format_param=None, content_type="text/plain")
    with pytest.raises(InvalidInput):
        golden_format(format_param="csv", content_type="application/json")


def test_a_stored_golden_file_is_used_only_while_it_still_hashes_to_its_digest(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    data = npz(inputs__INPUT0=INPUT, outputs__OUTPUT0=OUTPUT)
    digest = hashlib.sha256(data).hexdigest()
    source = tmp_path / "golden.npz"
    source.write_bytes(data)
    blobs.put(source, digest)
    golden = read_golden_blob(blobs, digest=digest, size=len(data), fmt=GoldenFormat.NPZ, signature=SIGNATURE)
    assert golden.rows == 3
    path = blobs.path_for(digest)
    path.chmod(0o644)
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    with pytest.raises(ArtifactCorrupted):
        read_golden_blob(blobs, digest=digest, size=len(data), fmt=GoldenFormat.NPZ, signature=SIGNATURE)
