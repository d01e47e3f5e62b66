"""Start, watch and stop the processes of a local stack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass(frozen=True)
class SimModel:
    """A model served by one sim sidecar."""

    name: str
    alias: str
    port: int
    sim: Mapping[str, float]
    default_max_tokens: int = 256
    max_output_tokens: int = 4096


@dataclass
class StackPlan:
    """Ports and models of a local stack."""

    models: Sequence[SimModel]
    grpc_port: int = 50051
    rest_port: int = 8080
    host: str = "127.0.0.1"
    gateway_workers: int = 1
    shim_workers: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)

    def gateway_config(self) -> dict[str, object]:
        """The gateway routing file for these models."""
        return {
            "models": [
                {
                    "name": m.name,
                    "aliases": [m.alias],
                    "endpoints": [f"{self.host}:{m.port}"],
                    "default_max_tokens": m.default_max_tokens,
                    "max_output_tokens": m.max_output_tokens,
                }
                for m in self.models
            ]
        }


class Stack:
    """The running processes of a StackPlan; stops them all, children first."""

    def __init__(self, plan: StackPlan, log_dir: Path | None = None) -> None:
        self.plan = plan
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._dir = Path(tempfile.mkdtemp(prefix="llmgw-stack-"))
        self.log_dir = log_dir or self._dir

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        env = {**os.environ, **self.plan.extra_env, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            [sys.executable, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # our own Ctrl-C handling stops it, in order
        )
        self.processes.append((name, process))

    def start(self) -> None:
        """Spawn sidecars, gateway and shim (not waiting for readiness)."""
        plan = self.plan
        for m in plan.models:
            self._spawn(
                f"sidecar-{m.name}",
                ["-m", "backends", "--engine", "sim", "--model", m.name,
                 "--listen", f"{plan.host}:{m.port}", "--sim-config", json.dumps(dict(m.sim))],
            )  # fmt: skip
        config = self._dir / "gateway.yaml"
        config.write_text(yaml.safe_dump(plan.gateway_config()))
        self._spawn(
            "gateway",
            ["-m", "gateway", "--config", str(config), "--listen",
             f"{plan.host}:{plan.grpc_port}", "--workers", str(plan.gateway_workers)],
        )  # fmt: skip
        self._spawn(
            "shim",
            ["-m", "rest_shim", "--host", plan.host, "--port", str(plan.rest_port),
             "--gateway", f"{plan.host}:{plan.grpc_port}", "--workers", str(plan.shim_workers),
             "--log-level", "warning"],
        )  # fmt: skip

    def wait_ready(self, timeout_s: float = 60.0, progress: bool = False) -> None:
        """Block until every part answers its health check; raise if one dies or time runs out."""
        plan = self.plan
        pending = {f"sidecar {m.name}": f"{plan.host}:{m.port}" for m in plan.models}
        pending["gateway"] = f"{plan.host}:{plan.grpc_port}"
        pending["shim"] = f"http://{plan.host}:{plan.rest_port}/readyz"
        deadline = time.monotonic() + timeout_s
        while pending:
            self._check_alive()
            for name, target in list(pending.items()):
                if _is_ready(target):
                    del pending[name]
                    if progress:
                        print(f"  ready: {name}", flush=True)
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout_s:.0f}s: {', '.join(pending)}")
            time.sleep(0.1)

    def _check_alive(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                log = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with code {process.returncode}:\n{log}")

    def stop(self) -> None:
        """SIGTERM everything (shim first), then SIGKILL whatever lingers."""
        for _, process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def pids(self) -> dict[str, int]:
        """Process id of each part, by name."""
        return {name: p.pid for name, p in self.processes}


def _is_ready(target: str) -> bool:
    if target.startswith("http"):
        try:
            with urllib.request.urlopen(target, timeout=1) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
