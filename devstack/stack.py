"""Start, watch and stop the processes of a local stack."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import BinaryIO, Protocol

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass(frozen=True)
class ProcessSpec:
    """One process of a stack: a Python module run with some interpreter."""

    name: str
    args: Sequence[str]
    python: str = sys.executable  # another virtualenv's interpreter for, say, vLLM
    env: Mapping[str, str] = field(default_factory=dict)


class ModelPlan(Protocol):
    """A model of a stack: what the gateway routes to and the processes behind it."""

    @property
    def name(self) -> str:
        """The model's name in the gateway."""
        ...

    @property
    def alias(self) -> str:
        """Its one alias."""
        ...

    @property
    def port(self) -> int:
        """Its sidecar's gRPC port."""
        ...

    @property
    def kind(self) -> str:
        """``chat`` (generates text) or ``embedding``."""
        ...

    @property
    def default_max_tokens(self) -> int | None:
        """max_tokens when a request sets none; None: up to the model's limit."""
        ...

    @property
    def max_output_tokens(self) -> int:
        """Largest max_tokens a request may ask for."""
        ...

    def processes(self, host: str) -> list[ProcessSpec]:
        """What to start for this model, in order."""
        ...

    def ready_targets(self, host: str) -> dict[str, str]:
        """Name -> health target (``host:port`` for grpc.health.v1, or an http URL)."""
        ...


@dataclass(frozen=True)
class SimModel:
    """A model served by one sim sidecar."""

    name: str
    alias: str
    port: int
    sim: Mapping[str, float]
    default_max_tokens: int | None = None  # None: up to the model's limit
    max_output_tokens: int = 4096
    metrics_port: int | None = None
    stream_interval_ms: float = 0.0
    kind: str = "chat"

    def processes(self, host: str) -> list[ProcessSpec]:
        """One sidecar on the sim engine."""
        return [
            ProcessSpec(
                f"sidecar-{self.name}",
                [
                    "-m",
                    "backends",
                    "--engine",
                    "sim",
                    "--model",
                    self.name,
                    "--listen",
                    f"{host}:{self.port}",
                    "--sim-config",
                    json.dumps(dict(self.sim)),
                    "--metrics-listen",
                    f"{host}:{self.metrics_port}" if self.metrics_port else "",
                    "--stream-interval-ms",
                    str(self.stream_interval_ms),
                ],
            )
        ]

    def ready_targets(self, host: str) -> dict[str, str]:
        """The sidecar's grpc.health.v1."""
        return {f"sidecar {self.name}": f"{host}:{self.port}"}


@dataclass
class StackPlan:
    """Ports and models of a local stack."""

    models: Sequence[ModelPlan]
    grpc_port: int = 50051
    rest_port: int = 8080
    host: str = "127.0.0.1"
    gateway_workers: int = 1
    shim_workers: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    # /metrics of the gateway and the shim; None: off (so test stacks never clash).
    gateway_metrics_port: int | None = None
    shim_metrics_port: int | None = None
    fallbacks: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # The routing file's `resilience:` section (timeouts, streaming...); empty: defaults.
    resilience: Mapping[str, object] = field(default_factory=dict)

    def gateway_config(self) -> dict[str, object]:
        """The gateway routing file for these models."""
        config = self._models_config()
        if self.resilience:
            config["resilience"] = dict(self.resilience)
        return config

    def _models_config(self) -> dict[str, object]:
        return {
            "models": [
                {
                    "name": m.name,
                    "aliases": [m.alias],
                    "endpoints": [f"{self.host}:{m.port}"],
                    "default_max_tokens": m.default_max_tokens,
                    "max_output_tokens": m.max_output_tokens,
                    "fallbacks": list(self.fallbacks.get(m.name, ())),
                    "kind": m.kind,
                }
                for m in self.models
            ]
        }


