"""Process settings of the gateway, from flags and LLMGW_GATEWAY_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.grpcutil.tls import client_tls, server_tls


class GatewaySettings(BaseSettings):
    """Where to listen, which routing file to load and how many processes to run."""

    model_config = SettingsConfigDict(env_prefix="LLMGW_GATEWAY_", extra="forbid")

    listen: str = Field(default="127.0.0.1:50051", description="host:port of the gRPC API.")
    admin_listen: str = Field(
        default="",
        description="host:port of the AdminService on a port of its own; empty serves it "
        "on the API port. Deployments bind it to loopback or a private network.",
    )
    config: Path = Field(default=Path("config/gateway.yaml"), description="Routing file (YAML).")
    workers: int = Field(
        default=1, ge=1, le=64, description="Processes sharing the port (SO_REUSEPORT)."
    )
    worker_listen: str = Field(
        default="",
        description="Comma-separated host:port, one per worker: each worker also serves on "
        "an address of its own, so a client can spread requests (not connections) over the "
        "workers with gRPC round_robin (the shim: --gateway ipv4:A,B). Empty: none.",
    )
    log_level: str = "INFO"
    metrics_listen: str = Field(
        default="127.0.0.1:9101",
        description="host:port of /metrics (Prometheus); empty to disable. Never the API port.",
    )
    # Tenancy: without a tenant file every caller is served with no key and no limits.
    tenants: Path | None = Field(default=None, description="Tenant file (keys, limits).")
    redis_url: str | None = Field(
        default=None, description="Redis for limits and metering; in memory if unset."
    )
    redis_cluster: bool = Field(default=False, description="The Redis URL is a Redis Cluster.")
    redis_failure: Literal["open", "closed"] = Field(
        default="open", description="When Redis is unreachable: serve (open) or 503 (closed)."
    )

    # TLS (README "Security"). Server side: the API port; client side: the sidecars.
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate: serve the gRPC API over TLS (with --tls-key)."
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of --tls-cert.")
    tls_client_ca: Path | None = Field(
        default=None, description="Require client certificates from this CA (mutual TLS)."
    )
    backend_tls_ca: Path | None = Field(
        default=None, description="Call the sidecars over TLS, verifying them against this CA."
    )
    backend_tls_cert: Path | None = Field(
        default=None, description="Client certificate presented to the sidecars (mutual TLS)."
    )
    backend_tls_key: Path | None = Field(
        default=None, description="Private key of --backend-tls-cert."
    )
    backend_tls_server_name: str = Field(
        default="",
        description="Name in the sidecars' certificates, when it is not the address dialled "
        "(endpoints are dialled by resolved IP).",
    )

    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM: how long streams in progress may finish before they are "
        "ended with an error (new calls are refused at once).",
    )
    usage_spool: Path | None = Field(
        default=Path(".llmgw/usage-spool.jsonl"),
        description="Append-only file for usage the store could not take at shutdown "
        "(replayed at the next start); empty disables it.",
    )

    @model_validator(mode="after")
    def _tls_complete(self) -> GatewaySettings:
        server_tls(self.tls_cert, self.tls_key, self.tls_client_ca)  # ValueError if half given
        client_tls(self.backend_tls_ca, self.backend_tls_cert, self.backend_tls_key)
        return self

    @field_validator("usage_spool", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    def worker_address(self, index: int) -> str | None:
        """Worker ``index``'s own address, if ``worker_listen`` names one."""
        addresses = [a.strip() for a in self.worker_listen.split(",") if a.strip()]
        if not addresses:
            return None
        if len(addresses) != self.workers:
            raise ValueError(
                f"--worker-listen names {len(addresses)} addresses for {self.workers} workers"
            )
        return addresses[index]
