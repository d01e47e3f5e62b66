"""Prefix-cache affinity on real vLLM: two replicas of one model, prefix caching on.

Runs before the session's shared stack (it needs no ``e2e`` fixture), on its
own processes and free ports: two vLLM servers of SmolLM2 (one core each,
``--enable-prefix-caching``), a sidecar in front of each, and two gateway
processes over the same two sidecars, one routing the model by
``least_load`` and one by ``prefix_affinity``. The same multi-turn workload
(each phase with system prompts of its own, so the first phase's cache
cannot help the second) goes through each gateway, and the hit rate is read
from vLLM's own counters (``vllm:prefix_cache_hits`` / ``_queries``, tokens)
on both servers. Affinity keeps each conversation on the replica that holds
its history, so its hit rate must be the higher one. The figures are
printed (``pytest -s``) for BENCHMARK.md.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from devstack.stack import Stack, StackPlan, is_ready
from devstack.vllm import CACHE, DEFAULT_COMPILE_CACHE, RESILIENCE, ROOT, VllmModel
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from tests.conftest import free_port

MODEL_DIR = "smollm2-135m-instruct"
CONVERSATIONS = 6
TURNS = 4
_COUNTER = re.compile(r"^vllm:(?:gpu_)?prefix_cache_(hits|queries)(?:_total)?(?:\{[^}]*\})? (\S+)$")
_HEALTHY = re.compile(r"^llmgw_backend_healthy\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


class ReplicaPlan(StackPlan):
    """Two replicas of one model behind one gateway model (no fallbacks)."""

    def gateway_config(self) -> dict[str, object]:
        """One model, both sidecars, least load (the stack's own gateway)."""
        return routing(self, "least_load")


def routing(plan: StackPlan, policy: str) -> dict[str, object]:
    return {
        "models": [
            {
                "name": "smollm2",
                "endpoints": [f"{plan.host}:{m.port}" for m in plan.models],
                "lb_policy": policy,
                "max_output_tokens": 256,
            }
        ],
        "resilience": RESILIENCE,
    }


def replica_plan() -> ReplicaPlan:
    models = [
        VllmModel(
            name=f"smollm2-r{i}",
            alias=f"r{i}",
            port=free_port(),
            vllm_port=free_port(),
            model_dir=CACHE / "models" / MODEL_DIR,
            python=str(CACHE / "vllm-venv" / "bin" / "python"),
            compile_cache=DEFAULT_COMPILE_CACHE,
            cpu=i,
            max_num_seqs=16,
            # Eager mode: a start without the compile cache takes ~30 s, not minutes.
            # 32-token blocks (vLLM for CPU defaults to 128): a turn's few new
            # tokens then leave little of a cached prefix unused, as on a GPU (16).
            extra_args=("--enable-prefix-caching", "--enforce-eager", "--block-size", "32"),
        )
        for i in range(2)
    ]
    return ReplicaPlan(
        models=models,
        grpc_port=free_port(),
        rest_port=free_port(),
        # Read by wait_routable: which endpoints the gateway has admitted.
        gateway_metrics_port=free_port(),
        extra_env={"LLMGW_SHIM_REQUIRE_API_KEY": "false"},
    )


def prefix_counters(plan: StackPlan) -> tuple[float, float]:
    """(hits, queries) in tokens, summed over both vLLM servers."""
    hits = queries = 0.0
    for m in plan.models:
        assert isinstance(m, VllmModel)
        text = httpx.get(f"http://{plan.host}:{m.vllm_port}/metrics", timeout=10).text
        for line in text.splitlines():
            found = _COUNTER.match(line)
            if found:
                if found.group(1) == "hits":
                    hits += float(found.group(2))
                else:
                    queries += float(found.group(2))
    return hits, queries


def healthy_endpoints(metrics_port: int) -> set[str]:
    """The smollm2 endpoints a gateway's /metrics reports as passing its health checks."""
    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return set()  # not listening yet
    healthy = set()
    for line in text.splitlines():
        found = _HEALTHY.match(line)
        if found and float(found.group(2)) == 1:
            labels = dict(_LABEL.findall(found.group(1)))
            if labels.get("model") == "smollm2":
                healthy.add(labels.get("endpoint", ""))
    return healthy


def wait_routable(
    plan: StackPlan, address: str, metrics_port: int, alive: Callable[[], str | None]
) -> None:
    """Until the gateway at ``address`` is SERVING and routes smollm2 to both replicas.

    A gateway health-checks its sidecars: one that started while vLLM was still
    loading saw them fail and readmits them only after a few good checks, so a
    workload begun earlier would find one replica, or none. ``alive`` returns
    why the gateway can no longer come up (it exited), else None.
    """
    endpoints = {f"{plan.host}:{m.port}" for m in plan.models}
    deadline = time.monotonic() + 120
    while not (is_ready(address) and endpoints <= healthy_endpoints(metrics_port)):
        if (gone := alive()) is not None:
            pytest.fail(f"the gateway at {address} exited: {gone}")
        if time.monotonic() > deadline:
            pytest.fail(
                f"the gateway at {address} did not route to {sorted(endpoints)} within 120 s "
                f"(healthy: {sorted(healthy_endpoints(metrics_port))})"
            )
        time.sleep(0.5)


def system_prompt(phase: str, i: int) -> str:
    rng = random.Random(f"{phase}-{i}")
    words = [
        "policy",
        "refund",
        "invoice",
        "careful",
        "polite",
        "summary",
        "ticket",
        "warranty",
        "shipping",
    ]
    return f"You are support agent {phase}-{i}. " + " ".join(rng.choice(words) for _ in range(220))


async def converse(address: str, phase: str) -> list[float]:
    """Every conversation to its end (three at a time); TTFT of each turn."""
    ttfts: list[float] = []
    gate = asyncio.Semaphore(3)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ChatServiceStub(channel)

        async def conversation(i: int) -> None:
            history = [pb.ChatMessage(role=pb.ROLE_SYSTEM, content=system_prompt(phase, i % 2))]
            async with gate:
                for turn in range(TURNS):
                    question = f"Customer {i} asks question {turn}: where is my order {i}{turn}?"
                    history.append(pb.ChatMessage(role=pb.ROLE_USER, content=question))
                    params = pb.ChatCompletionParams(
                        model="smollm2", messages=history, max_tokens=24, temperature=0
                    )
                    began = time.perf_counter()
                    parts: list[str] = []
                    call = stub.StreamChatCompletion(
                        pb.StreamChatCompletionRequest(params=params), timeout=300
                    )
                    async for message in call:
                        if message.HasField("delta"):
                            if not parts:
                                ttfts.append(time.perf_counter() - began)
                            parts.append(message.delta.content)
                    history.append(pb.ChatMessage(role=pb.ROLE_ASSISTANT, content="".join(parts)))

        await asyncio.gather(*(conversation(i) for i in range(CONVERSATIONS)))
    return ttfts


@pytest.fixture(scope="module")
def smollm2_installed() -> None:
    """vLLM's virtualenv and the SmolLM2 folder only (cached; the tier's
    ``installed`` builds every model, which this test does not need)."""
    python = str(CACHE / "vllm-venv" / "bin" / "python")
    for what, args in (
        ("vLLM virtualenv", ["bash", "scripts/install_vllm.sh"]),
        ("SmolLM2 folder", [python, "scripts/build_models.py", "--out", str(CACHE / "models"),
                            MODEL_DIR]),
    ):  # fmt: skip
        result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"{what} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


@pytest.fixture
def replicas(smollm2_installed: None, tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    """The stack (its gateway routes by least load) plus a second gateway by affinity."""
    plan = replica_plan()
    stack = Stack(plan)
    config = tmp_path / "affinity.yaml"
    config.write_text(yaml.safe_dump(routing(plan, "prefix_affinity")))
    affinity = f"127.0.0.1:{free_port()}"
    affinity_metrics = free_port()
    log_path = tmp_path / "affinity-gateway.log"
    gateway: subprocess.Popen[bytes] | None = None

    def affinity_alive() -> str | None:
        assert gateway is not None
        if gateway.poll() is None:
            return None
        return f"code {gateway.returncode}:\n{log_path.read_text(errors='replace')[-2000:]}"

    def stack_alive() -> str | None:
        gone = [
            f"{name} (code {p.returncode})" for name, p in stack.processes if p.poll() is not None
        ]
        return ", ".join(gone) or None

    try:
        stack.start()
        stack.wait_ready(timeout_s=900, still_waiting_every_s=0)
        assert plan.gateway_metrics_port is not None
        wait_routable(plan, f"127.0.0.1:{plan.grpc_port}", plan.gateway_metrics_port, stack_alive)
        with log_path.open("wb") as log:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(config), "--listen", affinity,
                 "--metrics-listen", f"127.0.0.1:{affinity_metrics}"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_routable(plan, affinity, affinity_metrics, affinity_alive)
        yield stack, affinity
    finally:
        if gateway is not None:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(30)
        stack.stop()


@pytest.mark.timeout(1500)
def test_prefix_affinity_raises_vllms_own_prefix_cache_hit_rate(
    replicas: tuple[Stack, str],
) -> None:
    stack, affinity = replicas
    plan = stack.plan
    least_load = f"127.0.0.1:{plan.grpc_port}"
    results = {}
    for policy, address in (("least_load", least_load), ("prefix_affinity", affinity)):
        hits0, queries0 = prefix_counters(plan)
        started = time.monotonic()
        ttfts = asyncio.run(converse(address, policy))
        hits, queries = prefix_counters(plan)
        assert queries > queries0, "vLLM reports no prefix-cache queries: is caching on?"
        assert len(ttfts) == CONVERSATIONS * TURNS
        ttfts.sort()
        results[policy] = (
            (hits - hits0) / (queries - queries0),
            ttfts[len(ttfts) // 2],
            time.monotonic() - started,
        )
    for policy, (rate, ttft, took) in results.items():
        print(f"vLLM prefix cache, {policy}: hit rate {rate:.1%}, TTFT p50 {ttft * 1000:.0f} ms, "
              f"{CONVERSATIONS}x{TURNS} turns in {took:.0f} s")  # fmt: skip
    assert results["prefix_affinity"][0] > results["least_load"][0]
