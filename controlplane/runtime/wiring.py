"""The composition root: the registry, the serving stack and the services around it.

``local_services`` is the one place that starts them, for ``controlplane up``,
the benchmarks and the tests alike: the schema is migrated (when the settings
allow) and checked before anything starts, the stack starts at the weights the
registry holds, and on exit the rollout workers stop before the stack and the
database. The stack is the embedded one (``runtime.local``: tritonserver and
haproxy started here) or, with ``runtime=external``, Tritons and a proxy that
something else runs (``runtime.external``, docker compose); the services
cannot tell them apart (``ServingStack``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from controlplane.api.app import ApiServices
from controlplane.artifacts.archive import ArchiveLimits
from controlplane.artifacts.blobs import BlobStore
from controlplane.artifacts.signatures import TrustedSigners
from controlplane.claims import PoolClaims
from controlplane.domain.policy import SignaturePolicy
from controlplane.domain.recycling import RecyclePolicy
from controlplane.domain.webhook_targets import TargetAllowlist
from controlplane.domain.webhooks import RetryPolicy
from controlplane.errors import StartupFailed
from controlplane.pools import Pool
from controlplane.registry import rollout_store
from controlplane.registry.db import Database
from controlplane.rollout.candidate import CandidateChecks
from controlplane.rollout.engine import EngineSettings, RolloutEngine
from controlplane.rollout.reconciler import Reconciler
from controlplane.rollout.sampling import PoolSampler
from controlplane.runtime.external import ExternalStack, TritonPorts, parse_pools
from controlplane.runtime.local import LocalStack
from controlplane.runtime.process import SupervisedProcess
from controlplane.runtime.recycling import DockerPoolProcesses, SupervisedPoolProcesses
from controlplane.services.admission import RolloutAdmission
from controlplane.services.aliases import Aliases
from controlplane.services.deploys import Deployer
from controlplane.services.golden import GoldenSets
from controlplane.services.health import Health
from controlplane.services.recycle import PoolProcesses, PoolRecycler
from controlplane.services.registry import Registry
from controlplane.services.repair import PoolRepair
from controlplane.services.signing import Signing
from controlplane.services.traffic_monitor import TrafficMonitor
from controlplane.services.webhook_sender import WebhookSender
from controlplane.services.webhook_targets import TargetChecker
from controlplane.services.webhooks import DeliverySettings, WebhookDelivery, Webhooks
from controlplane.settings import Settings
from controlplane.staging.repository import PoolRepository
from controlplane.traffic.haproxy import HAProxyRuntime
from controlplane.traffic.haproxy_config import proxy_threads_for
from controlplane.traffic.router import HAProxyRouter
from controlplane.triton.client import TritonClient
from controlplane.triton.metrics import TritonMetricsClient
from controlplane.triton.replicas import ReplicatedTriton
from controlplane.tuning.tuner import Tuner


class StackPool(Protocol):
    """One pool of a serving stack, as the services see it."""

    @property
    def name(self) -> str: ...
    @property
    def repository(self) -> PoolRepository: ...
    @property
    def grpc_url(self) -> str: ...
    @property
    def metrics_url(self) -> str: ...
    @property
    def grpc_urls(self) -> list[str]:
        """Every replica's own gRPC address, replica 1 first (``grpc_url`` is replica 1's)."""

    @property
    def http_urls(self) -> list[str]:
        """Every replica's own HTTP base URL, where the control plane sends its calls to Triton."""

    @property
    def metrics_urls(self) -> list[str]:
        """Every replica's metrics endpoint, in the same order."""

    @property
    def admin_headers(self) -> dict[str, str]: ...
    @property
    def process(self) -> SupervisedProcess | None:
        """The first replica's supervised tritonserver, where the control plane runs it."""

    @property
    def processes(self) -> list[SupervisedProcess]:
        """Every replica's supervised tritonserver, where the control plane runs them."""


class ServingStack(Protocol):
    """Triton pools and the proxy in front of them, started here or elsewhere."""

    @property
    def pools(self) -> Mapping[str, StackPool]: ...
    @property
    def runtime(self) -> HAProxyRuntime: ...
    def start(self, *, timeout: float = ...) -> None: ...
    def readiness(self) -> dict[str, str]: ...
    def stop(self) -> None: ...


