"""Pure registry rules: names, digests, version directories."""

from __future__ import annotations

import pytest

from controlplane.domain.models import (
    ManifestEntry,
    manifest_digest,
    staged_path,
    validate_model_name,
    version_directory,
)
from controlplane.errors import InvalidInput


@pytest.mark.parametrize("name", ["mlp", "two_inputs", "resnet-50", "bert.v2", "A1"])
def test_ordinary_model_names_are_accepted(name: str) -> None:
    assert validate_model_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../x", "a/b", "a\\b", "-lead", "_lead", "trailing.", "a..b", "sp ace", "x" * 129]
)
def test_names_a_filesystem_or_url_could_misread_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_model_name(name)
    assert refused.value.code == "invalid_model_name"


def test_digest_does_not_depend_on_manifest_order() -> None:
    a = ManifestEntry("config.pbtxt", 10, "a" * 64)
    b = ManifestEntry("1/model.onnx", 20, "b" * 64)
    assert manifest_digest([a, b]) == manifest_digest([b, a])


def test_digest_covers_file_names_not_only_contents() -> None:
    entry = ManifestEntry("1/model.onnx", 20, "b" * 64)
    renamed = ManifestEntry("1/other.onnx", 20, "b" * 64)
    assert manifest_digest([entry]) != manifest_digest([renamed])


def test_the_single_numeric_directory_is_the_version_directory() -> None:
    entries = [ManifestEntry("config.pbtxt", 1, "a" * 64), ManifestEntry("3/model.onnx", 1, "b" * 64)]
    assert version_directory(entries) == "3"


@pytest.mark.parametrize(
    "paths",
    [["config.pbtxt"], ["config.pbtxt", "1/a", "2/b"], ["config.pbtxt", "v1/model.onnx"]],
)
def test_a_folder_without_exactly_one_version_directory_is_refused(paths: list[str]) -> None:
    with pytest.raises(InvalidInput, match="exactly one numeric version directory"):
        version_directory([ManifestEntry(p, 1, "a" * 64) for p in paths])


def test_staging_renumbers_only_the_version_directory() -> None:
    assert staged_path("1/model.onnx", source_version_dir="1", number=7) == "7/model.onnx"
    assert staged_path("1/sub/w.bin", source_version_dir="1", number=7) == "7/sub/w.bin"
    assert staged_path("config.pbtxt", source_version_dir="1", number=7) == "config.pbtxt"
    assert staged_path("labels.txt", source_version_dir="1", number=7) == "labels.txt"
