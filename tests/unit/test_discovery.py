"""Discovery helpers and the SIGHUP fan-out."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from common.sighup import on_sighup
from gateway.adapters.resolver import SystemResolver, is_ip, join_host_port, split_host_port


def test_host_port_parsing_and_joining_handles_ipv6() -> None:
    assert split_host_port("sidecar.svc:50061") == ("sidecar.svc", 50061)
    assert split_host_port("[::1]:50061") == ("::1", 50061)
    assert is_ip("10.0.0.7") and is_ip("::1") and not is_ip("sidecar-small")
    assert join_host_port("::1", 5) == "[::1]:5" and join_host_port("10.0.0.7", 5) == "10.0.0.7:5"


async def test_the_system_resolver_answers_addresses_and_names_failures() -> None:
    assert await SystemResolver("ipv4").resolve("127.0.0.1") == ["127.0.0.1"]
    with pytest.raises(OSError):
        await SystemResolver().resolve("no-such-host.invalid")


async def test_sighup_reaches_every_subscriber_until_it_unsubscribes() -> None:
    calls: list[str] = []
    first = on_sighup(lambda: calls.append("tenants"))
    second = on_sighup(lambda: calls.append("routes"))
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(200):
        if len(calls) == 2:
            break
        await asyncio.sleep(0.01)
    assert sorted(calls) == ["routes", "tenants"]
    first()
    second()
    # With no subscriber left the handler is gone: a new subscription installs it again.
    third = on_sighup(lambda: calls.append("again"))
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(200):
        if "again" in calls:
            break
        await asyncio.sleep(0.01)
    third()
    assert calls.count("again") == 1 and len(calls) == 3
