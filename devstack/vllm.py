"""Run the gateway on real vLLM models: ``python -m devstack.vllm`` (``make run-vllm``).

Three vLLM OpenAI servers (SmolLM2-135M-Instruct and Gemma 3 270M, and the
embedding model all-MiniLM-L6-v2; CPU), one sidecar each on the vLLM engine,
the gateway and the REST shim. The vLLM
virtualenv and the model folders come from ``make vllm models``
(scripts/install_vllm.sh, scripts/build_models.py). Ctrl-C stops everything.
"""

# ruff: noqa: E501 - the banner's shell commands are long lines on purpose (copy-paste)
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devstack.stack import ProcessSpec, Stack, StackPlan, stop_on_signals, wait_models_answer

ROOT = Path(__file__).resolve().parent.parent
# Everything built for vLLM lives here: the repository's .cache/ unless
# LLMGW_CACHE_DIR says otherwise (CI points it outside its fresh clone, so
# that the venv, the models and the compile cache survive between runs).
CACHE = Path(os.environ.get("LLMGW_CACHE_DIR") or ROOT / ".cache")
DEFAULT_VENV = CACHE / "vllm-venv"
DEFAULT_MODELS = CACHE / "models"
# vLLM's torch.compile artefacts: kept between runs, they cut a restart's
# warm-up by minutes.
DEFAULT_COMPILE_CACHE = CACHE / "vllm-compile"

# (folder and served name, alias, fallbacks, kind) of the models scripts/build_models.py
# builds. Gemma's requests go to SmolLM2 when Gemma's server is down.
MODELS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("smollm2-135m-instruct", "smollm2", (), "chat"),
    ("gemma3-270m", "gemma3", ("smollm2-135m-instruct",), "chat"),
    ("all-minilm-l6-v2", "minilm", (), "embedding"),
)
# How vLLM serves an embedding model: its pooling runner (mean pooling and
# normalisation come from the folder's sentence-transformers files), at the
# model's own 256-token limit, with no tool-call parser (it generates nothing).
EMBEDDING_ARGS = ("--runner", "pooling")
EMBEDDING_MAX_MODEL_LEN = 256
# A CPU is slow: the gateway's defaults (30 s to the first token) suit GPUs;
# 100 streams queued on one core of a 2-core machine can wait longer than that.
RESILIENCE = {"ttft_timeout_s": 180.0, "idle_timeout_s": 120.0, "queue_timeout_s": 60.0}


