"""Registry endpoints: models, their versions, and pushing a new version."""

import asyncio
import contextvars
import math
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from controlplane.api import schemas
from controlplane.api.auth import Authenticator
from controlplane.api.params import ModelParam, VersionParam, receive_upload
from controlplane.domain.auth import Permission
from controlplane.domain.limits import MAX_ID, MAX_LIST_ITEMS, validate_text
from controlplane.domain.models import VersionMetadata
from controlplane.domain.version_metadata import MetadataChange
from controlplane.errors import InvalidInput, UnsupportedMediaType
from controlplane.registry.store import CommitWatch
from controlplane.services.admission import compare_with_production
from controlplane.services.registry import VIEW_CACHE_ENTRIES, LruCache, Registry, VersionView
from controlplane.services.version_metadata import change_metadata

T = TypeVar("T")
V = TypeVar("V")

# Threads of the version reads: no more than the database's pool holds connections (SQLAlchemy's default: 5).
READ_WORKERS = 4

ARCHIVE_TYPES = {
    "application/gzip",
    "application/x-gzip",
    "application/x-tar",
    "application/x-compressed-tar",
    "application/zip",
    "application/octet-stream",
}


def _pairs(items: list[str], what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{what} {item!r} is not of the form name=value", code=f"invalid_{what}")
        validate_text(key, what=what)
        validate_text(value, what=what)
        result[key] = value
    return result


def _metadata(labels: list[str], metrics: list[str], api_version: str | None) -> VersionMetadata:
    parsed_metrics: dict[str, float] = {}
    for key, value in _pairs(metrics, "metric").items():
        try:
            number = float(value)
        except ValueError:
            raise InvalidInput(f"metric {key!r} is not a number: {value!r}", code="invalid_metric") from None
        if not math.isfinite(number):
            raise InvalidInput(f"metric {key!r} is not finite", code="invalid_metric")
        parsed_metrics[key] = number
    return VersionMetadata(labels=_pairs(labels, "label"), metrics=parsed_metrics, api_version=api_version)


def _shared(registry: Registry, *what: Hashable) -> Hashable | None:
    """The key under which requests share one read of ``what``: with the commit mark now (None: no mark)."""
    mark = registry.commits.mark()
    return (*what, mark) if mark is not None else None


def _version_json(view: VersionView) -> bytes:
    found, comparison = view
    return schemas.version_json(found, comparison.as_dict() if comparison is not None else None)


class RegistryReads:
    """Worker threads of the version reads: a few of their own rather than the shared pool's forty.

    One core runs Python at a time, so more threads only queue for the GIL, and
    each one beyond the database's connection pool opens and closes a
    connection of its own. The thread sees the request's context (its id in
    the log lines).
    """

    def __init__(self, workers: int = READ_WORKERS) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="registry-read")
        self._running: dict[Hashable, asyncio.Future[Any]] = {}

    async def run(self, key: Hashable | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in one of the threads; a call with the same ``key`` under way is joined.

        After a commit every request for an answer misses at once: one read serves them all. The key must
        hold the commit mark taken when the request came, so that no request joins a read begun before a
        commit it came after; None: not shared.
        """
        running = self._running.get(key) if key is not None else None
        if running is None:
            call = partial(contextvars.copy_context().run, partial(fn, *args, **kwargs))
            running = asyncio.get_running_loop().run_in_executor(self._executor, call)
            if key is not None:
                self._running[key] = running
                running.add_done_callback(partial(self._done, key))
        result: T = await asyncio.shield(running)
        return result

    def _done(self, key: Hashable, running: asyncio.Future[Any]) -> None:
        del self._running[key]
        if not running.cancelled():
            running.exception()  # retrieved here too: every request waiting for it may have gone


class Bodies:
    """The JSON body of each answer the registry keeps: the same object again, the same bytes again."""

    def __init__(self, max_entries: int) -> None:
        self._kept: LruCache[Hashable, tuple[object, bytes]] = LruCache(max_entries)

    def of(self, key: Hashable, answer: V, render: Callable[[V], bytes]) -> bytes:
        """``render(answer)``, or the bytes rendered before for this very object under ``key``."""
        kept = self._kept.get(key)
        if kept is not None and kept[0] is answer:
            return kept[1]
        body = render(answer)
        self._kept[key] = (answer, body)  # holding the answer keeps its identity from being reused
        return body


class VersionBodies:
    """The JSON body of each version read, the same bytes again while nothing was committed since."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._bodies = Bodies(VIEW_CACHE_ENTRIES)

    def of(self, model: str, number: int, view: VersionView) -> bytes:
        """The body of ``view``, rendered once per view."""
        return self._bodies.of(("version", model, number), view, _version_json)

    @property
    def commits(self) -> CommitWatch:
        """The commit watch whose marks the kept views were read at."""
        return self._registry.commits

    def unchanged(self, model: str, number: int) -> bytes | None:
        """The body of a version read before with nothing committed since, else None. Never waits."""
        view = self._registry.unchanged_view(model, number)
        return None if view is None else self.of(model, number, view)

    def unchanged_at(self, model: str, number: int, mark: int) -> bytes | None:
        """``unchanged`` for a mark of ``commits`` the caller has just taken. Never waits."""
        view = self._registry.unchanged_view(model, number, mark)
        return None if view is None else self.of(model, number, view)


def models_router(
    registry: Registry,
    auth: Authenticator,
    *,
    max_upload_bytes: int,
    version_bodies: VersionBodies | None = None,
) -> APIRouter:
    """Routes under /v1/models: list and read models and versions, push a version.

    ``version_bodies`` keeps the version reads' answers; pass the one a
    ``VersionReadShortcut`` in front of the app answers from.
    """
    router = APIRouter(tags=["registry"])
    reads = RegistryReads()
    bodies = Bodies(VIEW_CACHE_ENTRIES)
    versions = version_bodies or VersionBodies(registry)
    Reader = Annotated[str, Depends(auth.require(Permission.READ))]
    Publisher = Annotated[str, Depends(auth.require(Permission.PUSH))]
    # Metrics decide promotions (the metric gate), so changing them after the push is a deployer's act.
    Deployer = Annotated[str, Depends(auth.require(Permission.DEPLOY))]

    def compatibility(model: str, number: int) -> dict[str, Any] | None:
        comparison = compare_with_production(registry.db, model, number)
        return comparison.as_dict() if comparison is not None else None

    @router.get("/v1/models", response_model=list[schemas.ModelOut])
    def list_models(_actor: Reader) -> list[schemas.ModelOut]:
        return [schemas.model_out(m) for m in registry.list_models()]

    @router.get("/v1/models/{model}", response_model=schemas.ModelOut)
    def get_model(model: ModelParam, _actor: Reader) -> schemas.ModelOut:
        return schemas.model_out(registry.get_model(model))

    # The two reads below: an answer read before is given again from the event loop while nothing was
    # committed since (Registry.unchanged_*), else read in a worker thread. The body is serialised once
    # (OpenAPI still shows the schema): FastAPI would validate a returned model again.

    @router.get("/v1/models/{model}/versions", response_model=list[schemas.VersionSummaryOut])
    async def list_versions(
        model: ModelParam,
        _actor: Reader,
        limit: Annotated[int, Query(ge=1, le=1000, description="at most this many versions")] = 100,
        order: Annotated[
            Literal["asc", "desc"],
            Query(
                description="asc: oldest first; desc: newest first (the next page: before=the last number)"
            ),
        ] = "asc",
        after: Annotated[int, Query(ge=0, le=MAX_ID, description="only versions numbered above this")] = 0,
        before: Annotated[
            int | None, Query(ge=1, le=MAX_ID, description="only versions numbered below this")
        ] = None,
    ) -> Response:
        """A page of the model's versions (a JSON list), oldest first unless order=desc."""
        newest_first = order == "desc"
        page = registry.unchanged_page(
            model, limit=limit, after=after, before=before, newest_first=newest_first
        )
        if page is None:
            page = await reads.run(
                _shared(registry, "page", model, limit, after, before, newest_first),
                registry.list_versions,
                model,
                limit=limit,
                after=after,
                before=before,
                newest_first=newest_first,
            )
        key = ("page", model, limit, after, before, newest_first)
        return Response(bodies.of(key, page, schemas.version_summaries_json), media_type="application/json")

    @router.get("/v1/models/{model}/versions/{version}", response_model=schemas.VersionOut)
    async def get_version(model: ModelParam, version: VersionParam, _actor: Reader) -> Response:
        """The version with its manifest, and its compatibility with the version serving production."""
        body = versions.unchanged(model, version)
        if body is None:
            key = _shared(registry, "version", model, version)
            body = versions.of(model, version, await reads.run(key, registry.version_view, model, version))
        return Response(body, media_type="application/json")

    @router.patch(
        "/v1/models/{model}/versions/{version}/metadata",
        response_model=schemas.VersionOut,
        responses={422: {"description": "An invalid name or value, or an attempt to change api_version."}},
    )
    def change_version_metadata(
        model: ModelParam, version: VersionParam, body: schemas.MetadataPatchIn, actor: Deployer
    ) -> schemas.VersionOut:
        """Set (a value) or remove (null) metrics and labels of a version; api_version is fixed at push."""
        if "api_version" in body.model_fields_set:
            raise InvalidInput(
                "api_version is fixed at push: it describes the version's interface, which never changes; "
                "push a new version to declare another",
                code="api_version_fixed",
            )
        changed = change_metadata(
            registry.db,
            model=model,
            number=version,
            change=MetadataChange(metrics=body.metrics, labels=body.labels),
            actor=actor,
        )
        return schemas.version_out(changed, compatibility(model, version))

    @router.post(
        "/v1/models/{model}/versions",
        response_model=schemas.PushOut,
        status_code=201,
        responses={200: {"description": "identical content was pushed before: the existing version"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "A Triton model folder (config.pbtxt and one version directory) as "
                "tar, tar.gz or zip.",
                "content": {
                    t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(ARCHIVE_TYPES)
                },
            }
        },
    )
    async def push_version(
        model: ModelParam,
        request: Request,
        actor: Publisher,
        label: Annotated[
            list[str], Query(description="name=value, repeatable", max_length=MAX_LIST_ITEMS)
        ] = [],  # noqa: B006
        metric: Annotated[
            list[str], Query(description="name=number, repeatable", max_length=MAX_LIST_ITEMS)
        ] = [],  # noqa: B006
        api_version: Annotated[str | None, Query(max_length=64)] = None,
    ) -> Response:
        if api_version is not None:
            validate_text(api_version, what="api_version")
        metadata = _metadata(label, metric, api_version)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ARCHIVE_TYPES:
            accepted = ", ".join(sorted(ARCHIVE_TYPES))
            raise UnsupportedMediaType(
                f"content type {content_type or 'none'!r} is not an archive; send one of: {accepted}"
            )
        sink = await receive_upload(
            request, registry.uploads_dir, max_bytes=max_upload_bytes, what="the model archive"
        )
        try:
            version, created = await run_in_threadpool(
                registry.push, model=model, archive=sink.path, metadata=metadata, actor=actor
            )
        finally:
            sink.discard()
        against = await run_in_threadpool(compatibility, version.model, version.number)
        body = schemas.PushOut(**schemas.version_out(version, against).model_dump(), created=created)
        return JSONResponse(body.model_dump(mode="json"), status_code=201 if created else 200)

    return router
