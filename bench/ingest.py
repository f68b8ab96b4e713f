"""Ingest benchmark: the control plane's hash + store of a 1 GB model folder vs ``openssl dgst -sha256``.

    python bench/ingest.py [--size-mb 1024] [--files 4] [--repeat 3]

Builds a model folder (``config.pbtxt`` + ``1/weights-N.bin`` of random bytes)
and packs it as a plain tar (random bytes do not compress; gzip would only
add CPU time that is not what is measured). Then, in alternating rounds so
that drift affects every side alike:

* baseline: ``openssl dgst -sha256`` over the folder's files, one process for
  all of them; for reference also one openssl per file, as many at a time as
  there are CPUs (model-signing hashes files on a thread pool, so this is the
  fair baseline for verification), and ``sha256sum``;
* ``sha256_file`` over the same files: the control plane's hashing alone;
* ``ingest_archive`` of the tar exactly as the API runs it once the upload is
  on disk (pre-scan, extract, hash, parse config.pbtxt, move into a fresh
  content-addressed store), with the time split into its phases;
* ``verify_folder`` of an EC P-256 model-signing signature over the folder
  (which re-hashes every file, so openssl over the same bytes is its baseline).

The page cache is warmed by reading everything once before the timed runs
(caches are not dropped); ``sync`` runs before each timed step so that
writeback of an earlier step does not land in the next. Ratios are
throughputs against openssl in the same run: higher is better, the goal for
ingest is 0.8x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import controlplane.artifacts.ingest as ingest_module
from controlplane.artifacts.archive import ArchiveLimits
from controlplane.artifacts.blobs import BlobStore, sha256_file
from controlplane.artifacts.ingest import ingest_archive
from controlplane.artifacts.signatures import SignatureMethod, TrustedSigners, verify_folder

CHUNK = 16 * 1024 * 1024
MB = 1024 * 1024
MODEL = "big"
GOAL = 0.8
CONFIG = f"""name: "{MODEL}"
backend: "onnxruntime"
max_batch_size: 0
input {{
  name: "X"
  data_type: TYPE_FP32
  dims: [ 1 ]
}}
output {{
  name: "Y"
  data_type: TYPE_FP32
  dims: [ 1 ]
}}
"""


def make_model_folder(root: Path, *, size_mb: int, files: int) -> Path:
    """A Triton model folder whose version directory holds ``files`` files of random bytes."""
    folder = root / MODEL
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(CONFIG)
    per_file = size_mb * MB // files
    for i in range(files):
        with open(folder / "1" / f"weights-{i}.bin", "wb") as f:
            left = per_file
            while left:
                n = min(CHUNK, left)
                f.write(os.urandom(n))
                left -= n
    return folder


def folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def pack_tar(folder: Path, out: Path) -> Path:
    """A plain (uncompressed) tar of ``folder``, members sorted, names relative to it."""
    members = sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix())
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for path in members:
            info = tf.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                tf.addfile(info)
            else:
                with open(path, "rb") as f:
                    tf.addfile(info, f)
    return out


def sign_folder(folder: Path, keys: Path, signature: Path) -> bytes:
    """Sign ``folder`` with a fresh EC P-256 key; return the public key PEM."""
    from model_signing import signing

    keys.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    private_path = keys / "signer.key"
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    signing.Config().use_elliptic_key_signer(private_key=private_path).sign(folder, signature)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def read_all(paths: list[Path]) -> None:
    """Read every byte once, so that all timed runs start from a warm page cache."""
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(CHUNK):
                pass


@dataclass
class Phases:
    """Seconds spent in each phase of one ``ingest_archive`` call."""

    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("extract", "hash", "store"), 0.0)
    )

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        return timed_call


class TimedStore(BlobStore):
    """A BlobStore whose ``put`` adds its time to a ``Phases``."""

    def __init__(self, root: Path, phases: Phases) -> None:
        super().__init__(root)
        self._put = phases.wrap("store", super().put)

    def put(self, src: Path, sha256: str) -> Path:
        result: Path = self._put(src, sha256)
        return result


@contextmanager
def phase_clock(phases: Phases) -> Iterator[None]:
    """Time extract_archive and sha256_file as ingest_archive calls them (two perf_counter calls each)."""
    saved = ingest_module.extract_archive, ingest_module.sha256_file
    ingest_module.extract_archive = phases.wrap("extract", saved[0])
    ingest_module.sha256_file = phases.wrap("hash", saved[1])
    try:
        yield
    finally:
        ingest_module.extract_archive, ingest_module.sha256_file = saved


def openssl_parallel(files: list[Path], workers: int) -> None:
    """One ``openssl dgst -sha256`` per file, ``workers`` at a time (how model-signing spreads files)."""

    def one(path: Path) -> None:
        subprocess.run(["openssl", "dgst", "-sha256", str(path)], check=True, capture_output=True)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, files))


def timed(fn: Callable[[], object]) -> float:
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        folder = make_model_folder(root, size_mb=args.size_mb, files=args.files)
        files = folder_files(folder)
        payload = sum(p.stat().st_size for p in files)
        archive = pack_tar(folder, root / f"{MODEL}.tar")
        archive_bytes = archive.stat().st_size
        signature = root / f"{MODEL}.sig"  # outside the folder it signs
        trusted = TrustedSigners(public_keys=(sign_folder(folder, root / "keys", signature),))
        limits = ArchiveLimits(
            max_total_bytes=max(ArchiveLimits.max_total_bytes, 2 * payload),
            max_file_bytes=max(ArchiveLimits.max_file_bytes, 2 * payload),
        )
        work_dir = root / "uploads"
        read_all([*files, archive])
        # Untimed check (and warm-up of model_signing's imports): the signature verifies.
        assert verify_folder(folder, signature, trusted).method is SignatureMethod.KEY

        cpus = os.cpu_count() or 1
        names = ["openssl", "openssl_parallel", "sha256sum", "sha256_file", "ingest", "verify"]
        samples: dict[str, list[float]] = {name: [] for name in names}
        phase_samples: list[dict[str, float]] = []
        digest_cmd = [str(p) for p in files]
        for round_no in range(args.repeat):
            samples["openssl"].append(
                timed(
                    lambda: subprocess.run(
                        ["openssl", "dgst", "-sha256", *digest_cmd], check=True, capture_output=True
                    )
                )
            )
            samples["openssl_parallel"].append(timed(partial(openssl_parallel, files, cpus)))
            samples["sha256sum"].append(
                timed(lambda: subprocess.run(["sha256sum", *digest_cmd], check=True, capture_output=True))
            )
            samples["sha256_file"].append(timed(lambda: [sha256_file(p) for p in files]))

            phases = Phases()
            store = TimedStore(root / f"artifacts-{round_no}", phases)  # fresh: every blob really stored
            with phase_clock(phases):
                t_ingest = timed(
                    partial(
                        ingest_archive,
                        archive,
                        model_name=MODEL,
                        store=store,
                        work_dir=work_dir,
                        limits=limits,
                    )
                )
            samples["ingest"].append(t_ingest)
            phase_samples.append({**phases.seconds, "rest": t_ingest - sum(phases.seconds.values())})
            shutil.rmtree(store.root)

            samples["verify"].append(timed(lambda: verify_folder(folder, signature, trusted)))

    med = {name: statistics.median(values) for name, values in samples.items()}
    # The phases of the median ingest run (the lower one for an even --repeat), so they add up.
    ingests = samples["ingest"]
    median_run = sorted(range(len(ingests)), key=ingests.__getitem__)[(len(ingests) - 1) // 2]
    phase_run, t_phase_run = phase_samples[median_run], ingests[median_run]
    base = med["openssl"]

    def row(label: str, seconds: float, note: str = "") -> None:
        rate = payload / MB / seconds
        print(f"  {label:<34} {seconds * 1000:9.1f} ms  {rate:8.0f} MB/s  {base / seconds:6.2f}x{note}")

    size = f"{payload / MB:.0f} MB in {len(files)} files, tar {archive_bytes / MB:.0f} MB"
    print(f"ingest benchmark: {size}, median of {args.repeat}, ratios = throughput / openssl's")
    row("openssl dgst -sha256 (baseline)", base)
    row(f"openssl, one per file, {cpus} at a time", med["openssl_parallel"])
    row("sha256sum", med["sha256sum"])
    row("sha256_file (hash only)", med["sha256_file"])
    verdict = "met" if base / med["ingest"] >= GOAL else "missed"
    row("ingest_archive (extract+hash+store)", med["ingest"], f"   goal >= {GOAL:.1f}x: {verdict}")
    for name, label in (
        ("extract", "pre-scan + extract (write)"),
        ("hash", "sha256_file of extracted files"),
        ("store", "move into the blob store"),
        ("rest", "config, walk, clean-up"),
    ):
        share = phase_run[name] / t_phase_run * 100
        print(f"    {label:<32} {phase_run[name] * 1000:9.1f} ms  {share:5.1f}% of that ingest run")
    parallel = med["openssl_parallel"] / med["verify"]
    row("verify_folder (EC P-256 key)", med["verify"], f"   {parallel:.2f}x of openssl on {cpus} CPUs")


if __name__ == "__main__":
    main()
