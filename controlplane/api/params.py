"""Path parameters and upload streaming shared by the routers."""

from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam

from controlplane.artifacts.ingest import UploadSink
from controlplane.domain.limits import MAX_ID
from controlplane.domain.models import validate_model_name
from controlplane.errors import InvalidInput, PayloadTooLarge


async def _valid_model(model: Annotated[str, PathParam(max_length=256)]) -> str:
    """Every route checks the model name before anything reaches the registry (422 otherwise).

    A coroutine: FastAPI runs a plain function dependency in a worker thread, a round trip for a regex.
    """
    return validate_model_name(model)


ModelParam = Annotated[str, Depends(_valid_model)]
VersionParam = Annotated[int, PathParam(ge=1, le=MAX_ID)]


async def receive_upload(request: Request, directory: Path, *, max_bytes: int, what: str) -> UploadSink:
    """Stream the request body to a file (never whole in memory); 413 past ``max_bytes``, 422 if empty."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"upload of {declared} bytes is over the limit of {max_bytes}")
    sink = UploadSink(directory, max_bytes=max_bytes)
    try:
        async for chunk in request.stream():
            sink.write(chunk)
        sink.close()
        if sink.size == 0:
            raise InvalidInput(f"the request body is empty; send {what}", code="empty_upload")
    except BaseException:
        sink.discard()
        raise
    return sink
