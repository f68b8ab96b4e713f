"""Live traffic endpoint: each pool's request rate, error rate and p99, for charts."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from controlplane.api.auth import Authenticator
from controlplane.domain.auth import Permission
from controlplane.services.traffic_monitor import TrafficMonitor, TrafficSnapshot


class TrafficPoolOut(BaseModel):
    name: str
    weight: int | None
    up: bool
    release: dict[str, int]
    error: str | None


class TrafficPointOut(BaseModel):
    at: float
    pool: str
    weight: int | None
    release: dict[str, int]
    requests_per_second: float
    error_rate: float
    p99_ms: float | None
    requests: int
    errors: int


class TrafficOut(BaseModel):
    interval_seconds: float
    now: float
    pools: list[TrafficPoolOut]
    points: list[TrafficPointOut]


def traffic_out(snapshot: TrafficSnapshot) -> TrafficOut:
    """The snapshot as the API's JSON."""
    return TrafficOut(
        interval_seconds=snapshot.interval_seconds,
        now=snapshot.now,
        pools=[
            TrafficPoolOut(name=p.name, weight=p.weight, up=p.up, release=dict(p.release), error=p.error)
            for p in snapshot.pools
        ],
        points=[
            TrafficPointOut(
                at=p.at,
                pool=p.pool,
                weight=p.weight,
                release=dict(p.release),
                requests_per_second=p.requests_per_second,
                error_rate=p.error_rate,
                p99_ms=p.p99_ms,
                requests=p.requests,
                errors=p.errors,
            )
            for p in snapshot.points
        ],
    )


def traffic_router(monitor: TrafficMonitor, auth: Authenticator) -> APIRouter:
    """GET /v1/traffic: every pool's traffic over the recent past, sampled when asked."""
    router = APIRouter(tags=["traffic"])
    Reader = Annotated[str, Depends(auth.require(Permission.READ))]

    @router.get("/v1/traffic", response_model=TrafficOut)
    def traffic(
        _actor: Reader,
        since: Annotated[
            float | None,
            Query(
                ge=0,
                le=1e11,
                allow_inf_nan=False,
                description="only points after this time (epoch seconds): the `at` of the last point seen",
            ),
        ] = None,
    ) -> TrafficOut:
        """Per pool: weight, health, release, and a point per interval (requests/s, error rate, p99)."""
        return traffic_out(monitor.snapshot(since))

    return router
