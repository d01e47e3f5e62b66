"""An engine that forwards to a vLLM OpenAI-compatible server next to the sidecar.

Each generation is one streamed ``POST /v1/chat/completions`` (or
``/v1/completions`` for a raw prompt) on a shared keep-alive connection
pool; embeddings are one ``POST /v1/embeddings``. Closing the generator (the gateway cancelled)
closes the HTTP response, hence its connection; vLLM notices the disconnect
and aborts the request, freeing its slot and KV cache. Health and load come
from vLLM's own ``/health`` and ``/metrics``, polled in the background
(``vllm_monitor``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from backends.engine import (
    Embeddings,
    EmbedRequest,
    EngineError,
    EngineEvent,
    EngineFailed,
    EngineRejectedRequest,
    EngineRequest,
    EngineUnavailable,
    LoadReport,
)
from backends.engines.http_stream import (
    ConnectFailed,
    HttpStreamError,
    HttpStreamPool,
    IdleTimeout,
)
from backends.engines.vllm_embeddings import embedding_bodies, parse_embeddings
from backends.engines.vllm_monitor import VllmMonitor
from backends.engines.vllm_protocol import StreamParser, chat_body, error_from_response
from common.observability.tracing import inject_headers, tracing_enabled

log = logging.getLogger("llmgw.sidecar.vllm")

_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}


class VllmConfig(BaseModel):
    """Where vLLM is and how to talk to it."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Base URL of vLLM's HTTP server, e.g. http://127.0.0.1:8000.")
    served_model: str | None = Field(
        default=None, description="vLLM's --served-model-name; learnt from /v1/models if unset."
    )
    capacity: int = Field(default=256, ge=1, description="vLLM's --max-num-seqs, for GetLoad.")
    max_connections: int = Field(default=1024, ge=1, description="Keep-alive pool size.")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # Longest silence between two chunks before the request is failed: a long
    # prompt's prefill on a CPU can take a while, a wedged vLLM must not hang us.
    idle_timeout_s: float = Field(default=300.0, gt=0)
    poll_interval_s: float = Field(default=0.5, gt=0, description="/health and /metrics period.")
    http_client: Literal["lean", "httpx"] = Field(
        default="lean",
        description="The streaming client: 'lean' (backends.engines.http_stream, httptools in an "
        "asyncio protocol) or 'httpx' (kept to measure against; see BENCHMARK.md).",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"vLLM url must start with http:// or https://, not {url!r}")
        return url.rstrip("/")


