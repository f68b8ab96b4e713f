"""Prometheus metrics of the control plane itself (Triton exports its own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

PUSHES = Counter("controlplane_pushes_total", "Model pushes by outcome.", ["outcome"], registry=REGISTRY)
DEPLOYS = Counter("controlplane_deploys_total", "Deploys by outcome.", ["outcome"], registry=REGISTRY)
DEPLOY_SECONDS = Histogram(
    "controlplane_deploy_seconds",
    "Time from deploy request to serving (successful deploys).",
    buckets=(0.5, 1, 2, 3, 5, 10, 20, 40, 80, 160),
    registry=REGISTRY,
)
DRIFT = Counter(
    "controlplane_drift_repairs_total",
    "Differences between a pool and its recorded release that the reconciler found and repaired.",
    ["pool", "kind"],
    registry=REGISTRY,
)
AUTH_REFUSALS = Counter(
    "controlplane_auth_refusals_total",
    "API requests refused with 401 or 403, by status and reason (never by token).",
    ["status", "reason"],
    registry=REGISTRY,
)
