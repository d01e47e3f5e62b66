"""Multi-turn conversations over several replicas: routing policies compared.

``python -m bench.multiturn [--quick] [--policies least_load,prefix_affinity]``

Many conversations share a few long system prompts; each conversation sends
its turns one after another, every turn repeating the whole history (as a
chat client does). For each policy a fresh stack is started (so every
replica's prefix cache starts cold): ``--replicas`` sim sidecars whose
prefill time is charged only for prompt tokens their prefix cache does not
hold, and one gateway routing the model with that ``lb_policy``. The client
(this process, gRPC to the gateway) measures time to first token per turn;
the prefix-cache hit rate is read from the sidecars' own counters
(``llmgw_sidecar_prefix_cache_{hits,queries}_total``, in tokens, the same
shape as vLLM's), and the share of requests each replica served from
``llmgw_sidecar_requests_total``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.run_bench import free_ports, markdown_table, percentile, plain_table
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc

MODEL = "chat"
POLICIES = ("least_load", "round_robin", "prefix_affinity")
_WORDS = (
    "account", "balance", "billing", "careful", "clause", "contract", "customer", "detail",
    "escalate", "friendly", "guideline", "invoice", "policy", "polite", "product", "refund",
    "reply", "request", "review", "schedule", "shipping", "summary", "support", "ticket",
)  # fmt: skip


@dataclass(frozen=True)
class Workload:
    """What the conversations look like and how hard they push."""

    replicas: int = 4
    conversations: int = 48
    concurrency: int = 16
    turns: int = 6
    system_prompts: int = 4
    system_tokens: int = 1000
    user_tokens: int = 120
    output_tokens: int = 96
    ttft_ms: float = 10.0
    prefill_ms_per_1k_tokens: float = 100.0
    itl_ms: float = 5.0
    session_header: bool = False

    def sim_config(self) -> dict[str, float | int]:
        """Each replica: fast decode, prefill charged per uncached 1000 prompt tokens."""
        return {
            "ttft_ms": self.ttft_ms,
            "prefill_ms_per_1k_tokens": self.prefill_ms_per_1k_tokens,
            "itl_ms": self.itl_ms,
            "output_tokens": self.output_tokens,
            "max_concurrency": 64,
            "max_context_tokens": 32768,
        }


def _text(rng: random.Random, tokens: int) -> str:
    # ~4 characters a token, as the simulator counts them.
    words: list[str] = []
    size = 0
    while size < tokens * 4:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


@dataclass
class PolicyResult:
    """What one policy's run measured."""

    policy: str
    ttfts: list[float] = field(default_factory=list)  # every turn
    later_ttfts: list[float] = field(default_factory=list)  # turns 2.. (history repeated)
    errors: int = 0
    hits: float = 0.0
    queries: float = 0.0
    per_replica: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    prefill_ms_per_1k_tokens: float = 0.0

    @property
    def hit_rate(self) -> float:
        """Prefix-cache hits over queries, in tokens, across every replica."""
        return self.hits / self.queries if self.queries else 0.0

    @property
    def prefill_ms_per_request(self) -> float:
        """Prefill the latency model charged per request: uncached tokens x its rate.
        The part of TTFT the policy decides, free of this machine's CPU noise."""
        served = len(self.ttfts) or 1
        return (self.queries - self.hits) / 1000 * self.prefill_ms_per_1k_tokens / served

    @property
    def busiest_share(self) -> float:
        """The busiest replica's share of the requests (1/replicas is even)."""
        total = sum(self.per_replica)
        return max(self.per_replica) / total if total else 0.0