@dataclass(frozen=True)
class VllmModel:
    """A model served by a vLLM OpenAI server with a vLLM-engine sidecar in front."""

    name: str
    alias: str
    port: int  # the sidecar's gRPC port
    vllm_port: int
    model_dir: Path
    python: str  # the vLLM virtualenv's interpreter
    compile_cache: Path
    cpu: int | None = None  # core for vLLM's compute threads; None: vLLM decides
    max_model_len: int = 2048
    max_num_seqs: int = 128
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE takes whole GiB
    default_max_tokens: int | None = None  # None: up to the model's limit
    max_output_tokens: int = 1024
    fallbacks: tuple[str, ...] = ()
    # vLLM 0.32 refuses any tool_choice but "none" without a tool-call parser
    # ("tool_choice=function ... requires --tool-call-parser to be set").
    # Hermes reads the ChatML <tool_call>{"name": ..., "arguments": ...}</tool_call>
    # convention; a named or "required" choice is constrained to that envelope by
    # guided decoding, so even a model never trained for tools answers with a call.
    tool_call_parser: str | None = "hermes"
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    kind: str = "chat"

    def processes(self, host: str) -> list[ProcessSpec]:
        """The vLLM server, then its sidecar (which waits for it, NOT_SERVING meanwhile)."""
        env = {
            "HF_HUB_OFFLINE": "1",  # never reach for a hub: the folder has everything
            "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
            "VLLM_CACHE_ROOT": str(self.compile_cache),
            # vllm-cpu 0.32 cannot load its own AOT-compiled artefacts ("'function'
            # object has no attribute 'finalize_loading'") and recompiles on every
            # start; the older inductor cache loads fine: a warm start here took
            # 41 s instead of 104 s.
            "VLLM_USE_AOT_COMPILE": "0",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        tools = (
            ("--tool-call-parser", self.tool_call_parser, "--enable-auto-tool-choice")
            if self.tool_call_parser
            else ()
        )
        if self.cpu is not None:
            # Two servers left to "auto" both bind to core 0 and halve each other.
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(self.cpu)
        vllm = ProcessSpec(
            f"vllm-{self.name}",
            ["-m", "vllm.entrypoints.openai.api_server",
             "--model", str(self.model_dir), "--served-model-name", self.name,
             "--host", host, "--port", str(self.vllm_port),
             "--max-model-len", str(self.max_model_len),
             "--max-num-seqs", str(self.max_num_seqs),
             "--dtype", "bfloat16", "--disable-uvicorn-access-log", *tools, *self.extra_args],
            python=self.python,
            env=env,
        )  # fmt: skip
        sidecar = ProcessSpec(
            f"sidecar-{self.name}",
            ["-m", "backends", "--engine", "vllm", "--model", self.name,
             "--vllm-url", f"http://{host}:{self.vllm_port}",
             "--vllm-capacity", str(self.max_num_seqs), "--listen", f"{host}:{self.port}"],
        )  # fmt: skip
        return [vllm, sidecar]

    def ready_targets(self, host: str) -> dict[str, str]:
        """vLLM's /health, then the sidecar (SERVING only once vLLM is)."""
        return {
            f"vllm {self.name}": f"http://{host}:{self.vllm_port}/health",
            f"sidecar {self.name}": f"{host}:{self.port}",
        }


@dataclass
class VllmStackPlan(StackPlan):
    """A StackPlan whose routing file adds fallbacks and CPU-sized timeouts."""

    def gateway_config(self) -> dict[str, object]:
        """The routing file: every model, its fallbacks, and RESILIENCE."""
        config = super().gateway_config()
        entries = config["models"]
        assert isinstance(entries, list)
        for entry, model in zip(entries, self.models, strict=True):
            if isinstance(model, VllmModel) and model.fallbacks:
                entry["fallbacks"] = list(model.fallbacks)
        config["resilience"] = RESILIENCE
        return config


def _for_kind(model: VllmModel) -> VllmModel:
    """An embedding model runs on vLLM's pooling runner, without a tool-call parser."""
    if model.kind != "embedding":
        return model
    return dataclasses.replace(
        model,
        extra_args=(*EMBEDDING_ARGS, *model.extra_args),
        max_model_len=EMBEDDING_MAX_MODEL_LEN,
        tool_call_parser=None,
    )


def vllm_plan(
    rest_port: int = 8080,
    grpc_port: int = 50051,
    sidecar_ports: tuple[int, ...] = (50061, 50062, 50063),
    vllm_ports: tuple[int, ...] = (8101, 8102, 8103),
    venv: Path = DEFAULT_VENV,
    models_dir: Path = DEFAULT_MODELS,
    compile_cache: Path = DEFAULT_COMPILE_CACHE,
    only: Sequence[str] | None = None,
) -> StackPlan:
    """Every model (or those named in ``only``), one port of each kind per model,
    each vLLM bound to a core of its own where there are enough (the two chat
    models apart; the small embedding model shares)."""
    chosen = [m for m in MODELS if only is None or m[0] in only]
    if len(sidecar_ports) != len(chosen) or len(vllm_ports) != len(chosen):
        raise ValueError(f"give {len(chosen)} sidecar ports and {len(chosen)} vLLM ports")
    cores = os.cpu_count() or 1
    models = [
        _for_kind(
            VllmModel(
                name=name,
                alias=alias,
                port=sidecar_ports[i],
                vllm_port=vllm_ports[i],
                model_dir=models_dir / name,
                python=str(venv / "bin" / "python"),
                compile_cache=compile_cache,
                cpu=i % cores if cores > 1 else None,
                fallbacks=fallbacks,
                kind=kind,
            )
        )
        for i, (name, alias, fallbacks, kind) in enumerate(chosen)
    ]
    return VllmStackPlan(
        models=models,
        grpc_port=grpc_port,
        rest_port=rest_port,
        # No tenant file on this stack, so no key to require (loopback only).
        extra_env={"LLMGW_SHIM_REQUIRE_API_KEY": "false"},
    )


def missing_parts(plan: StackPlan) -> list[str]:
    """What ``make vllm models`` has not built yet (empty when all is there)."""
    missing = []
    for m in plan.models:
        assert isinstance(m, VllmModel)
        if not Path(m.python).exists():
            missing.append(f"vLLM virtualenv ({m.python}): run `make vllm`")
        if not (m.model_dir / "llmgw-model.json").exists():
            missing.append(f"model folder {m.model_dir}: run `make models`")
    return sorted(set(missing))


def usage_text(plan: StackPlan, log_dir: Path) -> str:
    """How to call the running stack (no API key: this stack has no tenant file)."""
    rest = f"http://{plan.host}:{plan.rest_port}"
    grpc_addr = f"{plan.host}:{plan.grpc_port}"
    names = ", ".join(f"{m.name} (alias {m.alias})" for m in plan.models)
    model = plan.models[0].name
    grpcurl = Path(sys.executable).parent / "grpcurl"
    return f"""
llmgw on vLLM is running: REST {rest}  gRPC {grpc_addr}
models: {names}; gemma3-270m falls back to smollm2-135m-instruct when its server is down;
all-minilm-l6-v2 serves /v1/embeddings

curl:
  curl {rest}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "{model}", "max_tokens": 64, "messages": [{{"role": "user", "content": "Say hello"}}]}}'
  curl -N {rest}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "gemma3", "stream": true, "stream_options": {{"include_usage": true}}, "max_tokens": 64, "messages": [{{"role": "user", "content": "Say hello"}}]}}'

OpenAI SDK (Python):
  from openai import OpenAI
  client = OpenAI(base_url="{rest}/v1", api_key="unused")
  print(client.chat.completions.create(model="{model}", max_tokens=64,
        messages=[{{"role": "user", "content": "Say hello"}}]).choices[0].message.content)
  print(client.completions.create(model="{model}", prompt="Once upon a time", max_tokens=32).choices[0].text)
  print(client.embeddings.create(model="minilm", input=["hello", "world"]).data[0].embedding[:4])

grpcurl:
  {grpcurl if grpcurl.exists() else "grpcurl"} -plaintext -d '{{"params": {{"model": "{model}", "max_tokens": 64, "messages": [{{"role": "ROLE_USER", "content": "Say hello"}}]}}}}' \\
    {grpc_addr} llmgw.v1.ChatService/StreamChatCompletion

vLLM itself: {", ".join(f"http://{plan.host}:{m.vllm_port} ({m.name})" for m in plan.models if isinstance(m, VllmModel))}
Logs: {log_dir}   Ctrl-C stops everything.
"""


def _ports(text: str) -> tuple[int, ...]:
    ports = tuple(int(p) for p in text.split(","))
    if len(ports) != len(MODELS):
        raise argparse.ArgumentTypeError(f"give {len(MODELS)} comma-separated ports")
    return ports


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``make run-vllm``."""
    parser = argparse.ArgumentParser(prog="python -m devstack.vllm", description=__doc__)
    parser.add_argument("--rest-port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=50051)
    parser.add_argument(
        "--sidecar-ports", type=_ports, default=(50061, 50062, 50063), help="one per model"
    )
    parser.add_argument(
        "--vllm-ports", type=_ports, default=(8101, 8102, 8103), help="one per model"
    )
    parser.add_argument("--vllm-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS)
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds to wait for everything to be ready"
    )
    args = parser.parse_args(argv)
    plan = vllm_plan(
        args.rest_port, args.grpc_port, args.sidecar_ports, args.vllm_ports,
        args.vllm_venv, args.models_dir,
    )  # fmt: skip
    missing = missing_parts(plan)
    if missing:
        sys.exit("cannot start, missing:\n  " + "\n  ".join(missing))
    stack = Stack(plan)
    stop_on_signals()
    print(
        f"starting llmgw on vLLM (CPU): {', '.join(m.name for m in plan.models)}; "
        "the first start compiles for a few minutes, later ones reuse the cache...",
        flush=True,
    )
    started = time.monotonic()
    try:
        stack.start()
        stack.wait_ready(timeout_s=args.timeout, progress=True, still_waiting_every_s=15)
        wait_models_answer(plan, timeout_s=120, progress=True)
        print(f"ready in {time.monotonic() - started:.0f}s", flush=True)
        print(usage_text(plan, stack.log_dir), flush=True)
        while True:
            time.sleep(1)
            stack._check_alive()
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    except (RuntimeError, TimeoutError) as error:
        print(f"\nerror: {error}\nlogs: {stack.log_dir}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
