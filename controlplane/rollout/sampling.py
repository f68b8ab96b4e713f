"""Read one pool's counters from HAProxy and Triton into a ``PoolSample`` for canary analysis.

HAProxy supplies what clients saw on the pool's servers (requests routed to
them and errors answered by them); Triton supplies its own success/failure
counters and p99 for the models under rollout. A pool of several replicas is
several servers in each proxy backend (each with its standby) and several
metrics endpoints: all of them are added up (``triton.metrics.combine_counters``
says how the p99 is taken). ``controlplane.domain.analysis`` explains
why both are needed and how two samples become a verdict.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence

from controlplane.domain.analysis import PoolSample
from controlplane.errors import ProxyError
from controlplane.traffic.haproxy_config import is_standby, pool_of_server
from controlplane.traffic.haproxy_runtime import HAProxyRuntime, StatRow
from controlplane.triton.metrics import TritonMetricsClient, scrape_replicas

MetricsClients = TritonMetricsClient | Sequence[TritonMetricsClient]
"""One pool's metrics: its Triton's client, or one client per replica."""


def _clients(triton: MetricsClients) -> list[TritonMetricsClient]:
    return [triton] if isinstance(triton, TritonMetricsClient) else list(triton)


def _pool_rows(rows: list[StatRow], pool: str, backends: Collection[str]) -> list[StatRow]:
    # Every replica server of the pool and their standbys: traffic a standby took is the pool's.
    found = [r for r in rows if r.kind == "server" and r.pool == pool and r.pxname in backends]
    missing = sorted(set(backends) - {r.pxname for r in found if not is_standby(r.svname)})
    if missing:
        # Without the row the pool's traffic would read as zero and pass any gate.
        raise ProxyError(
            f"pool {pool!r} has no server in backend(s) {', '.join(missing)} of the proxy statistics",
            details={"pool": pool, "missing_backends": missing},
        )
    return found


def sample_pool(
    *,
    pool: str,
    runtime: HAProxyRuntime,
    triton: MetricsClients,
    models: Collection[str],
    clock: Callable[[], float] = time.monotonic,
) -> PoolSample:
    """Read ``pool``'s counters now: HAProxy's server rows and error table, then Triton's metrics.

    ``triton`` is the metrics client of this pool's Triton, or one per
    replica (summed). Proxy counters are summed over every pool backend of
    ``runtime`` (gRPC and HTTP) and over every server of the pool: each
    replica's and each standby's. Proxy errors are gRPC
    calls answered with grpc-status != 0 (the stick table), HTTP 5xx answers,
    and responses that never arrived (``eresp``: connection cut, timeout).
    Not ``econ``: HAProxy retries a failed connection on another server, so
    the client usually never saw it.
    HTTP 4xx are not counted either: mostly a client's own mistake (bad path,
    bad JSON) that any pool would refuse. gRPC is asymmetric: the table keeps
    one count per server whatever the status, so a bad request (INVALID_ARGUMENT)
    counts there; a candidate that changed its input signature therefore shows
    up in gRPC errors but not in HTTP ones.

    The three reads are not atomic: a request in flight between them may be
    counted by one source in this sample and by the other in the next one;
    over a window of seconds that is noise. Raises ProxyError (proxy not
    answering, pool unknown to it) or TritonUnavailable.
    """
    at = clock()
    rows = _pool_rows(runtime.server_stats(), pool, runtime.backends)
    errors = runtime.grpc_error_counts()
    grpc_errors = sum(count for server, count in errors.items() if pool_of_server(server) == pool)
    counters = scrape_replicas(_clients(triton), models)
    return PoolSample(
        at=at,
        proxy_requests=sum(r.stot for r in rows),
        proxy_errors=grpc_errors + sum(r.hrsp_5xx + r.eresp for r in rows),
        triton_success=counters.success,
        triton_failure=counters.failure,
        p99_us=counters.p99_us,
    )


class PoolSampler:
    """``sample_pool`` bound to one proxy and each pool's Triton(s): ``sampler(pool, models)``.

    Matches the ``Sampler`` callable the rollout engine takes.
    """

    def __init__(
        self,
        runtime: HAProxyRuntime,
        tritons: Mapping[str, MetricsClients],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime
        self.tritons = {pool: _clients(clients) for pool, clients in tritons.items()}
        self.clock = clock

    def __call__(self, pool: str, models: Collection[str]) -> PoolSample:
        """Sample ``pool`` now; KeyError if no Triton metrics client was given for it."""
        try:
            triton = self.tritons[pool]
        except KeyError:
            raise KeyError(f"no Triton metrics client for pool {pool!r}") from None
        return sample_pool(pool=pool, runtime=self.runtime, triton=triton, models=models, clock=self.clock)
