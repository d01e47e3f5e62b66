"""Benchmark one streaming load sent to a sidecar, to the gateway and to the REST shim.

``python -m bench.run_bench [--quick] [--markdown BENCH.md]``

For each sim latency setting it starts a fresh local stack (one sim sidecar,
the gateway, the shim) on free ports, then for each concurrency sends the
same streaming chat load (a) straight to the sidecar over gRPC, (b) to the
gateway over gRPC and (c) to the shim over HTTP SSE, each for a fixed
window after a warm-up. The load comes from separate client processes
(``bench.loadgen``). Server and client CPU time is read from /proc over the
same window.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from bench.loadgen import (
    DIRECT,
    GATEWAY,
    LITELLM,
    SHIM,
    UPSTREAM,
    Job,
    WorkerResult,
    worker_main,
)
from bench.procstat import tree_cpu_seconds
from bench.upstreams import HttpEngineModel, LiteLLMProxy, MockUpstream
from devstack.stack import ModelPlan, SimModel, Stack, StackPlan

MODEL = "bench"
TOKENS = 64
PROMPT = "benchmark the streaming path of the gateway with this prompt"
TARGET_LABELS = {
    UPSTREAM: "upstream HTTP",
    LITELLM: "LiteLLM HTTP",
    DIRECT: "sidecar gRPC",
    GATEWAY: "gateway gRPC",
    SHIM: "shim HTTP",
}
SERVERS = ("upstream", "litellm", "sidecar", "gateway", "shim")


@dataclass(frozen=True)
class Scenario:
    """A sim engine latency setting; each gets its own stack."""

    name: str
    ttft_ms: float
    itl_ms: float
    # "sim": the sidecar's simulator. "vllm": the sidecar's vllm engine (its HTTP/SSE
    # client) in front of bench.mock_openai, an OpenAI-compatible server at this pace.
    engine: str = "sim"

    @property
    def base(self) -> str:
        """The target the others are compared with: the nearest thing to the model."""
        return UPSTREAM if self.engine == "vllm" else DIRECT

    def targets(self, litellm: bool) -> tuple[str, ...]:
        """What is measured: the base first, then each hop added in front of it."""
        if self.engine == "vllm":
            return (UPSTREAM, *((LITELLM,) if litellm else ()), DIRECT, GATEWAY, SHIM)
        return (DIRECT, GATEWAY, SHIM)

    def sim_config(self) -> dict[str, float | int]:
        """Sim engine settings: 64 tokens a reply, and enough slots that it never queues."""
        return {
            "ttft_ms": self.ttft_ms,
            "itl_ms": self.itl_ms,
            "output_tokens": TOKENS,
            "max_concurrency": 1024,
        }


SCENARIOS = (
    Scenario("zero delay", 0, 0),
    Scenario("ttft 50ms, itl 10ms", 50, 10),
    Scenario("vllm engine, zero delay", 0, 0, "vllm"),
    Scenario("vllm engine, ttft 50ms, itl 10ms", 50, 10, "vllm"),
)


@dataclass
class RunResult:
    """Merged results of one (scenario, concurrency, target) run."""

    concurrency: int
    target: str
    window_s: float
    completed: int  # good requests that finished inside the window
    tokens: int  # output tokens that arrived inside the window
    ttfts: list[float]
    total_finished: int
    short: int
    errors: Counter[str]
    error_samples: list[str]
    cpu_s: dict[str, float]  # per server name, and "loadgen" for all clients together
    client_cpu_s: list[float]  # per client process
    cpu_window_s: float  # the interval the CPU times were actually sampled over
    ttft_p50: float = 0.0
    ttft_p99: float = 0.0
    added_p50: float | None = None
    added_p99: float | None = None
    ratio: float | None = None

    @property
    def rps(self) -> float:
        """Requests per second in the measured window."""
        return self.completed / self.window_s

    @property
    def tps(self) -> float:
        """Output tokens per second in the measured window."""
        return self.tokens / self.window_s

    def cpu_per_1k(self, name: str) -> float | None:
        """CPU seconds of one process tree per 1000 requests' worth of output tokens.

        Tokens, not completions: with long requests and few streams a window holds
        only a handful of completions, and their count jumps by whole requests.
        """
        if not self.tokens:
            return None
        return self.cpu_s[name] / self.tokens * TOKENS * 1000

    def path_cpu_per_1k(self) -> float | None:
        """CPU per 1000 requests of what this target adds in front of the model.

        Through the shim: shim + gateway + sidecar; through LiteLLM: LiteLLM;
        the upstream itself is never counted (it is the model's stand-in).
        """
        parts = {
            SHIM: ("shim", "gateway", "sidecar"),
            GATEWAY: ("gateway", "sidecar"),
            DIRECT: ("sidecar",),
            LITELLM: ("litellm",),
        }.get(self.target, ())
        if not self.tokens or not parts:
            return None
        return sum(self.cpu_s.get(n, 0.0) for n in parts) / self.tokens * TOKENS * 1000

    def utilisation(self, name: str) -> float:
        """Share of one core that a process tree used during the window."""
        return self.cpu_s[name] / self.cpu_window_s


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    at = q * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free now; all sockets stay open until all are picked."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class ClientPool:
    """Load generator processes, started once and reused for every run."""

    def __init__(self, size: int) -> None:
        # spawn, not fork: this process has already used gRPC (health checks).
        context = multiprocessing.get_context("spawn")
        self.workers: list[tuple[BaseProcess, Connection]] = []
        for _ in range(size):
            here, there = context.Pipe()
            process = context.Process(target=worker_main, args=(there,), daemon=True)
            process.start()
            self.workers.append((process, here))

    def close(self) -> None:
        """Ask every client to exit, then make sure it did."""
        for process, conn in self.workers:
            with contextlib.suppress(OSError):  # already gone
                conn.send(None)
            process.join(5)
            if process.is_alive():
                process.kill()


class LoadgenStuck(Exception):
    """A load generator process stopped answering; the pool cannot be trusted any more."""


def _receive(conn: Connection, timeout_s: float) -> object:
    if not conn.poll(timeout_s):
        raise LoadgenStuck(f"a load generator did not answer within {timeout_s:.0f}s")
    return conn.recv()


def run_one(
    pool: ClientPool,
    servers: dict[str, int],
    concurrency: int,
    target: str,
    address: str,
    warmup_s: float,
    duration_s: float,
) -> RunResult:
    """One target at one concurrency: spread the streams over the clients and measure."""
    active = pool.workers[: min(len(pool.workers), concurrency)]
    first = 0
    for i, (_, conn) in enumerate(active):
        share = concurrency // len(active) + (i < concurrency % len(active))
        job = Job(
            target, address, MODEL, PROMPT, TOKENS, share, first, concurrency, warmup_s, duration_s
        )
        conn.send(job)
        first += share
    results: list[WorkerResult] = []
    running: list[Connection] = []
    for _, conn in active:
        answer = _receive(conn, 30)
        if answer == "ready":
            running.append(conn)
        else:  # the client failed while connecting and sent its result instead
            assert isinstance(answer, WorkerResult)
            results.append(answer)
    clients = {f"client{i}": p.pid for i, (p, _) in enumerate(active) if p.pid is not None}
    roots = {**servers, **clients}
    # A common start a little ahead, so every client has the message before it is due.
    start_at = time.monotonic() + 0.05
    for conn in running:
        conn.send(start_at)
    window_start = start_at + warmup_s
    time.sleep(max(0.0, window_start - time.monotonic()))
    cpu_before, t_before = tree_cpu_seconds(roots), time.monotonic()
    time.sleep(max(0.0, window_start + duration_s - time.monotonic()))
    cpu_after, t_after = tree_cpu_seconds(roots), time.monotonic()
    for conn in running:
        answer = _receive(conn, 60)
        assert isinstance(answer, WorkerResult)
        results.append(answer)
    cpu = {name: cpu_after[name] - cpu_before[name] for name in roots}
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
    return RunResult(
        concurrency=concurrency,
        target=target,
        window_s=duration_s,
        completed=sum(r.completed for r in results),
        tokens=sum(r.window_tokens for r in results),
        ttfts=[t for r in results for t in r.ttfts],
        total_finished=sum(r.total_finished for r in results),
        short=sum(r.short for r in results),
        errors=errors,
        error_samples=[s for r in results for s in r.error_samples],
        cpu_s={
            **{name: cpu.get(name, 0.0) for name in SERVERS},
            **{name: cpu[name] for name in servers},
            "loadgen": sum(cpu[c] for c in clients),
        },
        client_cpu_s=[cpu[c] for c in clients],
        cpu_window_s=t_after - t_before,
    )


@dataclass
class ScenarioResult:
    """All runs of one scenario, with the numbers relative to the direct call filled in."""

    scenario: Scenario
    runs: list[RunResult]
    log_dir: Path
    aborted: str | None = None


def run_scenario(
    pool: ClientPool,
    scenario: Scenario,
    concurrencies: Sequence[int],
    warmup_s: float,
    duration_s: float,
    gateway_workers: int,
    shim_workers: int,
    stream_interval_ms: float = 0.0,
    max_hold_ms: float | None = None,
    litellm: str | None = None,
    http_client: str | None = None,
) -> ScenarioResult:
    """Start a stack for this latency setting, run every concurrency and target, stop it."""
    sidecar_port, grpc_port, rest_port, upstream_port, litellm_port = free_ports(5)
    sidecar_args: list[str] = []
    if max_hold_ms is not None:
        sidecar_args += ["--max-hold-ms", str(max_hold_ms)]
    if http_client is not None and scenario.engine == "vllm":
        sidecar_args += ["--engine-config", json.dumps({"http_client": http_client})]
    model: ModelPlan
    if scenario.engine == "vllm":
        model = HttpEngineModel(
            MODEL,
            f"{MODEL}-alias",
            sidecar_port,
            f"http://127.0.0.1:{upstream_port}",
            stream_interval_ms=stream_interval_ms,
            extra_args=tuple(sidecar_args),
        )
    else:
        model = SimModel(
            MODEL,
            f"{MODEL}-alias",
            sidecar_port,
            scenario.sim_config(),
            stream_interval_ms=stream_interval_ms,
        )
    plan = StackPlan(
        models=[model],
        grpc_port=grpc_port,
        rest_port=rest_port,
        gateway_workers=gateway_workers,
        shim_workers=shim_workers,
    )
    log_dir = Path(tempfile.mkdtemp(prefix="llmgw-bench-"))
    if max_hold_ms is not None:
        plan.resilience = {"streaming": {"max_hold_ms": max_hold_ms}}
    stack = Stack(plan, log_dir=log_dir)
    addresses = {
        UPSTREAM: f"{plan.host}:{upstream_port}",
        LITELLM: f"{plan.host}:{litellm_port}",
        DIRECT: f"{plan.host}:{sidecar_port}",
        GATEWAY: f"{plan.host}:{grpc_port}",
        SHIM: f"{plan.host}:{rest_port}",
    }
    result = ScenarioResult(scenario, [], log_dir)
    _progress(f"== {scenario.name}: starting stack (logs in {log_dir}, kept on failure)")
    upstream = proxy = None
    try:
        servers: dict[str, int] = {}
        if scenario.engine == "vllm":
            upstream = MockUpstream(
                upstream_port, MODEL, scenario.ttft_ms, scenario.itl_ms, log_dir / "upstream.log"
            )
            servers["upstream"] = upstream.start()
            if litellm:
                proxy = LiteLLMProxy(litellm, litellm_port, MODEL, upstream_port, log_dir)
                servers["litellm"] = proxy.start()
        stack.start()
        stack.wait_ready(timeout_s=60)
        if proxy is not None:
            proxy.wait_ready(timeout_s=120)
        pids = stack.pids()
        servers.update(sidecar=pids[f"sidecar-{MODEL}"], gateway=pids["gateway"], shim=pids["shim"])
        for concurrency in concurrencies:
            for target in scenario.targets(litellm is not None):
                run = run_one(
                    pool, servers, concurrency, target, addresses[target], warmup_s, duration_s
                )
                result.runs.append(run)
                _progress(
                    f"   c={concurrency:<4} {TARGET_LABELS[target]:<13} {run.rps:8.1f} req/s "
                    f"{run.tps:8.0f} tok/s  ttft p50 {run_ttft(run, 0.5):7.2f} ms  "
                    f"errors {sum(run.errors.values()) + run.short}"
                )
                dead = [name for name, p in stack.processes if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"{', '.join(dead)} exited during the run")
    except (RuntimeError, TimeoutError) as error:
        result.aborted = str(error)
        _progress(f"!! {scenario.name} aborted: {error}")
    finally:
        stack.stop()
        for part in (proxy, upstream):
            if part is not None:
                part.stop()
    if result.aborted is None:
        shutil.rmtree(log_dir, ignore_errors=True)  # kept only when something went wrong
    _relate_to_base(result.runs, scenario.base)
    return result


def run_ttft(run: RunResult, q: float) -> float:
    """A TTFT percentile of a run, in milliseconds."""
    return percentile(run.ttfts, q) * 1000


def _relate_to_base(runs: list[RunResult], base_target: str) -> None:
    direct = {r.concurrency: r for r in runs if r.target == base_target}
    for run in runs:
        run.ttft_p50 = run_ttft(run, 0.5)
        run.ttft_p99 = run_ttft(run, 0.99)
        base = direct.get(run.concurrency)
        if base is None or not base.ttfts or not run.ttfts:
            continue
        run.ratio = run.tps / base.tps if base.tps else None
        run.added_p50 = run.ttft_p50 - run_ttft(base, 0.5)
        run.added_p99 = run.ttft_p99 - run_ttft(base, 0.99)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _num(value: float | None, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


MAIN_HEADER = (
    "latency", "conc", "target", "req/s", "x direct", "tok/s",
    "TTFT p50 ms", "TTFT p99 ms", "added p50 ms", "added p99 ms",
    "upstream cpu-s/1k", "litellm cpu-s/1k",
    "sidecar cpu-s/1k", "gateway cpu-s/1k", "shim cpu-s/1k", "loadgen cpu-s/1k",
    "path cpu-s/1k", "n", "errors",
)  # fmt: skip
UTIL_HEADER = (
    "latency", "conc", "target", "upstream %", "litellm %", "sidecar %", "gateway %", "shim %",
    "loadgen % (all)", "busiest client %", "total %",
)  # fmt: skip


def main_rows(results: Sequence[ScenarioResult]) -> list[list[str]]:
    """Rows of the throughput, latency and CPU-per-request table."""
    rows = []
    for sr in results:
        for r in sr.runs:
            rows.append(
                [
                    sr.scenario.name, str(r.concurrency), TARGET_LABELS[r.target],
                    _num(r.rps), _num(r.ratio, 2), _num(r.tps, 0),
                    _num(r.ttft_p50, 2), _num(r.ttft_p99, 2),
                    _num(r.added_p50, 2, True), _num(r.added_p99, 2, True),
                    *(_num(r.cpu_per_1k(n), 2) for n in (*SERVERS, "loadgen")),
                    _num(r.path_cpu_per_1k(), 2),
                    str(r.completed), str(sum(r.errors.values()) + r.short),
                ]
            )  # fmt: skip
    return rows


def util_rows(results: Sequence[ScenarioResult]) -> list[list[str]]:
    """Rows of the table of core use (100 % = one core busy) during each window."""
    rows = []
    for sr in results:
        for r in sr.runs:
            busiest = max(r.client_cpu_s, default=0.0) / r.cpu_window_s
            total = sum(r.utilisation(n) for n in (*SERVERS, "loadgen"))
            rows.append(
                [
                    sr.scenario.name, str(r.concurrency), TARGET_LABELS[r.target],
                    *(_num(r.utilisation(n) * 100, 0) for n in (*SERVERS, "loadgen")),
                    _num(busiest * 100, 0), _num(total * 100, 0),
                ]
            )  # fmt: skip
    return rows


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to width; text left-aligned, numbers right-aligned."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table, numbers right-aligned."""
    align = ["---" if i < 3 else "---:" for i in range(len(header))]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (header, align, *rows))