@dataclass
class Services:
    """The service layer, one object per job, and what they share."""

    db: Database
    pools: dict[str, Pool]
    blobs: BlobStore
    claims: PoolClaims
    registry: Registry
    signing: Signing
    deployer: Deployer
    repair: PoolRepair
    health: Health
    engine: RolloutEngine
    router: HAProxyRouter
    reconciler: Reconciler
    recycler: PoolRecycler
    golden: GoldenSets
    aliases: Aliases
    webhooks: Webhooks
    webhook_delivery: WebhookDelivery
    traffic: TrafficMonitor
    tuner: Tuner
    # The pools' weights the registry held at start, which the proxy was set to.
    initial_weights: dict[str, int] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop the rollout workers (their state stays in the database) and the lease keeper."""
        # A reconciler loop waiting out its interval sees the stop at once.
        self.reconciler.wake()
        self.tuner.stop()
        self.engine.stop()
        self.webhook_delivery.stop()
        self.claims.close()


def api_services(services: Services) -> ApiServices:
    """Everything the REST API and the console serve, taken from ``services`` (every route present)."""
    return ApiServices(
        db=services.db,
        registry=services.registry,
        signing=services.signing,
        health=services.health,
        engine=services.engine,
        deployer=services.deployer,
        recycler=services.recycler,
        golden=services.golden,
        aliases=services.aliases,
        webhooks=services.webhooks,
        traffic=services.traffic,
        tuner=services.tuner,
    )


def ensure_pool_rows(db: Database, pool_names: tuple[str, ...]) -> dict[str, int]:
    """Create the pools' rows if missing; return their desired weights."""
    with db.transaction() as session:
        rollout_store.ensure_pools(session, pool_names)
        return rollout_store.pool_weights(session)


