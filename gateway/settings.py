"""Process settings of the gateway, from flags and LLMGW_GATEWAY_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
