"""Through the shim vs straight to vLLM: same streamed requests, one run.

Needs a running ``make run-vllm`` stack (or any shim + vLLM pair):

    python -m bench.vllm_bench [--rest http://127.0.0.1:8080] [--vllm http://127.0.0.1:8101]
        [--model smollm2-135m-instruct] [--concurrency 1,10,100] [--markdown FILE]

For each concurrency, each target gets the same number of streamed chat
completions with the same prompts (``temperature`` 0, ``max_tokens`` fixed),
targets alternating. Per request: time to first token (first content chunk),
gaps between content chunks (ITL), and the completion tokens of the usage
chunk. Output tokens/s is all completion tokens over the wall time of the
level. Everything runs on the machine it is started on, load generator
included.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

import httpx
import orjson

PROMPTS = (
    "Write a long story about a dragon who learns to fly.",
    "Explain in detail how a steam engine works.",
    "Describe a walk through a busy market in a big city.",
    "Write a letter to a friend about your summer holidays.",
)


@dataclass
class Sample:
    """What one streamed request saw."""

    ttft: float
    gaps: list[float]
    tokens: int


@dataclass
class Level:
    """All requests of one target at one concurrency."""

    target: str
    concurrency: int
    wall_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# Any well-formed key: a shim refuses keyless calls unless told not to (vLLM ignores it).
HEADERS = {"content-type": "application/json", "authorization": "Bearer bench"}


async def one_request(client: httpx.AsyncClient, url: str, body: bytes) -> Sample:
    """Stream one completion; time its chunks."""
    started = time.perf_counter()
    first = last = 0.0
    gaps: list[float] = []
    tokens = 0
    async with client.stream("POST", url, content=body, headers=HEADERS) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = orjson.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"error event: {chunk['error']}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            choices = chunk.get("choices") or ()
            if choices and choices[0].get("delta", {}).get("content"):
                now = time.perf_counter()
                if first == 0.0:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
    if first == 0.0:
        raise RuntimeError("no content")
    return Sample(first - started, gaps, tokens)


async def run_level(
    base_url: str, target: str, model: str, concurrency: int, requests: int, max_tokens: int
) -> Level:
    """``requests`` streams, ``concurrency`` at a time, each on a pooled keep-alive connection."""
    level = Level(target, concurrency)
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for i in range(requests):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        queue.put_nowait(orjson.dumps(body))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                try:
                    level.samples.append(await one_request(client, "/v1/chat/completions", body))
                except Exception as error:  # count it, keep the level going
                    level.errors.append(repr(error)[:200])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        level.wall_s = time.perf_counter() - started
    return level


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), in milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank] * 1000


def row(level: Level) -> str:
    """One markdown table row."""
    head = f"| {level.concurrency} | {level.target} | {len(level.samples)} | {len(level.errors)} |"
    if not level.samples:
        return head + " | | | | | |"
    ttfts = [s.ttft for s in level.samples]
    gaps = [g for s in level.samples for g in s.gaps]
    tokens = sum(s.tokens for s in level.samples)
    figures = (
        f"{pct(ttfts, 50):.0f}",
        f"{pct(ttfts, 99):.0f}",
        f"{pct(gaps, 50):.1f}",
        f"{pct(gaps, 99):.1f}",
        f"{tokens / level.wall_s:.1f}",
        f"{tokens / len(level.samples):.1f}",
    )
    return head + " " + " | ".join(figures) + " |"


HEADER = (
    "| conc | target | requests | errors | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
    "| output tok/s | tokens/request |\n"
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


async def main_async(args: argparse.Namespace) -> str:
    """Run every level, both targets, and return the markdown table."""
    targets = {"vLLM direct": args.vllm, "shim → gateway → sidecar → vLLM": args.rest}
    # One short request per target first: nothing measured pays for a cold start.
    for url in targets.values():
        await run_level(url, "warm-up", args.model, 2, 4, 8)
    lines = [HEADER]
    for concurrency in args.concurrency:
        requests = max(concurrency * args.rounds, args.min_requests)
        for target, url in targets.items():
            level = await run_level(url, target, args.model, concurrency, requests, args.max_tokens)
            lines.append(row(level))
            print(lines[-1], flush=True)
            for error in level.errors[:3]:
                print(f"  error: {error}", flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m bench.vllm_bench``."""
    parser = argparse.ArgumentParser(prog="python -m bench.vllm_bench", description=__doc__)
    parser.add_argument("--rest", default="http://127.0.0.1:8080", help="the shim")
    parser.add_argument("--vllm", default="http://127.0.0.1:8101", help="vLLM's own server")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 10, 100]
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="requests per stream slot")
    parser.add_argument("--min-requests", type=int, default=10)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    print(HEADER, flush=True)
    table = asyncio.run(main_async(args))
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(table + "\n")


if __name__ == "__main__":
    main()
