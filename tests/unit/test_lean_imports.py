"""The long-running ``controlplane up`` process loads only the libraries it uses.

A module imported once stays resident for the life of the process, so a
library that only some requests need (signature verification, migrations,
the folder watcher, ONNX inspection) is imported where it is used. These
tests start a fresh interpreter, do what ``controlplane up`` does before it
serves (import its modules, build the trusted signers from empty settings,
check an up-to-date schema) and look at what got loaded.

The Triton adapter talks to the pools over HTTP with httpx and reads
Triton's configuration schema without the gRPC client, so neither numpy nor
grpc is loaded until a golden set, the tuner or real arrays need them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from controlplane.registry.db import Database, _migration_head

# Libraries ``up`` must not load before something asks for them, with what loads them when it does.
LAZY_LIBRARIES = {
    "alembic": "a schema migration",
    "mako": "a schema migration (alembic's templates)",
    "cryptography": "a signature verification",
    "model_signing": "a signature verification",
    "sigstore": "a keyless signature verification",
    "onnx": "the push of an ONNX model (its protobuf schema)",
    "yaml": "CONTROLPLANE_WATCH_PATH (rollout.yaml)",
    "docker": "the external runtime's recycling",
    "numpy": "a golden set check or upload, or the tuner",
    "grpc": "the tuner's load generator",
    "ml_dtypes": "an inference with real arrays (tritonclient.utils)",
}


def _modules_loaded_by(script: str) -> set[str]:
    """The top-level packages in sys.modules after ``script`` ran in a fresh interpreter."""
    probe = textwrap.dedent(script) + textwrap.dedent(
        """
        import json, sys
        print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture
def migrated_sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    database = Database(url)
    database.upgrade()
    database.dispose()
    return url


def test_starting_the_embedded_stack_loads_none_of_the_on_demand_libraries(migrated_sqlite_url: str) -> None:
    loaded = _modules_loaded_by(
        f"""
        import controlplane.cli
        import controlplane.runtime.embedded
        from controlplane.artifacts.signatures import TrustedSigners
        from controlplane.registry.db import Database

        TrustedSigners()
        database = Database({migrated_sqlite_url!r})
        database.check_schema()
        assert database.current_revision() == database.head_revision()
        """
    )
    early = {name: why for name, why in LAZY_LIBRARIES.items() if name in loaded}
    assert early == {}, f"loaded at start-up, though only needed for: {early}"


def test_the_probe_sees_a_library_that_is_imported() -> None:
    # Guards the test above against passing because the probe sees nothing.
    assert {"alembic", "cryptography"} <= _modules_loaded_by("import alembic.command, cryptography.x509")


def test_head_read_from_the_migration_files_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    from controlplane.registry.db import alembic_config

    assert ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads() == [Database.head_revision()]


def test_recorded_revision_read_without_alembic_is_the_one_alembic_reads(tmp_path: Path) -> None:
    from alembic.runtime.migration import MigrationContext

    database = Database(f"sqlite:///{tmp_path / 'registry.db'}")

    def alembics() -> str | None:
        with database.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    assert database.current_revision() is None
    for revision in ("0003", "head", "base"):
        if revision == "base":
            database.downgrade(revision)
        else:
            database.upgrade(revision)
        assert database.current_revision() == alembics()
    assert database.current_revision() is None
    database.dispose()


def _write_migration(folder: Path, revision: str, down_revision: object) -> None:
    (folder / f"{revision}.py").write_text(
        f'"""Migration {revision}."""\n\nimport sqlalchemy as sa\n\n'
        f"revision = {revision!r}\ndown_revision = {down_revision!r}\n"
        "TZ = sa.DateTime(timezone=True)\n",
        encoding="utf-8",
    )


def test_a_merge_migration_is_the_head_of_the_branches_it_joins(tmp_path: Path) -> None:
    _write_migration(tmp_path, "a", None)
    _write_migration(tmp_path, "b", "a")
    _write_migration(tmp_path, "c", "a")
    _write_migration(tmp_path, "d", ("b", "c"))
    assert _migration_head(tmp_path) == "d"


def test_two_unmerged_branches_are_refused_as_two_heads(tmp_path: Path) -> None:
    _write_migration(tmp_path, "a", None)
    _write_migration(tmp_path, "b", "a")
    _write_migration(tmp_path, "c", "a")
    with pytest.raises(RuntimeError, match=r"exactly one head, found \['b', 'c'\]"):
        _migration_head(tmp_path)


def test_the_configuration_schema_loads_without_grpc_and_is_the_one_the_grpc_client_uses_later() -> None:
    loaded = _modules_loaded_by(
        """
        import sys
        from controlplane.artifacts.protobuf_modules import model_config_pb2
        from controlplane.artifacts.model_config import parse_model_config

        assert parse_model_config('name: "m" max_batch_size: 4').max_batch_size == 4
        before = set(sys.modules)
        import tritonclient.grpc

        assert "grpc" not in before
        assert tritonclient.grpc.model_config_pb2 is model_config_pb2
        assert tritonclient.grpc.model_config_pb2.ModelConfig is model_config_pb2.ModelConfig
        """
    )
    assert "grpc" in loaded


def test_checking_a_pushed_onnx_model_loads_neither_numpy_nor_the_onnx_package() -> None:
    folder = Path(__file__).resolve().parents[2] / "model_repository" / "mlp"
    loaded = _modules_loaded_by(
        f"""
        import sys
        from pathlib import Path
        from controlplane.artifacts.model_config import read_signature
        from controlplane.artifacts.onnx_interface import check_onnx_model

        folder = Path({str(folder)!r})
        signature = read_signature((folder / "config.pbtxt").read_bytes(), model_name="mlp")
        check_onnx_model(folder, "1", "model.onnx", signature)
        assert "onnx" not in sys.modules, "the onnx package itself"
        """
    )
    assert "numpy" not in loaded
