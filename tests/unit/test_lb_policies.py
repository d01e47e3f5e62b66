"""Load-balancing policies, panic mode and pool membership: pure logic, no I/O."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from gateway.config import GatewayConfig
from gateway.domain.chat import ChatRequest, Message, Role
from gateway.domain.routing_key import request_key
from gateway.routing.breaker import BreakerPolicy
from gateway.routing.endpoint import LoadSnapshot
from gateway.routing.policies import PolicySettings, RequestKey, make_policy
from gateway.routing.pool import EndpointPool, PoolUnavailable


def pool(
    n: int = 4, policy: str = "least_load", max_inflight: int = 1000, **kw: float
) -> EndpointPool:
    return EndpointPool(
        [f"10.0.0.{i}:50061" for i in range(n)],
        max_inflight=max_inflight,
        breaker_policy=BreakerPolicy(consecutive_failures=1),
        policy=make_policy(policy, PolicySettings(rng=random.Random(0))),
        **kw,  # type: ignore[arg-type]
    )


def session(name: str) -> RequestKey:
    return RequestKey(session=name)


async def test_round_robin_takes_each_endpoint_in_turn() -> None:
    p = pool(3, "round_robin")
    picks = []
    for _ in range(6):
        e = await p.acquire(timeout_s=0)
        picks.append(e.address)
        p.release(e)
    assert picks[:3] == picks[3:] and len(set(picks[:3])) == 3


async def test_affinity_keeps_a_key_on_one_replica_and_spreads_keys() -> None:
    p = pool(4, "prefix_affinity")
    homes: dict[str, str] = {}
    for i in range(200):
        key = session(f"conversation-{i}")
        e = await p.acquire(key=key, timeout_s=0)
        homes[key.session] = e.address
        p.release(e)
    for name, home in homes.items():  # every later turn goes home again
        e = await p.acquire(key=session(name), timeout_s=0)
        assert e.address == home
        p.release(e)
    spread = Counter(homes.values())
    assert len(spread) == 4 and min(spread.values()) >= 25  # 50 each on average


async def test_every_gateway_process_ranks_replicas_the_same_way() -> None:
    a = pool(5, "prefix_affinity")
    b = EndpointPool(
        list(reversed([e.address for e in a.endpoints])),
        policy=make_policy("prefix_affinity"),
    )
    for i in range(50):
        key = session(f"s{i}")
        ea, eb = await a.acquire(key=key, timeout_s=0), await b.acquire(key=key, timeout_s=0)
        assert ea.address == eb.address
        a.release(ea)
        b.release(eb)


async def test_removing_a_replica_moves_only_its_own_keys() -> None:
    p = pool(4, "prefix_affinity")
    before = {}
    for i in range(200):
        e = await p.acquire(key=session(f"k{i}"), timeout_s=0)
        before[f"k{i}"] = e.address
        p.release(e)
    gone = p.endpoints[1].address
    p.set_addresses([e.address for e in p.endpoints if e.address != gone])
    for name, home in before.items():
        e = await p.acquire(key=session(name), timeout_s=0)
        if home != gone:
            assert e.address == home
        else:
            assert e.address != gone
        p.release(e)


async def test_affinity_never_loads_one_replica_past_the_bound() -> None:
    p = pool(4, "prefix_affinity")
    key = session("one hot conversation")
    held = [await p.acquire(key=key, timeout_s=0) for _ in range(40)]
    loads = sorted(e.outstanding for e in p.endpoints)
    bound = math.ceil(1.25 * 40 / 4)
    assert max(loads) <= bound and sum(loads) == 40
    home = Counter(e.address for e in held).most_common(1)[0]
    assert home[1] == max(loads)  # the key's home took the most, up to the bound
    for e in held:
        p.release(e)


async def test_affinity_counts_the_engines_own_queue_in_the_bound() -> None:
    p = pool(2, "prefix_affinity")
    key = session("x")
    home = await p.acquire(key=key, timeout_s=0)
    p.release(home)
    home.load = LoadSnapshot(running=8, waiting=20, capacity=8)  # busy with others' work
    other = await p.acquire(key=key, timeout_s=0)
    assert other is not home


async def test_requests_without_a_key_go_by_load() -> None:
    p = pool(2, "prefix_affinity")
    busy, idle = p.endpoints
    busy.load = LoadSnapshot(running=8, waiting=30, capacity=8)
    for _ in range(5):
        e = await p.acquire(timeout_s=0)
        assert e is idle
        p.release(e)


def test_the_key_is_the_conversation_opening_or_the_session() -> None:
    system = Message(Role.SYSTEM, "You are a helpful assistant. " * 50)
    turn1 = ChatRequest("m", [system, Message(Role.USER, "tell me about ducks")])
    turn3 = ChatRequest(
        "m",
        [
            system,
            Message(Role.USER, "tell me about ducks"),
            Message(Role.ASSISTANT, "ducks are birds"),
            Message(Role.USER, "and geese?"),
        ],
    )
    other = ChatRequest("m", [system, Message(Role.USER, "tell me about trains")])
    assert request_key(turn1) == request_key(turn3)
    assert request_key(turn1) != request_key(other)
    assert request_key(ChatRequest("m", [system], user="u1")).session == "u1"
    tagged = ChatRequest("m", [system], user="u1", session_id="conv-9")
    assert request_key(tagged).session == "conv-9"


async def test_panic_mode_routes_over_unhealthy_endpoints() -> None:
    p = pool(3)
    p.endpoints[0].healthy = p.endpoints[1].healthy = False  # 33 % healthy < 50 %
    assert p.panicking()
    seen = set()
    for _ in range(60):
        e = await p.acquire(timeout_s=0)
        seen.add(e.address)
        p.release(e)
    assert len(seen) == 3


async def test_without_panic_only_healthy_endpoints_serve() -> None:
    p = pool(3, panic_threshold=0)
    p.endpoints[0].healthy = p.endpoints[1].healthy = False
    assert not p.panicking()
    for _ in range(20):
        e = await p.acquire(timeout_s=0)
        assert e is p.endpoints[2]
        p.release(e)
    p.endpoints[2].healthy = False
    with pytest.raises(PoolUnavailable):
        await p.acquire(timeout_s=0)


async def test_a_wholly_unhealthy_pool_panics_but_open_breakers_still_count() -> None:
    p = pool(2)
    for e in p.endpoints:
        e.healthy = False
    e = await p.acquire(timeout_s=0)  # panic: served rather than refused
    p.release(e)
    for e in p.endpoints:
        e.breaker.record_failure()  # real failures: open
    with pytest.raises(PoolUnavailable):
        await p.acquire(timeout_s=0)


async def test_a_removed_endpoint_drains_and_is_reaped_when_idle() -> None:
    p = pool(2)
    a, b = p.endpoints
    held = await p.acquire(timeout_s=0, exclude={b})
    assert held is a
    added, removed = p.set_addresses([b.address, "10.0.0.9:50061"])
    assert removed == [a] and a.draining and [e.address for e in added] == ["10.0.0.9:50061"]
    for _ in range(20):
        e = await p.acquire(timeout_s=0)
        assert e is not a
        p.release(e)
    assert p.reap() == []  # still streaming
    p.release(a)
    assert p.reap() == [a] and p.draining == []


async def test_an_endpoint_that_comes_back_while_draining_keeps_its_state() -> None:
    p = pool(2)
    a = p.endpoints[0]
    held = await p.acquire(timeout_s=0, exclude={p.endpoints[1]})
    p.set_addresses([p.endpoints[1].address])
    p.set_addresses([a.address, p.endpoints[0].address])
    assert p.endpoints[0] is a and not a.draining and a.outstanding == 1
    p.release(held)


def test_the_routing_file_names_known_policies_only() -> None:
    raw = {"models": [{"name": "m", "endpoints": ["h:1"], "lb_policy": "sticky"}]}
    with pytest.raises(ValueError, match="least_load, round_robin, prefix_affinity"):
        GatewayConfig.model_validate(raw)
    raw["models"][0]["lb_policy"] = "prefix_affinity"  # type: ignore[index]
    assert GatewayConfig.model_validate(raw).models[0].lb_policy == "prefix_affinity"


def test_routing_does_not_depend_on_the_domain_or_the_outside() -> None:
    """The domain uses routing, never the reverse; routing does no I/O of its own."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in (root / "gateway" / "routing").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith(("gateway.domain", "gateway.transport", "gateway.adapters")):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
