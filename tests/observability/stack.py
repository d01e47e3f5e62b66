"""A small multi-process stack for observability tests: sidecars, gateway
(with tenants) and shim as real processes, each with its own /metrics."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.tenancy.keys import hash_key
from tests.conftest import free_port

# Real-looking keys (the format the CLI creates): they must never reach a log.
KEYS = {
    "acme": "llmgw_a1b2c3d4e5f6_" + "S3cr3tAcmeKeyMaterialThatMustNeverBeLogged0",
    "tiny": "llmgw_0f0e0d0c0b0a_" + "S3cr3tTinyKeyMaterialThatMustNeverBeLogged0",
}
SECRET_PROMPT = "my bank password is hunter2-platypus-7781"


@dataclass
class Proc:
    name: str
    args: list[str]
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import os

        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class ObservedStack:
    folder: Path
    rest_port: int
    grpc_port: int
    metrics_ports: dict[str, int]
    procs: list[Proc]
    # Endpoints the gateway must report healthy before a test sends its first request.
    endpoints: Sequence[str] = ()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def logs(self) -> str:
        return "\n".join(p.log.read_text(errors="replace") for p in self.procs)

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Until the shim is ready and the gateway's health checks passed every
        endpoint: a gateway serves before its sidecars listen, and a first request
        then can find no endpoint to take it (503) on a slow machine."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if (
                    httpx.get(self.base_url + "/readyz", timeout=1).status_code == 200
                    and self._endpoints_healthy()
                ):
                    return
            except httpx.HTTPError:
                pass
            for p in self.procs:
                if p.process is not None and p.process.poll() is not None:
                    raise RuntimeError(f"{p.name} died:\n{p.log.read_text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError("stack not ready")

    def _endpoints_healthy(self) -> bool:
        text = httpx.get(
            f"http://127.0.0.1:{self.metrics_ports['gateway']}/metrics", timeout=1
        ).text
        healthy = {
            sample.labels.get("endpoint")
            for family in text_string_to_metric_families(text)
            if family.name == "llmgw_backend_healthy"
            for sample in family.samples
            if sample.value == 1
        }
        return all(endpoint in healthy for endpoint in self.endpoints)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def start_stack(
    folder: Path, env: Mapping[str, str] | None = None, shim_workers: int = 1
) -> ObservedStack:
    """Models: fast (two replicas, one failing a third of its requests at start:
    retries), ghost (nothing listening, falls back to fast). Tenants: acme
    (generous), tiny (5 requests a minute: rejections)."""
    env = dict(env or {})
    ports = {name: free_port() for name in ("fast0", "fast1")}
    metrics = {name: free_port() for name in ("gateway", "shim", "fast0", "fast1")}
    rest, grpc_port = free_port(), free_port()
    sims = {
        "fast0": {"ttft_ms": 5, "itl_ms": 2, "output_tokens": 12},
        "fast1": {
            "ttft_ms": 5,
            "itl_ms": 2,
            "output_tokens": 12,
            "failure_mode": "error_at_start",
            "failure_probability": 0.3,
        },
    }
    config = {
        "models": [
            {
                "name": "fast",
                "endpoints": [f"127.0.0.1:{ports['fast0']}", f"127.0.0.1:{ports['fast1']}"],
            },
            {"name": "ghost", "endpoints": [f"127.0.0.1:{free_port()}"], "fallbacks": ["fast"]},
        ],
        "resilience": {"health": {"interval_s": 0.5}},
    }
    tenants = {
        "tenants": [
            {
                "name": name,
                "models": ["*"],
                "limits": {
                    "requests_per_minute": rpm,
                    "tokens_per_minute": 10_000_000,
                    "max_concurrent": 64,
                },
                "keys": [{"id": KEYS[name].split("_")[1], "hash": hash_key(KEYS[name])}],
            }
            for name, rpm in (("acme", 100_000), ("tiny", 5))
        ]
    }
    (folder / "gateway.yaml").write_text(yaml.safe_dump(config))
    (folder / "tenants.yaml").write_text(yaml.safe_dump(tenants))
    procs = [
        Proc(
            name,
            [
                "-m",
                "backends",
                "--model",
                "fast",
                "--listen",
                f"127.0.0.1:{ports[name]}",
                "--sim-config",
                json.dumps(sims[name]),
                "--metrics-listen",
                f"127.0.0.1:{metrics[name]}",
            ],
            folder / f"{name}.log",
            env,
        )
        for name in ("fast0", "fast1")
    ]
    procs.append(
        Proc(
            "gateway",
            [
                "-m",
                "gateway",
                "--config",
                str(folder / "gateway.yaml"),
                "--tenants",
                str(folder / "tenants.yaml"),
                "--listen",
                f"127.0.0.1:{grpc_port}",
                "--metrics-listen",
                f"127.0.0.1:{metrics['gateway']}",
            ],
            folder / "gateway.log",
            env,
        )
    )
    procs.append(
        Proc(
            "shim",
            [
                "-m",
                "rest_shim",
                "--port",
                str(rest),
                "--gateway",
                f"127.0.0.1:{grpc_port}",
                "--metrics-listen",
                f"127.0.0.1:{metrics['shim']}",
                "--workers",
                str(shim_workers),
            ],
            folder / "shim.log",
            env,
        )
    )
    stack = ObservedStack(
        folder, rest, grpc_port, metrics, procs, [f"127.0.0.1:{ports[n]}" for n in ports]
    )
    for p in procs:
        p.start()
    try:
        stack.wait_ready()
    except BaseException:
        stack.stop()
        raise
    return stack


def drive_load(
    stack: ObservedStack, seconds: float, models: Sequence[str] = ("fast", "ghost")
) -> dict[str, int]:
    """Streamed and whole requests from both tenants until ``seconds`` pass; outcome counts."""
    import openai

    outcomes: dict[str, int] = {}
    clients = {
        name: openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0)
        for name, key in KEYS.items()
    }
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        i += 1
        tenant = "tiny" if i % 5 == 0 else "acme"
        model = models[i % len(models)]
        messages = [{"role": "user", "content": f"{SECRET_PROMPT} request {i}"}]
        try:
            if i % 2:
                stream = clients[tenant].chat.completions.create(
                    model=model, messages=messages, stream=True
                )  # type: ignore[arg-type]
                for _ in stream:
                    pass
            else:
                clients[tenant].chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
            key = "ok"
        except openai.APIStatusError as error:
            key = str(error.status_code)
        except openai.APIError as error:
            key = type(error).__name__
        outcomes[key] = outcomes.get(key, 0) + 1
    return outcomes