class VllmEngine:
    """Engine over a vLLM HTTP server (see the module docstring)."""

    def __init__(self, config: VllmConfig) -> None:
        self.config = config
        self._client: httpx.AsyncClient | None = None
        self._pool: HttpStreamPool | None = None
        self._monitor_client: httpx.AsyncClient | None = None
        self._monitor: VllmMonitor | None = None
        self._traced = tracing_enabled()

    async def start(self) -> None:
        """Open the connection pools and start watching vLLM (it may still be loading)."""
        cfg = self.config
        self._pool = HttpStreamPool(
            cfg.url, cfg.max_connections, cfg.connect_timeout_s, cfg.idle_timeout_s
        )
        self._client = httpx.AsyncClient(
            base_url=cfg.url,
            limits=httpx.Limits(
                max_connections=cfg.max_connections, max_keepalive_connections=cfg.max_connections
            ),
            timeout=httpx.Timeout(cfg.idle_timeout_s, connect=cfg.connect_timeout_s),
        )
        # Its own small pool: health checks must not queue behind busy streams,
        # or a loaded vLLM would look dead.
        self._monitor_client = httpx.AsyncClient(
            base_url=cfg.url, timeout=httpx.Timeout(2.0), limits=httpx.Limits(max_connections=2)
        )
        self._monitor = VllmMonitor(self._monitor_client, cfg.served_model, cfg.poll_interval_s)
        self._monitor.start()

    async def close(self) -> None:
        """Stop watching and close every connection (open streams are aborted)."""
        if self._monitor is not None:
            await self._monitor.stop()
        if self._pool is not None:
            await self._pool.close()
        for client in (self._client, self._monitor_client):
            if client is not None:
                await client.aclose()

    def ready(self) -> bool:
        """True while vLLM's /health answers 200 and its model is known."""
        return self._monitor is not None and self._monitor.ready

    def load(self) -> LoadReport:
        """Last load scraped from vLLM's /metrics."""
        load = self._monitor.load if self._monitor is not None else None
        if load is None:
            return LoadReport(running=0, waiting=0, capacity=self.config.capacity)
        return LoadReport(
            running=load.running,
            waiting=load.waiting,
            capacity=self.config.capacity,
            kv_cache_usage=load.kv_cache_usage,
        )

    def _served_model(self) -> str:
        monitor = self._monitor
        if self._pool is None or self._client is None or monitor is None:
            raise EngineUnavailable("the vLLM engine is not started")
        model = monitor.served_model
        if model is None:
            raise EngineUnavailable("vLLM is not ready yet (still loading or unreachable)")
        return model

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """One ``POST /v1/embeddings`` per kind of input (texts, token ids)."""
        model = self._served_model()
        client = self._client
        assert client is not None
        headers = {"content-type": "application/json"}  # vLLM refuses a body without it
        if self._traced:
            headers = inject_headers(headers)
        vectors: list[list[float]] = [[] for _ in request.inputs]
        tokens = 0
        for positions, body in embedding_bodies(request, model):
            try:
                response = await client.post("/v1/embeddings", content=body, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
                raise EngineUnavailable(
                    f"vLLM at {self.config.url} is unreachable: {error!r}"
                ) from None
            except httpx.HTTPError as error:
                raise EngineFailed(f"vLLM's embeddings call failed: {error!r}") from None
            if response.status_code != 200:
                refused = error_from_response(response.status_code, response.content)
                field = "dimensions" if "dimensions" in str(refused) else "input"
                raise _with_field(refused, field)
            found, used = parse_embeddings(response.content, len(positions))
            tokens += used
            for position, vector in zip(positions, found, strict=True):
                vectors[position] = vector
        return Embeddings(vectors=vectors, prompt_tokens=tokens)

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        """Stream vLLM's answer; closing this generator aborts the request in vLLM."""
        model = self._served_model()
        body = chat_body(request, model)
        # A raw prompt goes to the legacy completions endpoint, with no chat template
        # (and a refusal about the input names the prompt, not chat's messages).
        path, field = (
            ("/v1/chat/completions", None)
            if request.prompt is None
            else ("/v1/completions", "prompt")
        )
        parser = StreamParser()
        # W3C traceparent on to vLLM, which continues the trace when it was
        # started with --otlp-traces-endpoint.
        headers = inject_headers(dict(_HEADERS)) if self._traced else _HEADERS
        chunks = self._chunks_httpx if self.config.http_client == "httpx" else self._chunks_lean
        buffer = b""
        # Leaving this block for any reason, including GeneratorExit or CancelledError
        # at a yield, closes the response and its connection: that disconnect is what
        # makes vLLM abort the request.
        async with aclosing(chunks(path, body, headers, field)) as stream:
            async for data in stream:
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.startswith(b"data: "):
                        event = parser.feed(line[6:].rstrip(b"\r"))
                        if event is None:
                            continue
                        if type(event) is tuple:  # several choices in one chunk
                            for each in event:
                                yield each
                        else:
                            yield event  # type: ignore[misc]
        yield parser.finished()

    async def _chunks_lean(
        self, path: str, body: bytes, headers: dict[str, str], field: str | None
    ) -> AsyncGenerator[bytes, None]:
        """The streamed body of ``POST path``, as it arrives."""
        pool = self._pool
        assert pool is not None
        try:
            response = await pool.request("POST", path, body, headers)
        except ConnectFailed as error:
            raise EngineUnavailable(f"vLLM at {self.config.url} is unreachable: {error}") from None
        except HttpStreamError as error:
            raise EngineFailed(f"vLLM's answer broke: {error}") from None
        try:
            if response.status != 200:
                raise _with_field(
                    error_from_response(response.status, await response.read()), field
                )
            next_chunk = response.next_chunk
            while (data := await next_chunk()) is not None:
                yield data
        except IdleTimeout:
            raise EngineFailed(f"vLLM sent nothing for {self.config.idle_timeout_s:.0f}s") from None
        except HttpStreamError as error:
            # The connection broke mid-answer (vLLM died or restarted).
            raise EngineFailed(f"vLLM's stream broke: {error}") from None
        finally:
            response.close()

    async def _chunks_httpx(
        self, path: str, body: bytes, headers: dict[str, str], field: str | None
    ) -> AsyncGenerator[bytes, None]:
        """The same with httpx (the client this engine used first; kept to compare)."""
        client = self._client
        assert client is not None
        try:
            async with client.stream("POST", path, content=body, headers=headers) as response:
                if response.status_code != 200:
                    refused = error_from_response(response.status_code, await response.aread())
                    raise _with_field(refused, field)
                async for data in response.aiter_bytes():
                    yield data
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            raise EngineUnavailable(
                f"vLLM at {self.config.url} is unreachable: {error!r}"
            ) from None
        except httpx.TimeoutException:
            raise EngineFailed(f"vLLM sent nothing for {self.config.idle_timeout_s:.0f}s") from None
        except httpx.HTTPError as error:
            # The connection broke mid-answer (vLLM died or restarted).
            raise EngineFailed(f"vLLM's stream broke: {error!r}") from None


def _with_field(error: EngineError, field: str | None) -> EngineError:
    """Name ``field`` instead of chat's ``messages`` in a refusal about the input."""
    if field is not None and isinstance(error, EngineRejectedRequest) and error.field == "messages":
        error.field = field
    return error
