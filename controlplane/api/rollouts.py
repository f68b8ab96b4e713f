"""REST endpoints for rollouts, their approval, and model rollback."""

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from controlplane.api.auth import Authenticator
from controlplane.domain.analysis import (
    DEFAULT_MAX_HOLD_SECONDS,
    DEFAULT_MIN_REQUESTS,
    DEFAULT_WARMUP_REQUESTS,
    MAX_GATE_COUNT,
    MAX_HOLD_SECONDS,
    Gates,
)
from controlplane.domain.auth import Permission
from controlplane.domain.limits import MAX_ID, has_control_characters
from controlplane.domain.models import validate_model_name
from controlplane.domain.rollouts import RequestedAction, Rollout, Strategy, make_spec
from controlplane.errors import ControlPlaneError
from controlplane.rollout.engine import RolloutEngine
from controlplane.services.aliases import Aliases


class GatesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_error_rate: float | None = Field(default=None, ge=0, le=1, description="fraction of failed requests")
    max_p99_ms: float | None = Field(default=None, gt=0, le=86_400_000)
    min_requests: int = Field(
        default=DEFAULT_MIN_REQUESTS,
        ge=0,
        le=MAX_GATE_COUNT,
        description="requests the candidate must serve in a step's window before its gates count",
    )
    max_hold_seconds: float = Field(
        default=DEFAULT_MAX_HOLD_SECONDS,
        ge=0,
        le=MAX_HOLD_SECONDS,
        description="how long a step holds for min_requests before on_no_data applies",
    )
    on_no_data: Literal["abort", "hold", "promote"] = Field(
        default="abort",
        description="after max_hold_seconds without enough traffic: roll back, keep holding, or go on",
    )
    max_error_rate_increase: float | None = Field(
        default=None, ge=0, le=1, description="candidate error rate minus the baseline pool's, same window"
    )
    max_p99_ratio: float | None = Field(
        default=None, gt=0, le=1_000_000, description="candidate p99 over the baseline pool's, same window"
    )
    golden: bool = Field(default=True, description="run the version's golden set before any traffic")
    warmup_requests: int = Field(
        default=DEFAULT_WARMUP_REQUESTS,
        ge=0,
        le=MAX_GATE_COUNT,
        description="inferences sent to every candidate replica before it gets traffic",
    )
    metric: str | None = Field(
        default=None, max_length=128, description="a version metric that must not be worse than production's"
    )
    metric_max_drop: float = Field(default=0.0, ge=0, le=1e12, description="how much worse it may be")
    metric_lower_is_better: bool = Field(default=False, description="the metric is a loss (lower is better)")


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=256)
    version: Annotated[int, Field(ge=1, le=MAX_ID)] | Annotated[str, Field(min_length=1, max_length=65)] = (
        Field(description="a version number, or an alias of the model (challenger, ...) resolved at start")
    )
    strategy: Literal["bluegreen", "canary", "inplace"] = "canary"
    steps: list[Annotated[int, Field(ge=0, le=100)]] | None = Field(
        default=None, max_length=100, description="percent of traffic per step, ending at 100"
    )
    step_seconds: float = Field(default=30.0, ge=0, le=3600)
    bake_seconds: float = Field(default=60.0, ge=0, le=86400)
    gates: GatesIn = Field(default_factory=GatesIn)
    allow_breaking: bool = Field(
        default=False,
        description="roll out an interface that breaks clients (needs a new major api_version)",
    )


class RolloutEventOut(BaseModel):
    at: datetime
    from_state: str | None
    to_state: str
    step_index: int | None
    weights: dict[str, int]
    reason: str
    measurements: dict[str, Any]


class RolloutOut(BaseModel):
    id: int
    model: str
    version: int
    from_version: int | None
    strategy: str
    state: str
    active: bool
    steps: list[int]
    step_index: int | None
    target_percent: int
    step_seconds: float
    bake_seconds: float
    gates: dict[str, Any]
    source_pool: str
    target_pool: str
    requested_action: str | None
    reason: str
    actor: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    approved_by: str | None = Field(
        default=None, description="who approved it (models that require approval)"
    )
    decided_at: datetime | None = Field(default=None, description="when it was approved, rejected or expired")
    approval_expires_at: datetime | None = Field(
        default=None, description="until when it may be approved (null: its model required no approval)"
    )
    live_weights: dict[str, int] | None = None
    events: list[RolloutEventOut]


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=1000, description="why the request is refused (audited)")

    @field_validator("reason")
    @classmethod
    def _printable(cls, value: str) -> str:
        if has_control_characters(value):
            raise ValueError("the reason may not hold control characters")
        return value


def rollout_out(r: Rollout, live_weights: dict[str, int] | None = None) -> RolloutOut:
    return RolloutOut(
        id=r.id,
        model=r.spec.model,
        version=r.spec.version,
        from_version=r.from_version,
        strategy=r.spec.strategy.value,
        state=r.state.value,
        active=r.active,
        steps=list(r.spec.steps),
        step_index=r.step_index,
        target_percent=r.target_percent(),
        step_seconds=r.spec.step_seconds,
        bake_seconds=r.spec.bake_seconds,
        gates=r.spec.gates.as_dict(),
        source_pool=r.source_pool,
        target_pool=r.target_pool,
        requested_action=r.requested_action.value if r.requested_action else None,
        reason=r.reason,
        actor=r.actor,
        created_at=r.created_at,
        updated_at=r.updated_at,
        finished_at=r.finished_at,
        approved_by=r.approved_by,
        decided_at=r.decided_at,
        approval_expires_at=r.approval_expires_at,
        live_weights=live_weights,
        events=[
            RolloutEventOut(
                at=e.at,
                from_state=e.from_state,
                to_state=e.to_state,
                step_index=e.step_index,
                weights=dict(e.weights),
                reason=e.reason,
                measurements=dict(e.measurements),
            )
            for e in r.events
        ],
    )


