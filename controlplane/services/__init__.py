"""The service layer, one class per job; the API, the CLI and the runtime call these.

- ``registry.Registry``: push versions, read models, versions and the audit log;
- ``signing.Signing``: signatures and the policy a version must meet to serve;
- ``deploys.Deployer``: put one version on a pool (an inplace rollout, answered when it ends);
- ``repair.PoolRepair``: find and repair where a pool differs from its recorded release;
- ``health.Health``: whether a model is READY where it serves.

Every change to what serves goes through the rollout engine (deploys and
rollouts) or ``PoolRepair`` (repairs), each under its pools' claims.
"""