def _items(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def trusted_signers(settings: Settings) -> TrustedSigners:
    """Who may sign, from the files and names configured (reads the PEM files)."""
    return TrustedSigners(
        public_keys=tuple(Path(p).read_bytes() for p in _items(settings.trusted_public_keys)),
        certificate_roots=tuple(Path(p).read_bytes() for p in _items(settings.trusted_cert_roots)),
        allowed_cert_identities=tuple(_items(settings.allowed_cert_identities)),
        sigstore_identities=tuple(
            (identity, issuer)
            for identity, _sep, issuer in (p.partition("|") for p in _items(settings.sigstore_identities))
        ),
        sigstore_trust_config=settings.sigstore_trust_config,
    )


def build_services(
    settings: Settings, db: Database, stack: ServingStack, *, initial_weights: dict[str, int] | None = None
) -> Services:
    """Wire the service layer, the rollout engine and the reconciler to ``stack``."""
    pools = {
        name: Pool(
            name=name,
            repository=p.repository,
            triton=ReplicatedTriton(
                [TritonClient(url, headers=p.admin_headers) for url in p.http_urls],
                staged_root=p.repository.live,
            ),
        )
        for name, p in stack.pools.items()
    }
    blobs = BlobStore(settings.artifacts_dir)
    claims = PoolClaims(db)
    signing = Signing(
        db=db,
        blobs=blobs,
        uploads_dir=settings.uploads_dir,
        trusted=trusted_signers(settings),
        global_policy=SignaturePolicy(
            require_signature=settings.require_signature,
            allowed_signers=tuple(x.strip() for x in settings.allowed_signers.split(",") if x.strip()),
        ).validate(),
    )
    registry = Registry(
        db=db,
        blobs=blobs,
        uploads_dir=settings.uploads_dir,
        signing=signing,
        limits=ArchiveLimits(
            max_total_bytes=settings.max_unpacked_bytes,
            max_file_bytes=settings.max_file_bytes,
            max_members=settings.max_archive_members,
        ),
        allowed_backends=settings.allowed_backend_names,
    )
    router = HAProxyRouter(stack.runtime)
    sampler = PoolSampler(
        stack.runtime,
        {name: [TritonMetricsClient(url) for url in p.metrics_urls] for name, p in stack.pools.items()},
    )
    engine = RolloutEngine(
        db=db,
        pools=pools,
        blobs=blobs,
        router=router,
        sampler=sampler,
        settings=EngineSettings(
            load_timeout=settings.load_timeout_seconds, standby_warm=settings.standby_warm
        ),
        policy_check=signing.check_deployable,
        claims=claims,
        admission=RolloutAdmission(db),
        candidate_checks=CandidateChecks(db, blobs),
    )
    repair = PoolRepair(
        db=db, blobs=blobs, pools=pools, claims=claims, load_timeout=settings.load_timeout_seconds
    )
    recycler = PoolRecycler(
        db=db,
        pools=pools,
        claims=claims,
        repair=repair,
        processes=pool_processes(settings, stack),
        ready_timeout=settings.load_timeout_seconds,
    )
    reconciler = Reconciler(
        repair=repair,
        engine=engine,
        router=router,
        recycler=recycler,
        recycle_policy=RecyclePolicy(
            after_loads=settings.recycle_after_loads, above_bytes=settings.recycle_above_bytes
        ),
    )
    # A rollout or deploy may change a pool's release: the standby follows at the next pass, which is now.
    engine.after_end = reconciler.wake
    targets = TargetChecker(TargetAllowlist.parse(settings.webhook_allowed_networks))
    return Services(
        db=db,
        pools=pools,
        blobs=blobs,
        claims=claims,
        registry=registry,
        signing=signing,
        # A failed load is retried with the previous version, each within the load timeout.
        deployer=Deployer(db=db, engine=engine, answer_within=2 * settings.load_timeout_seconds + 30),
        repair=repair,
        health=Health(db=db, pools=pools),
        engine=engine,
        router=router,
        reconciler=reconciler,
        recycler=recycler,
        golden=GoldenSets(db=db, blobs=blobs, uploads_dir=settings.uploads_dir),
        aliases=Aliases(db=db),
        webhooks=Webhooks(db=db, targets=targets),
        webhook_delivery=webhook_delivery(settings, db, targets),
        traffic=traffic_monitor(db, tuple(stack.pools), sampler, router),
        tuner=Tuner(
            db=db,
            pools=pools,
            endpoints={name: p.grpc_urls for name, p in stack.pools.items()},
            claims=claims,
            blobs=blobs,
            registry=registry,
            work_dir=settings.uploads_dir,
            load_timeout=settings.load_timeout_seconds,
        ),
        initial_weights=dict(initial_weights or {}),
    )


def traffic_monitor(
    db: Database, pool_names: tuple[str, ...], sampler: PoolSampler, router: HAProxyRouter
) -> TrafficMonitor:
    """Live per-pool traffic for ``/v1/traffic``, sampled with the rollout analysis's own sampler."""

    def releases() -> dict[str, dict[str, int]]:
        with db.transaction() as session:
            return {pool: rollout_store.pool_release(session, pool) for pool in pool_names}

    return TrafficMonitor(
        sampler=sampler, pools=pool_names, weights=router.weights, pool_up=router.pool_up, releases=releases
    )


def webhook_delivery(settings: Settings, db: Database, targets: TargetChecker) -> WebhookDelivery:
    """The webhook worker (not started), paced and retried as the settings say."""
    return WebhookDelivery(
        db=db,
        sender=WebhookSender(targets),
        policy=RetryPolicy(
            base_seconds=settings.webhook_retry_base_seconds,
            cap_seconds=settings.webhook_retry_max_seconds,
            max_failures=settings.webhook_max_failures,
        ),
        settings=DeliverySettings(
            lease_seconds=settings.webhook_lease_seconds,
            poll_seconds=settings.webhook_poll_seconds,
            workers=settings.webhook_workers,
        ),
    )


def pool_processes(settings: Settings, stack: ServingStack) -> PoolProcesses:
    """How this runtime restarts and measures a pool's Tritons (for recycling)."""
    if settings.runtime == "external":
        return DockerPoolProcesses(external_pools(settings))

    def supervised(pool: str) -> list[SupervisedProcess]:
        return list(stack.pools[pool].processes)

    return SupervisedPoolProcesses(supervised)


def make_stack(settings: Settings, pool_names: tuple[str, ...], weights: Mapping[str, int]) -> ServingStack:
    """The stack the settings ask for, not started; ``pool_names`` serve the embedded runtime."""
    if settings.runtime == "external":
        return ExternalStack(
            settings.state_dir,
            pools=external_pools(settings),
            host=settings.host,
            grpc_port=settings.grpc_port,
            http_port=settings.http_port,
            admin_key_file=settings.triton_admin_key_file or settings.state_dir / "triton-admin-key",
            proxy_config_file=settings.proxy_config_file or settings.state_dir / "proxy" / "haproxy.cfg",
            admin_socket=settings.proxy_admin_socket or settings.state_dir / "proxy" / "admin.sock",
            ports=TritonPorts(
                grpc=settings.external_triton_grpc_port,
                http=settings.external_triton_http_port,
                metrics=settings.external_triton_metrics_port,
            ),
            initial_weights=weights,
            dns_resolver=_host_port(settings.proxy_dns_resolver) if settings.proxy_dns_resolver else None,
            proxy_threads=proxy_threads(settings),
        )
    return LocalStack(
        settings.state_dir,
        host=settings.host,
        grpc_port=settings.grpc_port,
        http_port=settings.http_port,
        pool_names=pool_names,
        ports_base=settings.triton_ports_base,
        initial_weights=weights,
        triton_user=settings.triton_user,
        pool_replicas=settings.pool_replicas,
        proxy_threads=proxy_threads(settings),
    )


def proxy_threads(settings: Settings) -> int:
    """HAProxy's thread count: the setting, else one per four CPUs this process may run on."""
    if settings.proxy_threads is not None:
        return settings.proxy_threads
    return proxy_threads_for(len(os.sched_getaffinity(0)))


def _host_port(value: str) -> tuple[str, int]:
    host, _sep, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise StartupFailed(f"CONTROLPLANE_PROXY_DNS_RESOLVER must be host:port, got {value!r}")
    return host.strip("[]"), int(port)


def external_pools(settings: Settings) -> dict[str, tuple[str, ...]]:
    """The external runtime's pools and their replicas; StartupFailed names what is wrong."""
    try:
        return parse_pools(settings.external_pools)
    except ValueError as exc:
        raise StartupFailed(f"CONTROLPLANE_EXTERNAL_POOLS: {exc}") from None


@contextmanager
def local_services(
    settings: Settings,
    *,
    pool_names: tuple[str, ...] | None = None,
    before_stop: Callable[[], None] | None = None,
) -> Iterator[tuple[ServingStack, Services]]:
    """A migrated registry, the stack at its desired weights, and the services around it.

    ``pool_names`` default to the settings' (``external_pools`` for the
    external runtime). The schema is upgraded first when
    ``settings.auto_migrate`` (the default), and must be current either way.
    Everything started here is stopped on exit (also when start-up is
    interrupted): ``before_stop`` first, then the reconciler is woken and the
    rollout workers stop, then the stack, then the database connections.
    """
    if pool_names is None:
        pool_names = (
            tuple(external_pools(settings)) if settings.runtime == "external" else settings.pool_names
        )
    db = Database(settings.effective_database_url)
    services: Services | None = None
    stack: ServingStack | None = None
    try:
        # In a child interpreter: Alembic, once imported, would stay resident in this one.
        if settings.auto_migrate and db.current_revision() != db.head_revision():
            db.upgrade_in_child()
        db.check_schema()
        weights = ensure_pool_rows(db, pool_names)
        stack = make_stack(settings, pool_names, weights)
        stack.start()
        services = build_services(settings, db, stack, initial_weights=weights)
        # Already the proxy's weights unless its configuration was rendered elsewhere: then this corrects it.
        services.reconciler.weights.apply_recorded(why="start-up", actor="control-plane")
        yield stack, services
    finally:
        if before_stop is not None:
            before_stop()
        if services is not None:
            services.stop()
        if stack is not None:
            stack.stop()
        db.dispose()