LEGEND = (
    "req/s: requests completed inside the measured window, per second",
    "x direct: tok/s against the sidecar gRPC row of the same latency and concurrency",
    "tok/s: output tokens (stream deltas) that arrived inside the window, per second",
    "TTFT: from sending the request to the first content delta, over the requests "
    "completed in the window; added = this row's percentile minus the direct call's",
    f"cpu-s/1k: user+system CPU seconds of that process tree (children included) per 1000 "
    f"requests' worth of output ({TOKENS}000 tokens) in the window; loadgen = all clients; "
    "upstream = the mock OpenAI server behind the vllm engine (and LiteLLM)",
    "path cpu-s/1k: what the target adds in front of the model: shim+gateway+sidecar through "
    "the shim, gateway+sidecar through the gateway, LiteLLM through LiteLLM",
    "n: requests completed in the window (the TTFT sample size)",
    "errors: failed streams, streams without finished / end / [DONE], and streams with "
    f"other than {TOKENS} tokens, over warm-up, window and drain",
)


def _client_share(run: RunResult) -> float:
    """Share of a core used by the busiest client process of a run."""
    return max(run.client_cpu_s, default=0.0) / run.cpu_window_s


def findings(results: Sequence[ScenarioResult], clients: int) -> list[str]:
    """Notes on how to read the tables, computed from the numbers."""
    runs = [r for sr in results for r in sr.runs]
    if not runs:
        return ["no run completed"]
    notes = []
    busiest = max(runs, key=_client_share)
    saturated = [
        f"{TARGET_LABELS[r.target]} c={r.concurrency}" for r in runs if _client_share(r) > 0.9
    ]
    notes.append(
        f"Load generator: {clients} client process(es), each one uvloop loop (grpc.aio with "
        "protobuf decoded only for deltas; a bare asyncio HTTP/1.1 keep-alive client "
        "counting tokens in SSE deltas). "
        f"The busiest client used {_client_share(busiest):.0%} of a core "
        f"({TARGET_LABELS[busiest.target]} c={busiest.concurrency}); one near 100 % would be "
        "the bottleneck. "
        + (f"Over 90 % in: {', '.join(saturated)}." if saturated else "None went over 90 %.")
    )
    for sr in results:
        direct = [r for r in sr.runs if r.target == sr.scenario.base]
        if not direct:
            continue
        top = direct[-1]
        scaling = ", ".join(f"c={r.concurrency}: {r.tps:.0f}" for r in direct)
        per_request_s = (sr.scenario.ttft_ms + (TOKENS - 1) * sr.scenario.itl_ms) / 1000
        if per_request_s:
            ideal = top.concurrency * TOKENS / per_request_s
            limit = (
                f" (the latency model allows {ideal:.0f} at c={top.concurrency}: "
                f"{top.tps / ideal:.0%} reached)"
            )
        else:
            limit = ""
        client_cost = top.cpu_per_1k("loadgen")
        sidecar_cost = top.cpu_per_1k("sidecar")
        cost = (
            f"; per request the clients spent {client_cost / sidecar_cost:.1f}x the sidecar's CPU"
            if client_cost and sidecar_cost
            else ""
        )
        notes.append(
            f"{sr.scenario.name}: direct-to-sidecar tok/s by concurrency {scaling}{limit}. "
            f"At c={top.concurrency} the sidecar used {top.utilisation('sidecar'):.0%} of a core "
            f"and the clients {top.utilisation('loadgen'):.0%} in all{cost}."
        )
        shim = [r for r in sr.runs if r.target == SHIM and r.tokens]
        if shim:
            full = shim[-1]  # a shim run keeps all three servers busy
            costs = sorted(((full.cpu_per_1k(n) or 0.0, n) for n in SERVERS), reverse=True)
            ranking = " > ".join(f"{n} {c:.2f}" for c, n in costs)
            notes.append(
                f"{sr.scenario.name}, shim HTTP c={full.concurrency}: CPU seconds per 1000 "
                f"requests by hop: {ranking}."
            )
    nproc = len(os.sched_getaffinity(0))
    fullest = max(runs, key=lambda r: sum(r.utilisation(n) for n in (*SERVERS, "loadgen")))
    total = sum(fullest.utilisation(n) for n in (*SERVERS, "loadgen"))
    notes.append(
        f"All processes share {nproc} core(s); the fullest run "
        f"({TARGET_LABELS[fullest.target]} c={fullest.concurrency}) used {total:.0%} of "
        f"{nproc * 100} %. Near that, the processes compete for the same cores, so a "
        "throughput ratio measures the machine as much as the hop; CPU seconds per 1000 "
        "requests compare the hops more fairly. In the direct runs the gateway and shim are "
        "idle: their columns there show background work only. Few-sample percentiles "
        "(small n, e.g. c=1 with the latency model) are indicative only."
    )
    return notes


