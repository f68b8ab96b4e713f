"""The baseline of ``bench/versus_fastapi.py``: a plain FastAPI app serving ONNX files with onnxruntime.

    PLAIN_MODELS=small=/path/small.onnx,medium=/path/medium.onnx \\
        uvicorn plain_server:app --workers 2 --port 8080

What a careful engineer writes without Triton: one onnxruntime CPU session per
model and worker process (``intra_op_num_threads=1``: the workers are the
parallelism, as Triton's instances are), Triton's KServe v2 JSON request and
response on ``POST /v2/models/{model}/infer`` so that the very same request
body serves both sides, the body read as bytes and decoded with ``json``
(no pydantic model: its validation would cost this side, not the stack), and
``session.run`` called in the event loop: one inference at a time per worker,
as one Triton instance runs one batch at a time, with no thread pool that
would give a worker more cores than its one intra-op thread.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

# KServe v2 data types this baseline accepts: the benchmark sends FP32 only.
DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class Served:
    """One model: its session and its graph's input and output names."""

    def __init__(self, path: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.inputs = [node.name for node in self.session.get_inputs()]
        self.outputs = [node.name for node in self.session.get_outputs()]


def parse_models(spec: str) -> dict[str, str]:
    """``name=path,name=path`` into a dict."""
    pairs = (item.split("=", 1) for item in spec.split(",") if item.strip())
    return {name.strip(): path.strip() for name, path in pairs}


def create_app(models: dict[str, str]) -> FastAPI:
    """The app serving ``models`` (name -> ONNX path)."""
    served = {name: Served(path) for name, path in models.items()}
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(status_code=200)

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        entry = served.get(model)
        if entry is None:
            return JSONResponse({"error": f"unknown model {model!r}"}, status_code=404)
        try:
            body = json.loads(await request.body())
            feed = {
                item["name"]: np.asarray(item["data"], dtype=DTYPES[item["datatype"]]).reshape(item["shape"])
                for item in body["inputs"]
            }
            values = entry.session.run(entry.outputs, feed)
        except Exception as exc:  # noqa: BLE001 - the client gets the reason, as from Triton
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=400)
        outputs: list[dict[str, Any]] = [
            {
                "name": name,
                "datatype": NAMES.get(value.dtype, str(value.dtype)),
                "shape": list(value.shape),
                "data": value.ravel().tolist(),
            }
            for name, value in zip(entry.outputs, values, strict=True)
        ]
        answer = {"model_name": model, "model_version": "1", "outputs": outputs}
        return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")

    return app


app = create_app(parse_models(os.environ.get("PLAIN_MODELS", "")))
