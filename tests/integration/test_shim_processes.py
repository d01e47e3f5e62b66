"""`python -m rest_shim --workers N`: N processes accept on one socket bound by the parent,
each built from the settings object it is handed, and all stop on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import httpx

from tests.conftest import free_port


def spawned_workers(pid: int) -> list[int]:
    """Children of ``pid`` that are multiprocessing spawn workers."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


async def test_workers_serve_one_port_with_the_flags_settings_and_stop_on_sigterm() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rest_shim", "--port", str(port), "--workers", "2",
        "--metrics-listen", "", "--gateway", "127.0.0.1:1",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(400):
                try:
                    answer = await http.get(f"http://127.0.0.1:{port}/readyz")
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
                    continue
                # The gateway flag reached the workers: nothing listens on port 1.
                assert answer.status_code == 503
                assert answer.json() == {"status": "gateway unreachable"}
                break
            else:
                raise AssertionError("the shim never answered")
        assert len(spawned_workers(process.pid)) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()[-2000:]