def error_lines(results: Sequence[ScenarioResult]) -> list[str]:
    """Every error, bad stream and aborted scenario, with sample messages."""
    lines = []
    for sr in results:
        if sr.aborted:
            lines.append(f"{sr.scenario.name}: ABORTED: {sr.aborted} (logs in {sr.log_dir})")
        for r in sr.runs:
            label = f"{sr.scenario.name} c={r.concurrency} {TARGET_LABELS[r.target]}"
            if r.errors:
                counts = ", ".join(f"{k} x{v}" for k, v in r.errors.most_common())
                lines.append(f"{label}: {counts}")
                lines.extend(f"    {s}" for s in r.error_samples)
            if r.short:
                lines.append(
                    f"{label}: {r.short} stream(s) finished with other than {TOKENS} tokens"
                )
    return lines


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render(
    results: Sequence[ScenarioResult], argv: Sequence[str], clients: int, markdown: bool
) -> str:
    """The whole report, as plain text or as Markdown."""
    nproc = len(os.sched_getaffinity(0))
    about = [
        ("Command", " ".join(["python -m bench.run_bench", *map(shlex.quote, argv)])),
        ("Date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("Machine", f"nproc {nproc} ({_cpu_model()}), Python {platform.python_version()}"),
        (
            "Setup",
            "engines: "
            + ", ".join(sorted({sr.scenario.engine for sr in results}))
            + " (vllm: the sidecar's vllm engine against bench.mock_openai); one sidecar, "
            f"gateway and shim with one worker each, {TOKENS} tokens a reply, "
            f"{clients} load generator process(es)",
        ),
    ]
    errors = error_lines(results) or ["none: every request ended with finished / end / [DONE]"]
    notes = findings(results, clients)
    main_title = (
        "Throughput, time to first token (added = minus the direct call's at the same "
        "concurrency) and CPU seconds per 1000 requests"
    )
    util_title = "Core use during each measured window (100 % = one core busy)"
    if markdown:
        return "\n".join(
            [
                "## Streaming benchmark",
                "",
                *(f"- {k}: `{v}`" if k == "Command" else f"- {k}: {v}" for k, v in about),
                "",
                f"### {main_title}",
                "",
                markdown_table(MAIN_HEADER, main_rows(results)),
                "",
                f"### {util_title}",
                "",
                markdown_table(UTIL_HEADER, util_rows(results)),
                "",
                "### Columns",
                "",
                *(f"- {line}" for line in LEGEND),
                "",
                "### Errors",
                "",
                *(f"- {line}" for line in errors),
                "",
                "### Notes",
                "",
                *(f"- {line}" for line in notes),
                "",
            ]
        )
    return "\n".join(
        [
            *(f"{k}: {v}" for k, v in about),
            "",
            main_title,
            plain_table(MAIN_HEADER, main_rows(results)),
            "",
            util_title,
            plain_table(UTIL_HEADER, util_rows(results)),
            "",
            "Columns:",
            *(f"  {line}" for line in LEGEND),
            "",
            "Errors:",
            *(f"  {line}" for line in errors),
            "",
            "Notes:",
            *(f"  - {line}" for line in notes),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: run every scenario, print the report, optionally write it as Markdown."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.run_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 s windows instead of 5 s")
    parser.add_argument("--duration", type=float, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each window")
    parser.add_argument("--concurrency", default="1,10,100", help="comma-separated list")
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--gateway-workers", type=int, default=1)
    parser.add_argument("--shim-workers", type=int, default=1)
    parser.add_argument(
        "--stream-interval-ms",
        type=float,
        default=0.0,
        help="the sidecar's opt-in stream interval (0: off, the default)",
    )
    parser.add_argument(
        "--max-hold-ms",
        type=float,
        help="sidecar's and gateway's bound on the adaptive hold (default theirs: 50; 0: off)",
    )
    parser.add_argument(
        "--engines",
        default="sim,vllm",
        help="scenarios to run: sim (the simulator), vllm (the vllm engine's HTTP client "
        "against bench.mock_openai), comma-separated",
    )
    parser.add_argument(
        "--latency",
        default="zero,realistic",
        help="zero (no delay), realistic (50 ms to the first token, 10 ms between), or both",
    )
    parser.add_argument(
        "--litellm",
        metavar="LITELLM",
        help="a litellm executable (its own virtualenv: make bench-litellm): adds a LiteLLM "
        "proxy in front of the same upstream to the vllm-engine scenarios",
    )
    parser.add_argument(
        "--vllm-http-client",
        choices=("lean", "httpx"),
        help="the vllm engine's streaming client (default: the engine's, lean)",
    )
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write Markdown here")
    args = parser.parse_args(argv)
    engines = set(args.engines.split(","))
    latencies = set(args.latency.split(","))
    scenarios = [
        s
        for s in SCENARIOS
        if s.engine in engines and ("zero" if s.ttft_ms == 0 else "realistic") in latencies
    ]
    duration = args.duration or (2.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.75 if args.quick else 1.0)
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    began = time.monotonic()
    pool = ClientPool(args.clients)
    results = []
    try:
        for scenario in scenarios:
            result = run_scenario(
                pool, scenario, concurrencies, warmup, duration,
                args.gateway_workers, args.shim_workers, args.stream_interval_ms,
                args.max_hold_ms, args.litellm, args.vllm_http_client,
            )  # fmt: skip
            results.append(result)
    finally:
        pool.close()
    _progress(f"done in {time.monotonic() - began:.0f}s")
    print(render(results, argv, args.clients, markdown=False))
    if args.markdown:
        args.markdown.write_text(render(results, argv, args.clients, markdown=True))
        _progress(f"Markdown written to {args.markdown}")
    if any(sr.aborted for sr in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