class Stack:
    """Sidecars and one gateway as processes on free ports."""

    def __init__(self, workload: Workload, policy: str, log_dir: Path) -> None:
        self.workload = workload
        self.policy = policy
        self.log_dir = log_dir
        ports = free_ports(2 * workload.replicas + 1)
        self.sidecar_ports = ports[: workload.replicas]
        self.metrics_ports = ports[workload.replicas : 2 * workload.replicas]
        self.gateway_port = ports[-1]
        self.processes: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        log = open(self.log_dir / f"{self.policy}-{name}.log", "wb")  # noqa: SIM115
        self.processes.append(
            subprocess.Popen(
                [sys.executable, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        )

    def start(self) -> None:
        """Spawn every process and wait until each answers its health check."""
        sim = json.dumps(self.workload.sim_config())
        for i, (port, metrics) in enumerate(
            zip(self.sidecar_ports, self.metrics_ports, strict=True)
        ):
            self._spawn(
                f"sidecar{i}",
                ["-m", "backends", "--model", MODEL, "--listen", f"127.0.0.1:{port}",
                 "--sim-config", sim, "--metrics-listen", f"127.0.0.1:{metrics}",
                 "--log-level", "WARNING"],
            )  # fmt: skip
        config = {
            "models": [
                {
                    "name": MODEL,
                    "endpoints": [f"127.0.0.1:{p}" for p in self.sidecar_ports],
                    "lb_policy": self.policy,
                    "max_output_tokens": 1024,
                }
            ]
        }
        path = self.log_dir / f"{self.policy}-gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        self._spawn(
            "gateway",
            ["-m", "gateway", "--config", str(path), "--listen",
             f"127.0.0.1:{self.gateway_port}", "--metrics-listen", "", "--log-level", "WARNING"],
        )  # fmt: skip
        targets = [f"127.0.0.1:{p}" for p in (*self.sidecar_ports, self.gateway_port)]
        deadline = time.monotonic() + 60
        while targets:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a process exited early; logs in {self.log_dir}")
            targets = [t for t in targets if not _serving(t)]
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready: {targets}")
            time.sleep(0.2)

    def scrape(self) -> tuple[float, float, list[float]]:
        """(prefix-cache hits, queries, requests per replica) from every sidecar."""
        hits = queries = 0.0
        served = []
        for port in self.metrics_ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
                text = page.read().decode()
            hits += _sample(text, "llmgw_sidecar_prefix_cache_hits_total")
            queries += _sample(text, "llmgw_sidecar_prefix_cache_queries_total")
            served.append(_sample(text, "llmgw_sidecar_requests_total", 'outcome="ok"'))
        return hits, queries, served

    def stop(self) -> None:
        """SIGTERM every process group, then SIGKILL what is left."""
        for process in self.processes:
            _signal(process, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                _signal(process, signal.SIGKILL)
                process.wait()


def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, sig)


def _serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def _sample(text: str, name: str, having: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and having in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _conversation(
    stub: pb_grpc.ChatServiceStub,
    workload: Workload,
    index: int,
    systems: Sequence[str],
    result: PolicyResult,
) -> None:
    rng = random.Random(index)
    history = [pb.ChatMessage(role=pb.ROLE_SYSTEM, content=systems[index % len(systems)])]
    metadata = (("x-session-id", f"conversation-{index}"),) if workload.session_header else ()
    for turn in range(workload.turns):
        question = f"[{index}.{turn}] " + _text(rng, workload.user_tokens)
        history.append(pb.ChatMessage(role=pb.ROLE_USER, content=question))
        params = pb.ChatCompletionParams(
            model=MODEL, messages=history, max_tokens=workload.output_tokens
        )
        request = pb.StreamChatCompletionRequest(params=params)
        began = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        ended = False
        try:
            async for message in stub.StreamChatCompletion(request, metadata=metadata, timeout=60):
                kind = message.WhichOneof("event")
                if kind == "delta":
                    if first is None:
                        first = time.perf_counter() - began
                    parts.append(message.delta.content)
                elif kind == "end":
                    ended = True
        except grpc.aio.AioRpcError:
            ended = False
        if not ended or first is None:
            result.errors += 1
            return
        result.ttfts.append(first)
        if turn:
            result.later_ttfts.append(first)
        history.append(pb.ChatMessage(role=pb.ROLE_ASSISTANT, content="".join(parts)))


async def _drive(workload: Workload, port: int, result: PolicyResult) -> None:
    rng = random.Random(1)
    systems = [
        f"System prompt {i}. " + _text(rng, workload.system_tokens)
        for i in range(workload.system_prompts)
    ]
    gate = asyncio.Semaphore(workload.concurrency)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ChatServiceStub(channel)

        async def one(index: int) -> None:
            async with gate:
                await _conversation(stub, workload, index, systems, result)

        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(workload.conversations)))
        result.wall_s = time.perf_counter() - began


