"""Accuracy of the shared token bucket under replicas: ``make bench-limits``.

``python -m bench.limits_accuracy [--duration 150] [--tpm 60000] [--burst 10000]``

Starts its own redis-server, one zero-delay sim sidecar, and the gateway
with ``--workers 4`` (four processes on one port, SO_REUSEPORT) sharing that
Redis. Client streams on separate connections (spread by the kernel over
the four processes) hammer one tenant limited to L tokens a minute with
unary completions, retrying at once on 429, for the given duration. It
reports the tokens admitted (the real usage of the completions that
succeeded) against L, against the bound L*T + burst + one reservation per
replica, and against 95% of L*T; and the gateway's admission latency
(p50/p99, logged by each process at shutdown).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import yaml

from gateway.tenancy import keys
from llmgw.v1 import chat_pb2 as pb
from llmgw.v1 import chat_pb2_grpc as pb_grpc
from llmgw.v1 import usage_pb2, usage_pb2_grpc

PROMPT = "measure the shared bucket please"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def wait_listeners(port: int, count: int, timeout: float = 60) -> None:
    """Wait until ``count`` sockets listen on ``port`` (one per SO_REUSEPORT process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listening = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                    listening += 1
        if listening >= count:
            return
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {count} processes listen on {port}")


async def hammer(
    address: str, key: str, max_tokens: int, streams: int, connections: int, duration: float
) -> dict[str, object]:
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 10)
    request = pb.CreateChatCompletionRequest(
        params=pb.ChatCompletionParams(
            model="sim",
            messages=[pb.ChatMessage(role=pb.ROLE_USER, content=PROMPT)],
            max_tokens=max_tokens,
        )
    )
    metadata = (("authorization", f"Bearer {key}"),)
    start = time.monotonic()
    end = start + duration
    admitted_tokens = 0
    admitted = 0
    refused = 0
    errors: dict[str, int] = {}
    per_minute: dict[int, int] = {}

    async def loop(stub: pb_grpc.ChatServiceStub) -> None:
        nonlocal admitted_tokens, admitted, refused
        while time.monotonic() < end:
            try:
                reply = await stub.CreateChatCompletion(request, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused += 1
                else:
                    errors[error.code().name] = errors.get(error.code().name, 0) + 1
                await asyncio.sleep(0.005)
                continue
            done = time.monotonic()
            if done < end:
                admitted += 1
                admitted_tokens += reply.usage.total_tokens
                minute = int((done - start) // 60)
                per_minute[minute] = per_minute.get(minute, 0) + reply.usage.total_tokens

    stubs = [pb_grpc.ChatServiceStub(c) for c in channels]
    await asyncio.gather(*(loop(stubs[i % len(stubs)]) for i in range(streams)))
    for channel in channels:
        await channel.close()
    return {
        "admitted_requests": admitted,
        "admitted_tokens": admitted_tokens,
        "refused": refused,
        "errors": errors,
        "per_minute": per_minute,
        "elapsed_s": time.monotonic() - start,
    }


async def metered(address: str, admin_key: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await usage_pb2_grpc.UsageServiceStub(channel).GetUsage(
            usage_pb2.GetUsageRequest(tenant="bench", granularity=usage_pb2.GRANULARITY_HOUR),
            metadata=(("authorization", f"Bearer {admin_key}"),),
            timeout=10,
        )
    return sum(r.total_tokens for r in answer.records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=150.0, help="seconds of load")
    parser.add_argument("--tpm", type=int, default=60_000, help="the tenant's tokens per minute")
    parser.add_argument("--burst", type=int, default=10_000, help="the token bucket's capacity")
    parser.add_argument("--workers", type=int, default=4, help="gateway processes")
    parser.add_argument("--streams", type=int, default=32, help="concurrent client streams")
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="llmgw-limits-"))
    redis_port, sidecar_port, gateway_port = free_port(), free_port(), free_port()
    tenant_key, admin_key = keys.generate(), keys.generate()
    (work / "tenants.yaml").write_text(
        yaml.safe_dump(
            {
                "tenants": [
                    {
                        "name": "bench",
                        "limits": {
                            "requests_per_minute": 10_000_000,
                            "tokens_per_minute": args.tpm,
                            "tokens_burst": args.burst,
                            "max_concurrent": 10_000,
                        },
                        "keys": [{"id": tenant_key.key_id, "hash": tenant_key.key_hash}],
                    }
                ],
                "admin_keys": [{"id": admin_key.key_id, "hash": admin_key.key_hash}],
            }
        )
    )
    (work / "gateway.yaml").write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "sim",
                        "endpoints": [f"127.0.0.1:{sidecar_port}"],
                        "default_max_tokens": args.max_tokens,
                    }
                ]
            }
        )
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes: list[subprocess.Popen[bytes]] = []
    gateway_log = open(work / "gateway.log", "wb")  # noqa: SIM115
    try:
        processes.append(
            subprocess.Popen(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(work)],
                stdout=subprocess.DEVNULL,
            )
        )  # fmt: skip
        sim = json.dumps({"output_tokens": args.max_tokens, "max_concurrency": 1024})
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "backends", "--model", "sim",
                 "--listen", f"127.0.0.1:{sidecar_port}", "--sim-config", sim],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            )
        )  # fmt: skip
        wait_port(redis_port)
        wait_port(sidecar_port)
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(work / "gateway.yaml"),
             "--listen", f"127.0.0.1:{gateway_port}", "--workers", str(args.workers),
             "--tenants", str(work / "tenants.yaml"),
             "--redis-url", f"redis://127.0.0.1:{redis_port}/0", "--metrics-listen", ""],
            stdout=gateway_log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        processes.append(gateway)
        wait_listeners(gateway_port, args.workers)  # every worker bound before any client connects
        address = f"127.0.0.1:{gateway_port}"
        print(
            f"hammering tenant 'bench' (L = {args.tpm} tokens/min, burst {args.burst}) "
            f"through {args.workers} gateway processes for {args.duration:.0f}s...",
            flush=True,
        )
        result = asyncio.run(
            hammer(
                address,
                tenant_key.secret,
                args.max_tokens,
                args.streams,
                args.streams,
                args.duration,
            )
        )
        time.sleep(1.5)  # metering writes are asynchronous
        metered_tokens = asyncio.run(metered(address, admin_key.secret))
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
    finally:
        for p in reversed(processes):
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        gateway_log.close()
    log = (work / "gateway.log").read_text()
    latencies = [
        (int(n), float(p50), float(p99))
        for n, p50, p99 in re.findall(
            r"admission latency: (\d+) admissions, p50 ([\d.]+) ms, p99 ([\d.]+) ms", log
        )
    ]
    minutes = args.duration / 60
    allowance = args.tpm * minutes
    reservation = 3 + 4 + -(-len(PROMPT) // 4) + args.max_tokens
    upper = allowance + args.burst + args.workers * reservation
    admitted = int(result["admitted_tokens"])  # type: ignore[call-overload]
    figures = {
        **result,
        "duration_s": args.duration,
        "tpm": args.tpm,
        "burst": args.burst,
        "workers": args.workers,
        "allowance_L_times_T": allowance,
        "upper_bound": upper,
        "lower_bound_95pct": 0.95 * allowance,
        "admitted_over_allowance": admitted / allowance,
        "within_upper": admitted <= upper,
        "above_95pct": admitted >= 0.95 * allowance,
        "metered_tokens": metered_tokens,
        "admission_latency_per_process": latencies,
        "processes_that_admitted": len(latencies),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
