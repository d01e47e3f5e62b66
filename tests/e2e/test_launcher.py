"""``make run-vllm``'s launcher: every real model served, Ctrl-C stops every process.

Runs before the session's shared stack starts (it needs no ``e2e`` fixture), on
its own free ports.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import openai
import pytest

from tests.conftest import free_port
from tests.e2e.probe import GEMMA, MINILM, SMOLLM


@pytest.mark.timeout(900)
def test_run_vllm_serves_every_model_and_ctrl_c_stops_everything(installed: None) -> None:
    rest, grpc_port, *ports = (free_port() for _ in range(8))
    sidecars, vllms = ports[:3], ports[3:]
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.vllm", "--rest-port", str(rest),
         "--grpc-port", str(grpc_port), "--sidecar-ports", ",".join(map(str, sidecars)),
         "--vllm-ports", ",".join(map(str, vllms))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    banner: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            banner.append(line)
            if line.startswith("Logs:"):
                break
        text = "".join(banner)
        assert "waiting for" in text or "ready: vllm" in text  # progress was shown
        assert "llmgw on vLLM is running" in text, text
        assert "OpenAI(base_url=" in text and "-plaintext" in text

        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{rest}/v1", api_key="unused", max_retries=0, timeout=60
        )
        assert {m.id for m in client.models.list().data} == {SMOLLM, GEMMA, MINILM}
        vectors = client.embeddings.create(model="minilm", input=["hello", "world"]).data
        assert [len(v.embedding) for v in vectors] == [384, 384]
        for model in ("smollm2", "gemma3"):
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Say hello"}], max_tokens=4
            )
            assert reply.choices[0].message.content
    finally:
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out[-3000:]
    assert "stopping" in out
    assert time.monotonic() - started < 60
    # Every part is gone, vLLM's engine processes included: nothing listens any more.
    for port in (rest, grpc_port, *sidecars, *vllms):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
