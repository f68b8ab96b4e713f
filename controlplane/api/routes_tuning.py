"""Tuning endpoints: start a batching sweep of a model on the idle pool, follow it."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from controlplane.api.auth import Authenticator
from controlplane.api.params import ModelParam
from controlplane.domain.auth import Permission
from controlplane.domain.limits import MAX_ID
from controlplane.domain.tuning import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DELAYS_US,
    DEFAULT_INSTANCE_COUNTS,
    DEFAULT_PREFERRED_SIZES,
    DEFAULT_SECONDS_PER_CONFIG,
    MAX_BACKEND_THREADS,
    MAX_BATCH_SIZE,
    MAX_CONCURRENCY,
    MAX_DELAY_US,
    MAX_INSTANCE_COUNT,
    MAX_P99_MS,
    MAX_SECONDS_PER_CONFIG,
    MAX_VALUES_PER_DIMENSION,
    MIN_SECONDS_PER_CONFIG,
    SweepSpec,
)
from controlplane.tuning.tuner import Tuner, TuningRun

RunIdParam = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[a-f0-9]+$")]


class TuneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ID,
        description="the version to tune (default: production's, else the latest)",
    )
    p99_ms: float = Field(gt=0, le=MAX_P99_MS, description="latency objective: the best configuration's p99")
    delays_us: list[Annotated[int, Field(ge=0, le=MAX_DELAY_US)]] = Field(
        default=list(DEFAULT_DELAYS_US),
        min_length=1,
        max_length=MAX_VALUES_PER_DIMENSION,
        description="dynamic batching max_queue_delay_microseconds values to sweep",
    )
    preferred_batch_sizes: list[Annotated[int, Field(ge=0, le=MAX_BATCH_SIZE)]] = Field(
        default=list(DEFAULT_PREFERRED_SIZES),
        min_length=1,
        max_length=MAX_VALUES_PER_DIMENSION,
        description="preferred batch sizes to sweep, one per configuration (0: none preferred)",
    )
    instance_counts: list[Annotated[int, Field(ge=1, le=MAX_INSTANCE_COUNT)]] = Field(
        default=list(DEFAULT_INSTANCE_COUNTS),
        min_length=1,
        max_length=MAX_VALUES_PER_DIMENSION,
        description="instance_group counts to sweep",
    )
    backend_threads: list[Annotated[int, Field(ge=0, le=MAX_BACKEND_THREADS)]] = Field(
        default=[],
        max_length=MAX_VALUES_PER_DIMENSION,
        description=(
            "onnxruntime backend only: intra-op session threads per instance to sweep (0: onnxruntime's "
            "own choice); empty: every configuration keeps the version's"
        ),
    )
    concurrency: int = Field(
        default=DEFAULT_CONCURRENCY,
        ge=1,
        le=MAX_CONCURRENCY,
        description="requests in flight while measuring",
    )
    seconds_per_config: float = Field(
        default=DEFAULT_SECONDS_PER_CONFIG,
        ge=MIN_SECONDS_PER_CONFIG,
        le=MAX_SECONDS_PER_CONFIG,
        description="measured seconds per configuration (after a short warm-up)",
    )

    def spec(self) -> SweepSpec:
        return SweepSpec(
            p99_ms=self.p99_ms,
            delays_us=tuple(self.delays_us),
            preferred_batch_sizes=tuple(self.preferred_batch_sizes),
            instance_counts=tuple(self.instance_counts),
            backend_threads=tuple(self.backend_threads),
            concurrency=self.concurrency,
            seconds_per_config=self.seconds_per_config,
        )


class TuningOut(BaseModel):
    """A tuning run: its settings, every configuration measured so far, the best, the new version."""

    id: str
    model: str
    version: int
    pool: str
    tuning_model: str
    state: str = Field(description="running, succeeded or failed")
    phase: str
    actor: str
    started_at: str
    finished_at: str | None
    objective_p99_ms: float
    settings: dict[str, Any]
    planned: int = Field(description="configurations swept (the default configuration is measured first)")
    default_config: dict[str, Any]
    trials: list[dict[str, Any]] = Field(description="index 0: the default configuration; 1..: the sweep")
    best: dict[str, Any] | None
    new_version: int | None
    version_created: bool | None
    error: dict[str, Any] | None


def tuning_out(run: TuningRun) -> TuningOut:
    return TuningOut(**run.as_dict())


def tuning_router(tuner: Tuner, auth: Authenticator) -> APIRouter:
    """POST /v1/models/{model}/tune, GET /v1/tunings and GET /v1/tunings/{id}."""
    router = APIRouter(tags=["tuning"])
    Reader = Annotated[str, Depends(auth.require(Permission.READ))]
    Deployer = Annotated[str, Depends(auth.require(Permission.DEPLOY))]

    @router.post(
        "/v1/models/{model}/tune",
        response_model=TuningOut,
        status_code=202,
        responses={
            404: {"description": "unknown model or version"},
            409: {
                "description": "the idle pool is held (`pool_busy`), or every pool serves (`no_idle_pool`)"
            },
            422: {
                "description": "a sweep out of bounds; a model that cannot batch (`batching_not_supported`)"
            },
        },
    )
    async def tune(model: ModelParam, body: TuneIn, actor: Deployer) -> JSONResponse:
        """Measure batching configurations of a version on the idle pool; the best becomes a new version.

        Answered at once (202) with the run, which goes on in the background
        (minutes): follow it at ``Location``.
        """
        run = await run_in_threadpool(tuner.start, model, body.spec(), version=body.version, actor=actor)
        return JSONResponse(
            tuning_out(run).model_dump(mode="json"),
            status_code=202,
            headers={"Location": f"/v1/tunings/{run.id}"},
        )

    @router.get("/v1/tunings", response_model=list[TuningOut])
    def list_runs(_actor: Reader) -> list[TuningOut]:
        """Tuning runs this control plane started since it started, newest first."""
        return [tuning_out(r) for r in tuner.list()]

    @router.get("/v1/tunings/{run_id}", response_model=TuningOut)
    def get_run(run_id: RunIdParam, _actor: Reader) -> TuningOut:
        """A run's state, each configuration's figures as they come, and the new version once written."""
        return tuning_out(tuner.get(run_id))

    return router
