"""Staging benchmark: build a pool folder of a 1 GB model by hard links vs ``cp -r`` of the same folder.

    python bench/staging.py [--size-mb 1024] [--files 4]

Both sides run in the same process on the same filesystem; the figure that
matters is the ratio. The hard-link build is also timed with verification
(every blob re-hashed before it is linked), which is what deploys do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from controlplane.artifacts.blobs import BlobStore, sha256_file
from controlplane.domain.models import (
    ManifestEntry,
    ModelName,
    ModelSignature,
    ModelVersion,
    TensorSpec,
    VersionMetadata,
    VersionState,
    manifest_digest,
)
from controlplane.staging.repository import PoolRepository

CHUNK = 16 * 1024 * 1024


def make_model_folder(root: Path, *, size_mb: int, files: int) -> Path:
    """A Triton model folder whose version directory holds ``files`` files of random bytes."""
    folder = root / "big"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text('backend: "onnxruntime"\n')
    per_file = size_mb * 1024 * 1024 // files
    for i in range(files):
        with open(folder / "1" / f"weights-{i}.bin", "wb") as f:
            left = per_file
            while left:
                n = min(CHUNK, left)
                f.write(os.urandom(n))
                left -= n
    return folder


def store_folder(folder: Path, blobs: BlobStore) -> ModelVersion:
    """Put a copy of every file into the blob store; return the version that describes them."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        tmp = blobs.root / f"incoming-{path.name}"
        shutil.copyfile(path, tmp)
        sha, size = sha256_file(tmp)
        blobs.put(tmp, sha)
        entries.append(ManifestEntry(path.relative_to(folder).as_posix(), size, sha))
    spec = (TensorSpec("X", "FP32", (1,)),)
    return ModelVersion(
        model=ModelName("big"),
        number=1,
        digest=manifest_digest(entries),
        state=VersionState.REGISTERED,
        source_version_dir="1",
        signature=ModelSignature("onnxruntime", 0, spec, spec),
        metadata=VersionMetadata(),
        manifest=tuple(entries),
        size_bytes=sum(e.size for e in entries),
        created_at=datetime.now(UTC),
    )


def timed(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-staging-") as tmp:
        root = Path(tmp)
        folder = make_model_folder(root, size_mb=args.size_mb, files=args.files)
        blobs = BlobStore(root / "artifacts")
        version = store_folder(folder, blobs)
        pool = PoolRepository(root / "pool")
        subprocess.run(["sync"], check=True)

        def hard_links() -> None:
            shutil.rmtree(pool.build(version, blobs, verify=False))

        def hard_links_verified() -> None:
            shutil.rmtree(pool.build(version, blobs, verify=True))

        def copy() -> None:
            dest = root / "copy"
            subprocess.run(["cp", "-r", str(folder), str(dest)], check=True)
            shutil.rmtree(dest)

        t_copy = timed(copy, args.repeat)
        t_link = timed(hard_links, args.repeat)
        t_verified = timed(hard_links_verified, args.repeat)

    size = f"{args.size_mb} MB in {args.files + 1} files"
    print(f"staging benchmark: {size}, median of {args.repeat}")
    print(f"  cp -r (baseline)              {t_copy * 1000:9.1f} ms   1.00x")
    print(f"  hard links                    {t_link * 1000:9.1f} ms   {t_copy / t_link:8.1f}x faster")
    verified_ratio = t_copy / t_verified
    print(f"  hard links + re-hash verify   {t_verified * 1000:9.1f} ms   {verified_ratio:8.2f}x (of cp -r)")


if __name__ == "__main__":
    main()