def run_policy(workload: Workload, policy: str, log_dir: Path) -> PolicyResult:
    """A fresh stack, every conversation to its end, then the sidecars' counters."""
    stack = Stack(workload, policy, log_dir)
    result = PolicyResult(policy, prefill_ms_per_1k_tokens=workload.prefill_ms_per_1k_tokens)
    try:
        stack.start()
        asyncio.run(_drive(workload, stack.gateway_port, result))
        result.hits, result.queries, result.per_replica = stack.scrape()
    finally:
        stack.stop()
    return result


HEADER = (
    "policy",
    "requests",
    "errors",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "later turns p50 ms",
    "later turns p99 ms",
    "prefix-cache hit rate",
    "modelled prefill ms/req",
    "busiest replica share",
    "wall s",
)


def rows(results: Sequence[PolicyResult]) -> list[list[str]]:
    """One table row per policy."""

    def ms(values: list[float], q: float) -> str:
        return f"{percentile(values, q) * 1000:.0f}"

    return [
        [
            r.policy,
            str(len(r.ttfts)),
            str(r.errors),
            ms(r.ttfts, 0.5),
            ms(r.ttfts, 0.99),
            ms(r.later_ttfts, 0.5),
            ms(r.later_ttfts, 0.99),
            f"{r.hit_rate * 100:.1f} %",
            f"{r.prefill_ms_per_request:.0f}",
            f"{r.busiest_share * 100:.0f} %",
            f"{r.wall_s:.1f}",
        ]
        for r in results
    ]


def main(argv: list[str] | None = None) -> None:
    """Run every policy on the same workload and print (or append) the table."""
    parser = argparse.ArgumentParser(prog="bench.multiturn", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter conversations")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--replicas", type=int, default=Workload.replicas)
    parser.add_argument("--conversations", type=int, default=Workload.conversations)
    parser.add_argument("--concurrency", type=int, default=Workload.concurrency)
    parser.add_argument("--turns", type=int, default=Workload.turns)
    parser.add_argument("--session-header", action="store_true", help="send x-session-id")
    parser.add_argument("--markdown", type=Path, help="append the results to this file")
    args = parser.parse_args(argv)
    workload = Workload(
        replicas=args.replicas,
        conversations=16 if args.quick else args.conversations,
        concurrency=8 if args.quick else args.concurrency,
        turns=4 if args.quick else args.turns,
        session_header=args.session_header,
    )
    policies = [p for p in args.policies.split(",") if p]
    log_dir = Path(tempfile.mkdtemp(prefix="llmgw-multiturn-"))
    print(f"workload: {workload}\nlogs: {log_dir}", flush=True)
    results = []
    for policy in policies:
        print(f"running {policy} ...", flush=True)
        results.append(run_policy(workload, policy, log_dir))
    print(plain_table(HEADER, rows(results)))
    if args.markdown:
        command = "python -m bench.multiturn " + shlex.join(argv or sys.argv[1:])
        load = os.getloadavg()
        with args.markdown.open("a") as out:
            out.write(
                f"\n<!-- {time.strftime('%Y-%m-%d %H:%M')} `{command.strip()}`; "
                f"load average {load[0]:.1f} -->\n" + markdown_table(HEADER, rows(results)) + "\n"
            )


if __name__ == "__main__":
    main()
