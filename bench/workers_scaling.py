"""Do gateway and shim workers share the load? ``python -m bench.workers_scaling``.

One stack with ``--workers 2`` for the gateway and for the shim (the
gateway's workers each also on an address of their own, the shim balancing
calls over them with gRPC round_robin: see devstack.stack), one zero-delay
sim sidecar, and the benchmark's load generator sending streamed chat
completions to the shim. Reported: CPU seconds each worker process used in
the measured window, and whether the two of each kind are within 10 % of
each other (the target of issue 12).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

from bench.loadgen import SHIM
from bench.run_bench import MODEL, ClientPool, Scenario, free_ports, run_one
from devstack.stack import SimModel, Stack, StackPlan


def _children(pid: int) -> list[int]:
    """Worker processes of ``pid`` (multiprocessing spawn children, not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
        if parent == pid and b"resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def main(argv: list[str] | None = None) -> None:
    """Run the load once and print each worker's share."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.workers_scaling", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    scenario = Scenario("workers", args.ttft_ms, args.itl_ms)
    sidecar_port, grpc_port, rest_port = free_ports(3)
    plan = StackPlan(
        models=[SimModel(MODEL, f"{MODEL}-alias", sidecar_port, scenario.sim_config())],
        grpc_port=grpc_port,
        rest_port=rest_port,
        gateway_workers=args.workers,
        shim_workers=args.workers,
    )
    stack = Stack(plan, log_dir=Path(tempfile.mkdtemp(prefix="llmgw-workers-")))
    pool = ClientPool(2)
    try:
        stack.start()
        stack.wait_ready(timeout_s=90)
        pids = stack.pids()
        gateway = [pids["gateway"], *_children(pids["gateway"])]  # the parent serves too
        shim = _children(pids["shim"])  # the parent only supervises
        servers = {"sidecar": pids[f"sidecar-{MODEL}"]}
        servers.update({f"gateway {i}": pid for i, pid in enumerate(gateway)})
        servers.update({f"shim {i}": pid for i, pid in enumerate(shim)})
        address = f"{plan.host}:{rest_port}"
        run = run_one(pool, servers, args.concurrency, SHIM, address, args.warmup, args.duration)
    finally:
        pool.close()
        stack.stop()
    # A gateway parent's tree holds its workers: keep its own share only.
    own = dict(run.cpu_s)
    own["gateway 0"] -= sum(own[f"gateway {i}"] for i in range(1, len(gateway)))
    window = run.cpu_window_s
    errors = sum(run.errors.values()) + run.short
    print(f"Command: python -m bench.workers_scaling {' '.join(argv)}")
    print(f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}")
    print(
        f"Load: {args.concurrency} streams through the shim, sim ttft {args.ttft_ms} ms / "
        f"itl {args.itl_ms} ms; {run.rps:.1f} req/s, {errors} errors; {window:.1f} s window"
    )
    print()
    print("| process | CPU s in window | % of a core | share of its kind |")
    print("| --- | ---: | ---: | ---: |")
    verdicts = []
    for kind, count in (("gateway", len(gateway)), ("shim", len(shim))):
        names = [f"{kind} {i}" for i in range(count)]
        total = sum(own[n] for n in names) or 1.0
        for n in names:
            print(f"| {n} worker | {own[n]:.2f} | {own[n] / window:.0%} | {own[n] / total:.0%} |")
        busy = [own[n] for n in names]
        spread = (max(busy) - min(busy)) / max(busy) if max(busy) else 1.0
        verdicts.append(
            f"{kind}: busiest and least busy worker {spread:.0%} apart "
            f"({'within' if spread <= 0.10 else 'NOT within'} 10 %)"
        )
    print(f"| sidecar | {own['sidecar']:.2f} | {own['sidecar'] / window:.0%} | |")
    print()
    for verdict in verdicts:
        print(verdict)


if __name__ == "__main__":
    main()
