"""Optional CORS for browser clients (off by default)."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

# Headers a browser client may send and read (CORS), when CORS is on.
_CORS_REQUEST_HEADERS = [
    "authorization",
    "api-key",
    "content-type",
    "x-request-id",
    "x-session-id",
    "openai-*",
]
_CORS_EXPOSED = [
    "x-request-id",
    "x-llmgw-model",
    "x-llmgw-backend",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
]


def add_cors(app: FastAPI, origins_setting: str) -> None:
    """Answer browsers' CORS preflights for the comma-separated origins; nothing when
    empty (the default)."""
    origins = [o.strip() for o in origins_setting.split(",") if o.strip()]
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=_CORS_REQUEST_HEADERS,
        expose_headers=_CORS_EXPOSED,
        max_age=600,
    )