def _free_ports(host: str, count: int) -> list[int]:
    """Ports the kernel says are free now (all held open until all are picked)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _listen(host: str, port: int | None) -> str:
    return f"{host}:{port}" if port else ""


class Stack:
    """The running processes of a StackPlan; stops them all, children first."""

    def __init__(self, plan: StackPlan, log_dir: Path | None = None) -> None:
        self.plan = plan
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[BinaryIO] = []
        self._dir = Path(tempfile.mkdtemp(prefix="llmgw-stack-"))
        self.log_dir = log_dir or self._dir

    def _spawn(
        self,
        name: str,
        args: Sequence[str],
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
    ) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed by stop()
        self._logs.append(log)
        env = {**os.environ, **self.plan.extra_env, **(env or {}), "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            [python, *args],
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
            for spec in m.processes(plan.host):
                self._spawn(spec.name, spec.args, spec.python, spec.env)
        config = self._dir / "gateway.yaml"
        config.write_text(yaml.safe_dump(plan.gateway_config()))
        # With several gateway workers each also gets an address of its own, and the
        # shim balances requests over them (round robin per call), not connections.
        gateway_target = f"{plan.host}:{plan.grpc_port}"
        own: list[str] = []
        if plan.gateway_workers > 1:
            own = [f"{plan.host}:{port}" for port in _free_ports(plan.host, plan.gateway_workers)]
            gateway_target = "ipv4:" + ",".join(own)
        self._spawn(
            "gateway",
            ["-m", "gateway", "--config", str(config), "--listen",
             f"{plan.host}:{plan.grpc_port}", "--workers", str(plan.gateway_workers),
             "--worker-listen", ",".join(own),
             "--metrics-listen", _listen(plan.host, plan.gateway_metrics_port)],
        )  # fmt: skip
        self._spawn(
            "shim",
            ["-m", "rest_shim", "--host", plan.host, "--port", str(plan.rest_port),
             "--gateway", gateway_target, "--workers", str(plan.shim_workers),
             "--log-level", "warning",
             "--metrics-listen", _listen(plan.host, plan.shim_metrics_port)],
        )  # fmt: skip

    def wait_ready(
        self, timeout_s: float = 60.0, progress: bool = False, still_waiting_every_s: float = 0
    ) -> None:
        """Block until every part answers its health check; raise if one dies or time runs out.

        With ``progress``, print each part as it becomes ready and, every
        ``still_waiting_every_s`` seconds (0: never), what is still pending.
        """
        plan = self.plan
        pending: dict[str, str] = {}
        for m in plan.models:
            pending.update(m.ready_targets(plan.host))
        pending["gateway"] = f"{plan.host}:{plan.grpc_port}"
        pending["shim"] = f"http://{plan.host}:{plan.rest_port}/readyz"
        start = time.monotonic()
        deadline = start + timeout_s
        next_report = start + still_waiting_every_s
        while pending:
            self._check_alive()
            for name, target in list(pending.items()):
                if is_ready(target):
                    del pending[name]
                    if progress:
                        print(f"  ready: {name} ({time.monotonic() - start:.0f}s)", flush=True)
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"not ready after {timeout_s:.0f}s: {', '.join(pending)}")
            if progress and still_waiting_every_s and pending and now >= next_report:
                print(f"  waiting for {', '.join(pending)} ({now - start:.0f}s)", flush=True)
                next_report = now + still_waiting_every_s
            time.sleep(0.1 if still_waiting_every_s == 0 else 0.5)

    def _check_alive(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                log = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with code {process.returncode}:\n{log}")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM everything (shim first), then SIGKILL whatever lingers.

        Signals go to each part's process group, also when its leader has
        already exited: a part's own children (vLLM's engine process) must not
        outlive it.
        """
        for _, process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        for _, process in self.processes:
            _signal_group(process, signal.SIGKILL)  # orphans of parts that exited early
        for log in self._logs:
            log.close()

    def kill(self, name: str) -> None:
        """SIGKILL one part and its children at once, as a crash would (failure drills)."""
        for part, process in self.processes:
            if part == name:
                _signal_group(process, signal.SIGKILL)
                process.wait()
                return
        raise KeyError(f"no part named {name!r}; parts: {', '.join(self.pids())}")

    def pids(self) -> dict[str, int]:
        """Process id of each part, by name."""
        return {name: p.pid for name, p in self.processes}


def stop_on_signals() -> None:
    """Make Ctrl-C and SIGTERM alike raise KeyboardInterrupt in the main thread, so a
    foreground stack stops cleanly either way. Installed explicitly: a process started
    from a script in the background inherits SIGINT ignored, and Python then leaves it
    so (Ctrl-C would not stop it)."""

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # start_new_session made each part a group leader; no such group: all of it is gone.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def is_ready(target: str) -> bool:
    """An http(s) URL answers 200, or a gRPC ``host:port`` answers its health check SERVING."""
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


def wait_models_answer(
    plan: StackPlan, timeout_s: float, progress: bool = False, api_key: str | None = None
) -> None:
    """Block until each model answers a one-token completion (an embedding model: one
    vector) through the shim, itself.

    A sidecar turning SERVING is not the end: the gateway readmits an endpoint
    after a few good health checks, and until then its requests go to a
    fallback (or fail). An answer whose ``model`` is the one asked for proves
    the whole path.
    """
    deadline = time.monotonic() + timeout_s
    base = f"http://{plan.host}:{plan.rest_port}/v1"
    for m in plan.models:
        payload: dict[str, object]
        if m.kind == "embedding":
            url, payload = f"{base}/embeddings", {"model": m.name, "input": "Hi"}
        else:
            url = f"{base}/chat/completions"
            payload = {
                "model": m.name, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]
            }  # fmt: skip
        body = json.dumps(payload).encode()
        while True:
            headers = {"content-type": "application/json"}
            if api_key:
                headers["authorization"] = f"Bearer {api_key}"
            request = urllib.request.Request(url, body, headers)
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    if json.loads(answer.read()).get("model") == m.name:
                        break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{m.name} did not answer through the gateway in {timeout_s}s")
            time.sleep(0.5)
        if progress:
            print(f"  answering: {m.name}", flush=True)
