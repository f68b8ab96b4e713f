"""Switchover benchmark: sustained gRPC load through HAProxy during promote, rollback, promote.

    python bench/switchover.py [--streams 8] [--min-requests 50000]

Runs the embedded stack's pieces in-process (two real tritonservers, HAProxy,
the rollout engine on SQLite), keeps ``--streams`` tritonclient processes
sending requests through the proxy, and performs blue-green promote ->
rollback -> promote of the example ``mlp`` model. Prints total and failed
requests, p50/p99 in steady state and during each switch, and the time from
the promote call to 100% weight next to Triton's own load time of the same
model measured in the same run (the baseline): the difference is the control
plane's overhead.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from common import examples_module

from controlplane.artifacts.archive import pack_directory
from controlplane.domain.analysis import Gates
from controlplane.domain.models import VersionMetadata
from controlplane.domain.rollouts import RolloutSpec, RolloutState, Strategy
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import local_services
from controlplane.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def _client(url: str, stop, out, counter) -> None:  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.full((1, 16), 0.25, dtype=np.float32))
    starts, latencies, oks = [], [], []
    while not stop.is_set():
        t0 = time.time()
        try:
            client.infer("mlp", [tensor])
            ok = True
        except Exception:  # noqa: BLE001 - counted: failures are the figure this benchmark reports
            ok = False
        starts.append(t0)
        latencies.append(time.time() - t0)
        oks.append(ok)
        if len(starts) % 100 == 0:
            with counter.get_lock():
                counter.value += 100
    client.close()
    out.put((np.array(starts), np.array(latencies), np.array(oks, dtype=bool)))


def _percentiles(latencies: np.ndarray) -> str:
    if latencies.size == 0:
        return "no requests"
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  ({latencies.size} req)"


def _triton_load_seconds(url: str, model: str, headers: dict[str, str], repeat: int = 3) -> float:
    """Median of unload + load of ``model`` on an idle pool (``headers``: its admin key): the baseline."""
    client = grpcclient.InferenceServerClient(url)
    samples = []
    for _ in range(repeat):
        client.unload_model(model, headers=headers)
        while client.is_model_ready(model):
            time.sleep(0.05)
        t0 = time.monotonic()
        client.load_model(model, headers=headers)
        samples.append(time.monotonic() - t0)
    client.unload_model(model, headers=headers)
    client.close()
    return float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--min-requests", type=int, default=50_000)
    parser.add_argument("--settle", type=float, default=3.0, help="steady-state seconds between switches")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-switchover-") as tmp:
        root = Path(tmp)
        api_port, grpc_port, http_port = free_ports(3)
        settings = Settings(
            state_dir=root / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port
        )
        ctx = mp.get_context("spawn")
        stop, out, counter = ctx.Event(), ctx.Queue(), ctx.Value("q", 0)
        procs: list[mp.process.BaseProcess] = []
        with local_services(settings, pool_names=("blue", "green")) as (stack, services):
            try:
                engine = services.engine
                build_examples = examples_module()
                for seed in (1, 2):
                    folder = build_examples.build_mlp(root / f"v{seed}", seed=seed)
                    services.registry.push(
                        model="mlp",
                        archive=pack_directory(folder, root / f"v{seed}.tgz"),
                        metadata=VersionMetadata(),
                    )
                services.deployer.deploy("mlp", 1)

                url = f"127.0.0.1:{grpc_port}"
                procs = [
                    ctx.Process(target=_client, args=(url, stop, out, counter)) for _ in range(args.streams)
                ]
                for p in procs:
                    p.start()
                while counter.value < 2000:  # every client connected and warm
                    time.sleep(0.2)
                # Baseline: Triton's own load time for the same model on the idle pool, under the same load.
                green_live = stack.pools["green"].repository.live / "mlp"
                shutil.copytree(root / "v2" / "mlp", green_live)
                load_seconds = _triton_load_seconds(
                    stack.pools["green"].grpc_url, "mlp", stack.pools["green"].admin_headers
                )
                shutil.rmtree(green_live)
                time.sleep(args.settle)
                switches: list[tuple[str, float, float, float, tuple[float, float, float]]] = []

                def switch(label: str, start_rollout) -> None:  # type: ignore[no-untyped-def]
                    t0 = time.time()
                    rollout = start_rollout()
                    rollout = engine.wait(rollout.id, 300)
                    assert rollout.state is RolloutState.SUCCEEDED, rollout.reason
                    at: dict[str, float] = {}
                    for event in rollout.events:
                        # The first event of a state: measurements recorded later carry its name too.
                        at.setdefault(event.to_state, event.at.timestamp())
                    full = at[RolloutState.BAKING.value]
                    staged = at[RolloutState.STAGING.value]
                    shifted = at[RolloutState.SHIFTING.value]
                    switches.append(
                        (label, t0, full, time.time(), (staged - t0, shifted - staged, full - shifted))
                    )
                    time.sleep(args.settle)

                def promote(version: int):  # type: ignore[no-untyped-def]
                    spec = RolloutSpec(
                        "mlp", version, Strategy.BLUEGREEN, (100,), 0.0, 0.0, Gates()
                    ).validate()
                    return lambda: engine.start(spec, actor="bench")

                switch("promote v2", promote(2))
                switch("rollback to v1", lambda: engine.rollback_model("mlp", actor="bench"))
                switch("promote v2 again", promote(2))
                while counter.value < args.min_requests:
                    time.sleep(0.5)
            finally:
                stop.set()
                results = [out.get() for _ in procs] if procs else []
                for p in procs:
                    p.join()

    starts = np.concatenate([r[0] for r in results])
    latencies = np.concatenate([r[1] for r in results])
    oks = np.concatenate([r[2] for r in results])
    in_switch = np.zeros(starts.size, dtype=bool)
    print(f"switchover benchmark: {args.streams} gRPC streams through HAProxy, blue-green, model mlp")
    print(f"  total requests {starts.size}, failed {int((~oks).sum())}")
    for label, t0, _full, t_end, _phases in switches:
        mask = (starts >= t0) & (starts <= t_end)
        in_switch |= mask
        print(f"  during {label:<18} {_percentiles(latencies[mask & oks])}")
    print(f"  steady state             {_percentiles(latencies[~in_switch & oks])}")
    print(f"  Triton load_model of mlp (baseline)   {load_seconds:6.2f} s")
    for label, t0, full, _t_end, phases in switches:
        total = full - t0
        overhead = total - load_seconds
        print(f"  {label:<18} call -> 100% weight {total:6.2f} s   overhead over load {overhead:+6.2f} s")
        accept, stage, shift = phases
        print(
            f"  {'':<18}   accept {accept:5.2f} s, stage+load+checks {stage:5.2f} s, shift {shift:5.2f} s"
        )


if __name__ == "__main__":
    main()
