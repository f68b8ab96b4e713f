"""Versions of ``mlp`` with a chosen interface, and a rollout engine wired with the product's admission."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from fakes import World

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.models import VersionMetadata
from controlplane.rollout.engine import EngineSettings, RolloutEngine
from controlplane.services.admission import RolloutAdmission

Tensor = tuple[str, str, tuple[int, ...]]
INPUT0: Tensor = ("INPUT0", "FP32", (4,))
OUTPUT0: Tensor = ("OUTPUT0", "FP32", (2,))


def _tensors(kind: str, tensors: Sequence[Tensor]) -> str:
    return "".join(
        f'{kind} {{ name: "{name}" data_type: TYPE_{dtype} dims: [{", ".join(map(str, dims))}] }}\n'
        for name, dtype, dims in tensors
    )


def push(
    world: World,
    *,
    inputs: Sequence[Tensor] = (INPUT0,),
    outputs: Sequence[Tensor] = (OUTPUT0,),
    max_batch_size: int = 8,
    api_version: str | None = None,
    metrics: dict[str, float] | None = None,
) -> int:
    """Push a version of ``mlp`` with this interface (a TorchScript stand-in: no file is read)."""
    config = f'name: "mlp"\nbackend: "pytorch"\nmax_batch_size: {max_batch_size}\n'
    config += _tensors("input", inputs) + _tensors("output", outputs)
    tag = hashlib.sha256(f"{config}{api_version}{metrics}".encode()).hexdigest()[:16]
    folder = world.root / "sources" / tag / "mlp"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config, encoding="utf-8")
    (folder / "1" / "model.pt").write_bytes(tag.encode())
    archive = pack_directory(folder, folder.parent / "model.tar.gz")
    metadata = VersionMetadata(metrics=metrics or {}, api_version=api_version)
    version, _created = world.registry.push(model="mlp", archive=archive, metadata=metadata)
    return version.number


def admitting_engine(world: World) -> RolloutEngine:
    """An engine wired as the product wires it: the signature policy, then admission."""
    engine = RolloutEngine(
        db=world.db,
        pools=world.pools,
        blobs=world.blobs,
        router=world.router,
        sampler=world.sampler,
        settings=EngineSettings(load_timeout=5.0, drain_timeout=1.0, pool_up_timeout=5.0, poll_interval=1.0),
        clock=world.clock,
        sleep=world.clock.sleep,
        policy_check=world.signing.check_deployable,
        admission=RolloutAdmission(world.db),
    )
    world.engines.append(engine)
    return engine
