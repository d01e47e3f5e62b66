"""Settings of the REST shim, from flags and LLMGW_SHIM_* variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.grpcutil.tls import ClientTls, client_tls


class ShimSettings(BaseSettings):
    """Where the shim listens, which gateway it calls, and its request limits."""

    model_config = SettingsConfigDict(env_prefix="LLMGW_SHIM_", extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address the REST API listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port of the REST API.")
    gateway: str = Field(
        default="127.0.0.1:50051",
        description="gRPC target of the gateway: host:port, dns:///name:port (every address "
        "of a headless Service, round robin per call) or ipv4:host:port,host:port.",
    )
    gateway_channels: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Channels (connections) to the gateway; calls take them in turn.",
    )
    workers: int = Field(default=1, ge=1, le=64, description="Processes sharing the port.")
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above)."
    )
    request_timeout_s: float = Field(
        default=600.0, gt=0, description="Deadline of one request to the gateway."
    )
    sse_keepalive_s: float = Field(
        default=15.0, gt=0, description="SSE comment interval while waiting for a first token."
    )
    # Request hardening (see README "Security").
    require_api_key: bool = Field(
        default=True,
        description="Refuse /v1/ calls without a well-formed API key before reading the body "
        "(false only in front of a gateway without a tenant file).",
    )
    max_api_key_bytes: int = Field(default=512, ge=16, description="Longest API key accepted.")
    max_messages: int = Field(
        default=2048, ge=1, description="Most messages in one request (400 above)."
    )
    max_content_parts: int = Field(
        default=4096, ge=1, description="Most content parts over all messages (400 above)."
    )
    cors_origins: str = Field(
        default="",
        description="Comma-separated origins browsers may call from (CORS), '*' for any; "
        "empty: CORS off.",
    )
    # Connection limits and timeouts (rest_shim/http_protocol.py) and shutdown (drain.py).
    max_header_bytes: int = Field(
        default=32 * 1024, ge=1024, description="Request line and headers, at most (431 above)."
    )
    max_headers: int = Field(default=100, ge=8, description="Header fields, at most (431 above).")
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="Time a client has to send its headers (then 408)."
    )
    body_timeout_s: float = Field(
        default=60.0, gt=0, description="Time a client has to send its body (then 408)."
    )
    keepalive_timeout_s: float = Field(
        default=5.0, gt=0, description="An idle keep-alive connection is closed after this."
    )
    shutdown_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="On SIGTERM, time requests in flight get to finish; then streams end "
        "with an SSE error event.",
    )
    # TLS (README "Security"): HTTPS for clients, TLS (and a client certificate) to the gateway.
    tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate: serve HTTPS (with --tls-key); reloaded on change.",
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of --tls-cert.")
    gateway_tls_ca: Path | None = Field(
        default=None, description="Call the gateway over TLS, verifying it against this CA."
    )
    gateway_tls_cert: Path | None = Field(
        default=None, description="Client certificate presented to the gateway (mutual TLS)."
    )
    gateway_tls_key: Path | None = Field(
        default=None, description="Private key of --gateway-tls-cert."
    )
    log_level: str = "info"
    metrics_listen: str = Field(
        default="127.0.0.1:9102",
        description="host:port of /metrics; empty to disable. Never the public REST port.",
    )

    @model_validator(mode="after")
    def _tls_complete(self) -> ShimSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("HTTPS needs both --tls-cert and --tls-key")
        self.gateway_tls()  # ValueError if inconsistent
        return self

    def gateway_tls(self) -> ClientTls | None:
        """TLS settings of the channel to the gateway (None: plaintext)."""
        return client_tls(self.gateway_tls_ca, self.gateway_tls_cert, self.gateway_tls_key)
