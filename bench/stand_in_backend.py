"""What the ``onnxruntime`` stand-in backend spends in Python around ``session.run``, per dynamic batch.

    python bench/stand_in_backend.py [--models small,medium] [--batches 1,16] [--seconds 2]

Loads ``controlplane/triton/backends/onnxruntime/model.py`` outside Triton
with a minimal ``triton_python_backend_utils`` stand-in (requests are dicts,
tensors and responses plain objects), so what is timed is the backend's own
Python: reading inputs, concatenating the batch, ``session.run``, splitting
the outputs, building responses. Triton's own costs (shared memory, the stub's
messages) are not in it. The models are those of ``bench/mlp_models.py``.

Per model and batch (that many requests of one row each, as Triton's dynamic
batcher hands them to ``execute``) the baseline, measured in the same run, is
``session.run`` alone on the rows already concatenated; printed: the time of
each per batch, their ratio, and the overhead in microseconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
from mlp_models import SHAPES, build_mlp_folder

from controlplane.triton.backend_dir import onnxruntime_backend_model_file

INPUT, OUTPUT = "INPUT0", "OUTPUT0"


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: Any = None) -> None:
        self.output_tensors, self.error = output_tensors, error


def _pb_utils() -> SimpleNamespace:
    return SimpleNamespace(
        get_input_tensor_by_name=lambda request, name: (
            _Tensor(name, request[name]) if name in request else None
        ),
        Tensor=_Tensor,
        InferenceResponse=_Response,
        TritonError=Exception,
    )


def load_backend(path: Path) -> ModuleType:
    """The stand-in backend's ``model.py`` at ``path`` as a module, with the minimal ``pb_utils``."""
    spec = importlib.util.spec_from_file_location(f"stand_in_backend_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__dict__["pb_utils"] = _pb_utils()
    return module


def per_call(fns: Sequence[Callable[[], object]], seconds: float, slices: int = 10) -> list[float]:
    """Seconds per call of each of ``fns``: the best of ``slices`` slices, the functions taking turns.

    Taking turns slice by slice lets the load of a shared machine touch every
    function alike; the best slice is the one least disturbed.
    """
    for fn in fns:
        for _ in range(20):
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(slices):
        for index, fn in enumerate(fns):
            calls, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds / slices:
                fn()
                calls += 1
            best[index] = min(best[index], elapsed / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small,medium")
    parser.add_argument("--batches", default="1,16", help="requests per execute() call, comma-separated")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument(
        "--backend",
        type=Path,
        action="append",
        help="model.py files to compare (repeatable); default: the project's",
    )
    args = parser.parse_args()
    backends = {path: load_backend(path) for path in args.backend or [onnxruntime_backend_model_file()]}
    print(
        "stand-in backend: execute() with a minimal pb_utils against session.run alone on the same rows "
        "(baseline), taking turns, best of 10 slices"
    )
    with tempfile.TemporaryDirectory(prefix="bench-stand-in-") as tmp:
        for name in (n.strip() for n in args.models.split(",") if n.strip()):
            spec = SHAPES[name]
            folder = build_mlp_folder(Path(tmp), spec)
            config = {
                "max_batch_size": 64,
                "input": [{"name": INPUT, "data_type": "TYPE_FP32", "dims": [spec.input_width]}],
                "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [spec.output_width]}],
            }
            models = {}
            for path, backend in backends.items():
                model = backend.TritonPythonModel()
                model.initialize(
                    {
                        "model_config": json.dumps(config),
                        "model_repository": str(folder),
                        "model_version": "1",
                        "model_name": name,
                    }
                )
                models[path] = model
            session = next(iter(models.values()))._session
            for batch in (int(b) for b in args.batches.split(",")):
                rng = np.random.default_rng(batch)
                rows = rng.standard_normal((batch, spec.input_width)).astype(np.float32)
                requests = [{INPUT: rows[i : i + 1].copy()} for i in range(batch)]
                expected = session.run([OUTPUT], {INPUT: rows})[0]
                for model in models.values():
                    got = np.concatenate([r.output_tensors[0].as_numpy() for r in model.execute(requests)])
                    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
                calls = [partial(session.run, [OUTPUT], {INPUT: rows})]
                calls += [partial(model.execute, requests) for model in models.values()]
                run, *executes = per_call(calls, args.seconds * len(calls))
                for path, execute in zip(models, executes, strict=True):
                    label = f"  ({path})" if len(models) > 1 else ""
                    print(
                        f"  {name:<6} batch {batch:>3}: session.run {run * 1e6:8.1f} us  "
                        f"execute {execute * 1e6:8.1f} us  ratio {execute / run:5.2f}x  "
                        f"overhead {(execute - run) * 1e6:7.1f} us "
                        f"({(execute - run) / batch * 1e6:.1f} us/request){label}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
