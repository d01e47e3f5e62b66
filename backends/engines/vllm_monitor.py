"""Background watch of a vLLM server: health from /health, load from /metrics.

Scraped on a timer, off the request path, so ``load()`` and ``ready`` never
block and never make a request wait for vLLM's metrics endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from backends.engines.vllm_protocol import EngineLoad, parse_metrics

log = logging.getLogger("llmgw.sidecar.vllm")

_NO_LOAD = EngineLoad(0, 0, None)


class VllmMonitor:
    """Polls one vLLM server; ``ready`` is True while /health answers 200 and
    the served model's name is known."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        served_model: str | None,
        interval_s: float,
        failures_to_unhealthy: int = 3,
    ) -> None:
        self._client = client
        self._interval = interval_s
        # A vLLM busy with a hundred streams on one core can miss one health
        # check; only a run of misses means it is down (or not up yet).
        self._failures_to_unhealthy = failures_to_unhealthy
        self._failures = 0
        self.served_model = served_model
        self.healthy = False
        self.load = _NO_LOAD
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """vLLM answers and the model it serves is known."""
        return self.healthy and self.served_model is not None

    def start(self) -> None:
        """Start polling in the background."""
        self._task = asyncio.create_task(self._run(), name="vllm-monitor")

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def poll_once(self) -> None:
        """One round: health, the model name if still unknown, and load."""
        answered = await self._healthy()
        self._failures = 0 if answered else self._failures + 1
        healthy = answered or (self.healthy and self._failures < self._failures_to_unhealthy)
        if healthy != self.healthy:
            log.info("vLLM is %s", "healthy" if healthy else "not healthy")
        self.healthy = healthy
        if not answered:
            if not healthy:
                self.load = _NO_LOAD
            return
        if self.served_model is None:
            self.served_model = await self._discover_model()
        self.load = await self._scrape() or self.load

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:  # a bug here must not end health reporting for good
                log.exception("vLLM monitor round failed")
                self.healthy = False
            await asyncio.sleep(self._interval)

    async def _healthy(self) -> bool:
        try:
            response = await self._client.get("/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _discover_model(self) -> str | None:
        try:
            response = await self._client.get("/v1/models")
            response.raise_for_status()
            models = response.json()["data"]
            name = str(models[0]["id"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as error:
            log.warning("cannot learn the served model from vLLM: %r", error)
            return None
        log.info("vLLM serves model %s", name)
        return name

    async def _scrape(self) -> EngineLoad | None:
        try:
            response = await self._client.get("/metrics")
            response.raise_for_status()
        except httpx.HTTPError as error:
            log.debug("cannot scrape vLLM metrics: %r", error)
            return None
        return parse_metrics(response.text)
