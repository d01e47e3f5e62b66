"""The README's run command: the whole stack as real processes on free ports."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow


# `python -m devstack` started as when `make run &` runs from a script: a background
# job inherits SIGINT ignored, and Ctrl-C (SIGINT) must stop it all the same. Set in
# the child's own Python, not with preexec_fn: forking this process (grpc threads
# running) to run Python before exec is not safe, and grpc's fork handlers said so.
_DEVSTACK_WITH_SIGINT_IGNORED = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "sys.argv[0] = 'devstack'; runpy.run_module('devstack', run_name='__main__', alter_sys=True)"
)


def test_run_command_serves_both_models_and_stops_cleanly() -> None:
    rest, grpc_port, small, large, embed = (free_port() for _ in range(5))
    metrics = [free_port() for _ in range(5)]  # gateway, shim, small, large, embed
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _DEVSTACK_WITH_SIGINT_IGNORED,
            "--rest-port",
            str(rest),
            "--grpc-port",
            str(grpc_port),
            "--sidecar-ports",
            f"{small},{large}",
            "--embedding-port",
            str(embed),
            "--metrics-ports",
            ",".join(map(str, metrics)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    banner = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        for line in process.stdout:
            banner.append(line)
            if line.startswith("Logs:") or time.monotonic() > deadline:
                break
        text = "".join(banner)
        assert "llmgw is running" in text, text
        assert "grpcurl -plaintext" in text and "OpenAI(base_url=" in text
        # The demo key is printed, marked demo only, and is the one the examples use.
        found = re.search(r"DEMO key \(demo only.*\): (llmgw_[0-9a-f]{12}_\S+)", text)
        assert found, text
        demo_key = found.group(1)
        assert f'api_key="{demo_key}"' in text and f"Bearer {demo_key}" in text

        anonymous = openai.OpenAI(
            base_url=f"http://127.0.0.1:{rest}/v1", api_key="not-a-key", max_retries=0
        )
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list()
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{rest}/v1", api_key=demo_key, max_retries=0
        )
        assert {m.id for m in client.models.list().data} == {
            "sim-small-1b",
            "sim-large-70b",
            "sim-embed",
        }
        assert client.models.retrieve("embed").id == "sim-embed"
        vectors = client.embeddings.create(model="embed", input=["hello", "world"]).data
        assert [len(v.embedding) for v in vectors] == [384, 384]
        done = client.completions.create(model="small", prompt="once upon a time", max_tokens=3)
        assert len(done.choices[0].text.split()) == 3
        for model in ("sim-small-1b", "large"):
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=4
            )
            assert reply.choices[0].message.content
            assert reply.model == ("sim-large-70b" if model == "large" else model)  # no fallback
            stream = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "hello there"}],
                max_tokens=4,
                stream=True,
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert len(text.split()) == 4
        # Each process serves /metrics on its own port, never on the REST port.
        scraped = {port: httpx.get(f"http://127.0.0.1:{port}/metrics").text for port in metrics}
        assert "llmgw_gateway_requests_total{" in scraped[metrics[0]]
        assert "llmgw_gateway_stream_hold_seconds " in scraped[metrics[0]]
        assert (
            'llmgw_shim_requests_total{route="/v1/chat/completions",status="200"}'
            in scraped[metrics[1]]
        )
        for sidecar in metrics[2:]:
            assert "llmgw_sidecar_requests_total{" in scraped[sidecar]
            assert "llmgw_sidecar_engine_capacity{" in scraped[sidecar]
            assert "llmgw_sidecar_prefix_cache_queries_total{" in scraped[sidecar]
            assert "llmgw_sidecar_stream_hold_seconds " in scraped[sidecar]
        assert httpx.get(f"http://127.0.0.1:{rest}/metrics").status_code == 404
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.terminate()  # SIGTERM: its parts stop too, so none outlives the test
            out, _ = process.communicate(timeout=20)
            pytest.fail(f"Ctrl-C (SIGINT) did not stop `make run` within 20 s:\n{out}")
    assert process.returncode == 0, out
    assert "stopping" in out
    # Every child is gone: nothing listens on the ports any more.
    for port in (rest, grpc_port, small, large, embed, *metrics):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
