"""A control plane process for ``test_runtime_adoption``: a two-pool LocalStack run until SIGTERM.

Usage: ``python adoption_stack.py STATE_DIR GRPC_PORT HTTP_PORT INFO_FILE [WEIGHTS]``
(WEIGHTS: initial HAProxy weights, default ``blue=1,green=0``)

Starts (or adopts) Triton pools blue and green and HAProxy in front (green at
weight 0: it serves no model), makes sure the example model ``mlp`` is READY
on blue (copies ``model_repository/mlp`` into blue's live repository and loads
it with tritonclient, unless it is READY already, as on an adopted Triton),
loads it again whenever blue's Triton is restarted, then writes INFO_FILE
(JSON: pids, ports, shm prefixes, what was adopted) and waits. SIGTERM stops
everything; the test's kill -9 stops nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import tritonclient.grpc as grpcclient

from controlplane.runtime.local import LocalStack

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "mlp"


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def ensure_model(url: str, headers: dict[str, str], timeout: float = 60.0) -> bool:
    """Load MODEL on the Triton at ``url`` (``headers``: the pool's admin key) unless it is READY.

    Returns whether a load was needed.
    """
    client = grpcclient.InferenceServerClient(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not client.is_server_ready():
                    raise RuntimeError("not ready")
                break
            except Exception:  # a restarting server refuses connections for a while
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if client.is_model_ready(MODEL):
            return False
        client.load_model(MODEL, headers=headers)
        while not client.is_model_ready(MODEL):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{MODEL} not READY on {url}")
            time.sleep(0.05)
        return True
    finally:
        client.close()


def _write_info(path: Path, info: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state_dir, grpc_port, http_port, info_file = (
        Path(sys.argv[1]),
        int(sys.argv[2]),
        int(sys.argv[3]),
        Path(sys.argv[4]),
    )
    weights_arg = sys.argv[5] if len(sys.argv) > 5 else "blue=1,green=0"
    weights = {name: int(w) for name, w in (item.split("=") for item in weights_arg.split(","))}
    signal.signal(signal.SIGTERM, _interrupt)
    stack = LocalStack(
        state_dir,
        host="127.0.0.1",
        grpc_port=grpc_port,
        http_port=http_port,
        pool_names=("blue", "green"),
        initial_weights=weights,
    )
    try:
        started = time.monotonic()
        stack.start(timeout=60)
        blue = stack.pools["blue"]
        live = blue.repository.live / MODEL
        if not live.exists():
            shutil.copytree(REPO_ROOT / "model_repository" / MODEL, live)
        loaded = ensure_model(blue.grpc_url, blue.admin_headers)
        assert blue.process is not None and stack.proxy is not None
        blue.process.on_restart = lambda: print(
            f"reloaded {MODEL} after restart: {ensure_model(blue.grpc_url, blue.admin_headers)}", flush=True
        )
        _write_info(
            info_file,
            {
                "pid": os.getpid(),
                "started_seconds": time.monotonic() - started,
                "loaded_model": loaded,
                "proxy": {"pid": stack.proxy.pid, "adopted": stack.proxy.adopted},
                "pools": {
                    name: {
                        "pid": p.process.pid if p.process else None,
                        "adopted": bool(p.process and p.process.adopted),
                        "grpc_url": p.grpc_url,
                        "http_port": p.http_port,
                        "grpc_port": p.grpc_port,
                        "metrics_port": p.metrics_port,
                        "shm_prefix": p.shm_prefix,
                    }
                    for name, p in stack.pools.items()
                },
            },
        )
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
