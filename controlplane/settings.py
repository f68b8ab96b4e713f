"""Settings, read from CONTROLPLANE_* environment variables (and CLI flags).

Everything the embedded stack writes lives under ``state_dir``; the database
defaults to a SQLite file there so that ``controlplane up`` needs nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from controlplane.domain.policy import DEFAULT_ALLOWED_BACKENDS


class Settings(BaseSettings):
    """Configuration of one control-plane instance."""

    model_config = SettingsConfigDict(env_prefix="CONTROLPLANE_", extra="ignore")

    state_dir: Path = Field(default=Path(".state"), description="Where the embedded stack keeps its files.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in the state directory."
    )
    host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    grpc_port: int = Field(default=8001, ge=1, le=65535, description="Triton gRPC through the proxy.")
    http_port: int = Field(default=8002, ge=1, le=65535, description="Triton HTTP through the proxy.")
    pools: str = Field(default="blue,green", description="Comma-separated Triton pool names.")
    proxy_threads: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="HAProxy threads; default one per four CPUs this process may use, at least one "
        "(the proxy shares the machine with Triton: on 2 cores one thread serves more than two).",
    )
    pool_replicas: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Embedded runtime: tritonserver processes per pool, all on the pool's repository "
        "(every pool has the same number, so pool weights stay shares of the traffic).",
    )
    runtime: Literal["local", "external"] = Field(
        default="local",
        description="local: start tritonserver and haproxy here; external: drive the ones something else "
        "runs (docker compose), named by external_pools.",
    )
    external_pools: str = Field(
        default="",
        description="external runtime: each pool's Triton replicas, `blue=host[,host...];green=host[,...]`.",
    )
    external_triton_grpc_port: int = Field(default=8001, ge=1, le=65535)
    external_triton_http_port: int = Field(default=8000, ge=1, le=65535)
    external_triton_metrics_port: int = Field(default=8002, ge=1, le=65535)
    triton_admin_key_file: Path | None = Field(
        default=None,
        description="external runtime: file holding the key of Triton's restricted APIs, made if missing "
        "and read by the Triton containers; default STATE_DIR/triton-admin-key.",
    )
    proxy_config_file: Path | None = Field(
        default=None,
        description="external runtime: where the HAProxy configuration is written for the proxy container; "
        "default STATE_DIR/proxy/haproxy.cfg.",
    )
    proxy_dns_resolver: str = Field(
        default="",
        description="external runtime: host:port of the DNS server that names the Triton hosts (a container "
        "engine's: 127.0.0.11:53); set, the proxy starts while a host does not resolve yet and follows new "
        "addresses.",
    )
    proxy_admin_socket: Path | None = Field(
        default=None,
        description="external runtime: HAProxy's admin socket (a volume both containers mount); "
        "default STATE_DIR/proxy/admin.sock.",
    )
    triton_ports_base: int = Field(
        default=0,
        ge=0,
        le=65000,
        description="First port of the pools' own Triton ports; 0: free ports, remembered in runtime.json.",
    )
    max_upload_bytes: int = Field(default=8 * 1024**3, gt=0)
    max_unpacked_bytes: int = Field(default=16 * 1024**3, gt=0, description="Sum of an archive's files.")
    max_file_bytes: int = Field(default=4 * 1024**3, gt=0)
    max_archive_members: int = Field(default=10_000, gt=0)
    load_timeout_seconds: float = Field(default=120.0, gt=0)
    require_signature: bool = Field(default=False, description="Versions need a verified signature to serve.")
    allowed_signers: str = Field(default="", description="Comma-separated signer names every model allows.")
    trusted_public_keys: str = Field(default="", description="Comma-separated PEM files of EC public keys.")
    trusted_cert_roots: str = Field(default="", description="Comma-separated PEM files of CA certificates.")
    allowed_cert_identities: str = Field(default="", description="Comma-separated san:VALUE or sha256:FP.")
    sigstore_identities: str = Field(default="", description="Comma-separated IDENTITY|ISSUER pairs.")
    sigstore_trust_config: Path | None = Field(
        default=None, description="Sigstore trust config for offline use."
    )
    auth_required: bool = Field(default=True, description="Mutating endpoints need an API token.")
    open_reads: bool = Field(default=False, description="Read endpoints answer without a token.")
    auto_migrate: bool = Field(default=True, description="`up` upgrades the schema before starting.")
    triton_user: str = Field(
        default="controlplane-triton",
        description="Account tritonserver (and model code) runs as when the control plane is root; "
        "empty: do not switch.",
    )
    allowed_backends: str = Field(
        default=",".join(DEFAULT_ALLOWED_BACKENDS),
        description="Comma-separated backends a config.pbtxt may name (platforms follow their backend).",
    )
    gc_interval_seconds: float = Field(
        default=3600.0, ge=0, description="Period of the artifact garbage collection; 0 disables it."
    )
    gc_grace_seconds: float = Field(
        default=3600.0, ge=0, description="Unreferenced blobs younger than this are kept."
    )
    standby_warm: bool = Field(
        default=True,
        description="Pools without traffic keep the production models loaded, so the proxy can fail over "
        "to them when the serving Triton dies (costs the memory of a second copy of each model).",
    )
    recycle_after_loads: int = Field(
        default=0,
        ge=0,
        description="Restart an idle pool's Tritons after this many model loads (memory that unloads keep); "
        "0: never.",
    )
    recycle_above_bytes: int = Field(
        default=0, ge=0, description="Restart an idle pool's Tritons above this much memory; 0: never."
    )
    max_json_bytes: int = Field(default=1024**2, gt=0, description="Largest JSON (non-upload) request body.")
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Largest request line plus headers of one API request."
    )
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="A client must finish its request line and headers within this."
    )
    body_idle_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Longest wait for the next chunk of a request body."
    )
    min_upload_bytes_per_second: int = Field(
        default=16 * 1024,
        ge=0,
        description="Slowest accepted body rate once the idle timeout has passed (0: no rate limit).",
    )
    keep_alive_seconds: int = Field(default=5, ge=1, description="Idle keep-alive connections close.")
    min_free_bytes: int = Field(
        default=1024**3, ge=0, description="/readyz fails when the state directory has less free space."
    )
    refusal_audit_burst: int = Field(
        default=20, ge=1, description="401/403 audit rows written at once before rate limiting."
    )
    refusal_audit_per_second: float = Field(
        default=1.0, gt=0, description="401/403 audit rows per second after the burst."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: for a person; json: one object per line, with rollout/request id."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Least severe level logged; routine library lines are DEBUG."
    )
    watch_path: Path | None = Field(
        default=None,
        description="A folder (or git repository) of model folders that `up` follows: a new or changed "
        "folder becomes a version, rolled out when it holds rollout.yaml; unset: nothing is watched.",
    )
    watch_git: bool = Field(
        default=False,
        description="Follow watch_path's committed content on a branch (also when it has .git), never "
        "its working copy.",
    )
    watch_branch: str = Field(
        default="", description="git: the branch followed; empty: the one HEAD names when `up` starts."
    )
    watch_interval_seconds: float = Field(
        default=10.0, gt=0, le=86400, description="How often watch_path is polled for changes."
    )
    webhook_allowed_networks: str = Field(
        default="",
        description="Comma-separated CIDRs, addresses or host names webhooks may reach although they are "
        "loopback, private, link-local or otherwise internal (refused by default).",
    )
    webhook_max_failures: int = Field(
        default=5, ge=1, description="Consecutive failed deliveries that disable a webhook subscription."
    )
    webhook_retry_base_seconds: float = Field(
        default=1.0, gt=0, description="Wait after a webhook's first failed delivery; doubles with each."
    )
    webhook_retry_max_seconds: float = Field(
        default=300.0, gt=0, description="Longest wait between two attempts of a webhook delivery."
    )
    webhook_lease_seconds: float = Field(
        default=30.0,
        ge=7.0,
        description="How long a worker's claim on a subscription lasts (a killed control plane's "
        "deliveries resume after it); longer than one attempt (5 s).",
    )
    webhook_poll_seconds: float = Field(
        default=0.5, gt=0, le=60, description="How often the webhook worker looks for due events."
    )
    webhook_workers: int = Field(
        default=4, ge=1, le=64, description="Webhook subscriptions delivered at the same time."
    )

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _case_insensitive(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("watch_path")
    @classmethod
    def _absolute_watch_path(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @property
    def effective_database_url(self) -> str:
        """The configured database URL, or the embedded SQLite file."""
        return self.database_url or f"sqlite:///{self.state_dir / 'registry.db'}"

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    @property
    def pools_dir(self) -> Path:
        return self.state_dir / "pools"

    @property
    def uploads_dir(self) -> Path:
        return self.state_dir / "uploads"

    @property
    def pool_names(self) -> tuple[str, ...]:
        """The embedded runtime's pools (the external runtime names its own in ``external_pools``)."""
        return tuple(p.strip() for p in self.pools.split(",") if p.strip())

    @property
    def allowed_backend_names(self) -> tuple[str, ...]:
        return tuple(b.strip() for b in self.allowed_backends.split(",") if b.strip())
