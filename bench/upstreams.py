"""Processes the HTTP-engine benchmark runs beside the stack.

- ``MockUpstream``: ``bench.mock_openai``, the OpenAI-compatible server the
  sidecar's ``vllm`` engine (and LiteLLM) stream from.
- ``HttpEngineModel``: a stack model whose sidecar runs the ``vllm`` engine
  against that server.
- ``LiteLLMProxy``: a LiteLLM proxy (from its own throwaway virtualenv, see
  ``make bench-litellm``; never a dependency of this project) in front of
  the same server, for a side-by-side run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devstack.stack import ProcessSpec


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{log.stem} exited: {log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{log.stem} did not listen on {port} within {timeout_s:.0f}s")


class _Process:
    """A child process in its own session, logging to a file; stopped with its group."""

    process: subprocess.Popen[bytes] | None = None

    def _spawn(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> int:
        self._log = open(log, "wb")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 10 s."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()


class MockUpstream(_Process):
    """``bench.mock_openai`` on a port, at a given pace."""

    def __init__(self, port: int, model: str, ttft_ms: float, itl_ms: float, log: Path) -> None:
        self.port, self.model, self.ttft_ms, self.itl_ms, self.log = (
            port,
            model,
            ttft_ms,
            itl_ms,
            log,
        )

    def start(self) -> int:
        """Start it and wait until it listens; return its pid."""
        pid = self._spawn(
            [
                sys.executable, "-m", "bench.mock_openai", "--port", str(self.port),
                "--model", self.model, "--ttft-ms", str(self.ttft_ms),
                "--itl-ms", str(self.itl_ms),
            ],
            self.log,
        )  # fmt: skip
        assert self.process is not None
        _wait_port(self.port, self.process, self.log, 30)
        return pid


@dataclass(frozen=True)
class HttpEngineModel:
    """A model served by a sidecar running the ``vllm`` engine against ``upstream_url``."""

    name: str
    alias: str
    port: int
    upstream_url: str
    default_max_tokens: int = 256
    max_output_tokens: int = 4096
    stream_interval_ms: float = 0.0
    extra_args: tuple[str, ...] = ()
    kind: str = "chat"

    def processes(self, host: str) -> list[ProcessSpec]:
        """One sidecar on the vllm engine."""
        return [
            ProcessSpec(
                f"sidecar-{self.name}",
                [
                    "-m", "backends", "--engine", "vllm", "--vllm-url", self.upstream_url,
                    "--model", self.name, "--listen", f"{host}:{self.port}",
                    "--stream-interval-ms", str(self.stream_interval_ms),
                    "--log-level", "WARNING", *self.extra_args,
                ],
            )
        ]  # fmt: skip

    def ready_targets(self, host: str) -> dict[str, str]:
        """The sidecar's grpc.health.v1 (SERVING once the upstream answers /health)."""
        return {f"sidecar {self.name}": f"{host}:{self.port}"}


class LiteLLMProxy(_Process):
    """A LiteLLM proxy, one worker, routing ``model`` to the mock upstream."""

    def __init__(self, litellm: str, port: int, model: str, upstream_port: int, dir: Path) -> None:
        self.litellm, self.port, self.model, self.upstream_port, self.dir = (
            litellm,
            port,
            model,
            upstream_port,
            dir,
        )

    def start(self) -> int:
        """Write its config and start it (readiness: ``wait_ready``); return its pid."""
        config = self.dir / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {self.model}\n"
            "    litellm_params:\n"
            f"      model: openai/{self.model}\n"
            f"      api_base: http://127.0.0.1:{self.upstream_port}/v1\n"
            "      api_key: not-used\n"
        )
        return self._spawn(
            [
                self.litellm, "--config", str(config), "--host", "127.0.0.1",
                "--port", str(self.port), "--num_workers", "1",
            ],
            self.dir / "litellm.log",
            # Offline: the bundled model cost map, no telemetry. The master key is the one
            # bench.loadgen sends: every request is authenticated, as in a deployment.
            {
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_TELEMETRY": "False",
                "LITELLM_MASTER_KEY": "sk-bench",
            },
        )  # fmt: skip

    def wait_ready(self, timeout_s: float) -> None:
        """Until /health/liveliness answers 200."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.port}/health/liveliness"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.dir / "litellm.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"litellm exited: {log}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"litellm not ready within {timeout_s:.0f}s")
