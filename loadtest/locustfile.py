"""Locust load test of the OpenAI REST shim: streamed and whole chat completions.

    make run                      # in another terminal
    make loadtest                 # 20 s headless, demo key, http://127.0.0.1:8080
    LLMGW_API_KEY=... .venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 \\
        --headless --users 10 --spawn-rate 5 --run-time 20s

Settings (environment):
  LLMGW_API_KEY              the bearer key (required)
  LLMGW_LOADTEST_MODELS      models or aliases, comma-separated (default: small,large)
  LLMGW_LOADTEST_MAX_TOKENS  max_tokens of every request (default: 64)

Rows in Locust's statistics, per model:
  SSE   stream <model>  the whole stream, request sent to ``data: [DONE]``;
                        its size column is the completion tokens
  TTFT  stream <model>  time to first token: request sent to the first content delta
  TPOT  stream <model>  time per output token after the first (average within one stream)
  POST  whole <model>   a non-streamed completion, request to the whole JSON answer

A stream that ends without ``[DONE]`` (the shim's way of saying it broke after
the first token), carries an SSE error event or no content, is a failure;
so is any HTTP error (429 when the tenant's limits are exceeded).
"""

from __future__ import annotations

import json
import os
import time
from itertools import cycle
from typing import Any

from locust import HttpUser, between, task

API_KEY = os.environ.get("LLMGW_API_KEY", "")
if not API_KEY:
    raise SystemExit(
        "loadtest: set LLMGW_API_KEY (with `make run`: the demo key it prints, "
        "llmgw_00000000de30_demo-only-not-a-secret-local-use)"
    )
MODELS = [m.strip() for m in os.environ.get("LLMGW_LOADTEST_MODELS", "small,large").split(",")]
MAX_TOKENS = int(os.environ.get("LLMGW_LOADTEST_MAX_TOKENS", "64"))
PROMPTS = [
    "Say hello and introduce yourself in one sentence.",
    "Explain what an inference gateway does, briefly.",
    "List three colours of the rainbow.",
    "Write a haiku about load testing.",
]
PATH = "/v1/chat/completions"


class ChatUser(HttpUser):
    """One client: three streamed completions for every whole one, models in turn."""

    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        """Per-user headers and a rotation of models and prompts."""
        self.client.headers.update(
            {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
        )
        self.models = cycle(MODELS)
        self.prompts = cycle(PROMPTS)

    def body(self, stream: bool) -> tuple[str, dict[str, Any]]:
        """The next model and request body."""
        model = next(self.models)
        payload: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": next(self.prompts)}],
            "max_tokens": MAX_TOKENS,
        }
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return model, payload

    def report(self, kind: str, name: str, millis: float, length: int = 0) -> None:
        """A custom statistics row (TTFT, TPOT) through Locust's request event."""
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=millis,
            response_length=length,
            exception=None,
            context={},
        )

    @task(3)
    def chat_stream(self) -> None:
        """A streamed completion: TTFT, time per output token and the whole stream."""
        model, payload = self.body(stream=True)
        name = f"stream {model}"
        started = time.perf_counter()
        with self.client.post(
            PATH, json=payload, stream=True, catch_response=True, name=name, timeout=120
        ) as response:
            response.request_meta["request_type"] = "SSE"
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            first: float | None = None
            done = False
            text_chunks = 0
            tokens = 0
            error = ""
            for line in response.iter_lines():
                if not line.startswith(b"data: "):
                    continue  # blank separators and ": keep-alive" comments
                data = line[6:]
                if data == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    error = str(chunk["error"].get("message", chunk["error"]))
                    break
                for choice in chunk.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        text_chunks += 1
                        if first is None:
                            first = time.perf_counter()
                            self.report("TTFT", name, (first - started) * 1000)
                if chunk.get("usage"):
                    tokens = int(chunk["usage"]["completion_tokens"])
            finished = time.perf_counter()
            # The automatic row measured only until the headers: make it the whole stream.
            response.request_meta["response_time"] = (finished - started) * 1000
            response.request_meta["response_length"] = tokens
            if error:
                response.failure(f"stream error event: {error}")
            elif not done:
                response.failure("stream ended without [DONE]")
            elif first is None:
                response.failure("stream carried no content")
            else:
                generated = tokens or text_chunks
                if generated > 1:
                    self.report("TPOT", name, (finished - first) * 1000 / (generated - 1))
                response.success()

    @task(1)
    def chat_whole(self) -> None:
        """A non-streamed completion."""
        model, payload = self.body(stream=False)
        with self.client.post(
            PATH, json=payload, catch_response=True, name=f"whole {model}", timeout=120
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            answer = response.json()
            if not answer.get("choices") or not answer["choices"][0]["message"].get("content"):
                response.failure("answer has no content")
            else:
                response.success()
