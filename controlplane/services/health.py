"""Model health: READY on every pool that gives it traffic, or why not."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from controlplane.domain.models import ModelName
from controlplane.errors import TritonUnavailable
from controlplane.pools import Pool, redact_reason
from controlplane.registry import rollout_store, store
from controlplane.registry.db import Database
from controlplane.triton.client import ModelStatus


@dataclass(frozen=True)
class ModelHealth:
    """Whether a model is READY where it serves, and why not."""

    model: str
    ready: bool
    reason: str
    pools: Mapping[str, str]


class Health:
    """Answers ``/healthz?model=NAME`` from the registry and each pool's Triton."""

    def __init__(self, *, db: Database, pools: Mapping[str, Pool]) -> None:
        self.db = db
        self.pools = dict(pools)

    def model_health(self, model: str) -> ModelHealth:
        """READY on every pool that serves it? NotFound for an unknown model."""
        with self.db.transaction() as session:
            info = store.get_model(session, model)
            weights = rollout_store.pool_weights(session)
        # A standby (weight 0) serves no client: its state is not the model's health.
        serving = [d for d in info.deployments if weights.get(d.pool, 0) > 0]
        if not serving:
            return ModelHealth(model, False, f"model {model!r} is not deployed on any pool", {})
        states: dict[str, str] = {}
        for d in serving:
            pool = self.pools.get(d.pool)
            if pool is None:
                states[d.pool] = "unknown pool"
            elif pool.triton.is_model_ready(ModelName(model), d.version):
                states[d.pool] = "READY"
            else:
                statuses = [s for s in _status(pool, model) if s.version == str(d.version)]
                if statuses:
                    why = redact_reason(self.pools.values(), statuses[0].reason)
                    states[d.pool] = f"{statuses[0].state}: {why}".rstrip(": ")
                else:
                    states[d.pool] = "not loaded"
        not_ready = {p: s for p, s in states.items() if s != "READY"}
        if not_ready:
            reason = "; ".join(f"version on pool {p} is {s}" for p, s in not_ready.items())
            return ModelHealth(model, False, reason, states)
        return ModelHealth(model, True, "READY", states)


def _status(pool: Pool, model: str) -> list[ModelStatus]:
    try:
        return pool.triton.model_status(model)
    except TritonUnavailable:
        return []