def rollouts_router(engine: RolloutEngine, auth: Authenticator, aliases: Aliases | None = None) -> APIRouter:
    """Routes under /v1/rollouts and /v1/models/{model}/rollback."""
    router = APIRouter(tags=["rollouts"])
    Reader = Annotated[str, Depends(auth.require(Permission.READ))]
    Deployer = Annotated[str, Depends(auth.require(Permission.DEPLOY))]
    Approver = Annotated[str, Depends(auth.require(Permission.APPROVE))]
    RolloutId = Annotated[int, Path(ge=1, le=MAX_ID)]

    def live_weights() -> dict[str, int] | None:
        try:
            return engine.router.weights()
        except ControlPlaneError:
            return None

    def accepted(rollout: Rollout) -> JSONResponse:
        """202: the rollout goes on in the background; the body is its state now."""
        return JSONResponse(rollout_out(rollout, live_weights()).model_dump(mode="json"), status_code=202)

    @router.post("/v1/rollouts", response_model=RolloutOut, status_code=202)
    def create(body: RolloutIn, actor: Deployer) -> JSONResponse:
        """Start moving traffic to a version; 409 while another rollout runs on the pools.

        For a model that requires approval the rollout is recorded in state
        pending_approval (holding no pool) until another principal approves it.
        """
        validate_model_name(body.model)
        resolver = aliases or Aliases(db=engine.db)
        version, alias = resolver.version_of(body.model, body.version)
        spec = make_spec(
            model=body.model,
            version=version,
            strategy=Strategy(body.strategy),
            steps=body.steps,
            step_seconds=body.step_seconds,
            bake_seconds=body.bake_seconds,
            gates=Gates(**body.gates.model_dump(), allow_breaking=body.allow_breaking),
        )
        rollout = engine.start(spec, actor=actor)
        if alias is not None:
            resolver.note_rollout(rollout.id, model=body.model, alias=alias, version=version, actor=actor)
        return accepted(rollout)

    @router.get("/v1/rollouts", response_model=list[RolloutOut])
    def list_all(
        _actor: Reader, active: bool = False, limit: Annotated[int, Query(ge=1, le=500)] = 50
    ) -> list[RolloutOut]:
        return [rollout_out(r) for r in engine.list(active_only=active, limit=limit)]

    @router.get("/v1/rollouts/{rollout_id}", response_model=RolloutOut)
    def get(rollout_id: RolloutId, _actor: Reader) -> RolloutOut:
        return rollout_out(engine.get(rollout_id), live_weights())

    @router.post("/v1/rollouts/{rollout_id}/abort", response_model=RolloutOut, status_code=202)
    def abort(rollout_id: RolloutId, actor: Deployer) -> JSONResponse:
        """Roll back: traffic returns to the source pool (a request waiting for approval is withdrawn)."""
        rollout = engine.request(rollout_id, RequestedAction.ABORT, actor=actor)
        return accepted(rollout)

    @router.post("/v1/rollouts/{rollout_id}/promote", response_model=RolloutOut, status_code=202)
    def promote(rollout_id: RolloutId, actor: Deployer) -> JSONResponse:
        """Skip the remaining steps: all traffic to the target pool, then bake."""
        rollout = engine.request(rollout_id, RequestedAction.PROMOTE, actor=actor)
        return accepted(rollout)

    @router.post(
        "/v1/rollouts/{rollout_id}/approve",
        response_model=RolloutOut,
        status_code=202,
        responses={
            403: {"description": "the caller requested this rollout (self_approval) or may not approve"},
            409: {
                "description": "not waiting for approval (not_pending_approval, approval_expired), or "
                "another operation holds a pool (pool_busy: it still waits and may be approved later)"
            },
        },
    )
    def approve(rollout_id: RolloutId, actor: Approver) -> JSONResponse:
        """Approve a rollout waiting for approval: it takes its pools and runs."""
        return accepted(engine.approve(rollout_id, actor=actor))

    @router.post(
        "/v1/rollouts/{rollout_id}/reject",
        response_model=RolloutOut,
        responses={409: {"description": "not waiting for approval (not_pending_approval, approval_expired)"}},
    )
    def reject(rollout_id: RolloutId, body: RejectIn, actor: Approver) -> RolloutOut:
        """Refuse a rollout waiting for approval; it ends as rejected, with the reason."""
        return rollout_out(engine.reject(rollout_id, actor=actor, reason=body.reason))

    @router.post("/v1/models/{model}/rollback", response_model=RolloutOut, status_code=202)
    def rollback(model: Annotated[str, Path(max_length=256)], actor: Deployer) -> JSONResponse:
        """Return ``model`` to its previous production version (a weight flip while the old pool is warm).

        Never waits for approval, even for a model that requires it: it restores what served.
        """
        validate_model_name(model)
        rollout = engine.rollback_model(model, actor=actor)
        return accepted(rollout)

    return router
