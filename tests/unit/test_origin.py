"""Which calls count as coming from this machine (the demo key's guard)."""

from __future__ import annotations

import pytest

from gateway.transport.origin import CLIENT_ADDRESS_KEY, is_local_origin, peer_is_local
from rest_shim import auth_guard


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("ipv4:127.0.0.1:50000", True),
        ("ipv4:127.8.9.10:1", True),
        ("ipv6:[::1]:50000", True),
        ("ipv6:[::ffff:127.0.0.1]:5", True),
        ("unix:/tmp/gw.sock", True),
        ("ipv4:192.0.2.2:50000", False),
        ("ipv6:[fd00::2]:50000", False),
        ("ipv6:[::ffff:10.0.0.1]:5", False),
        ("dns:localhost", False),
        ("", False),
    ],
)
def test_peers(peer: str, local: bool) -> None:
    assert peer_is_local(peer) is local


def test_a_relayed_call_is_local_only_if_its_client_is() -> None:
    loopback = "ipv4:127.0.0.1:40000"
    assert is_local_origin(loopback, ())
    assert is_local_origin(loopback, ((CLIENT_ADDRESS_KEY, "127.0.0.1"),))
    assert is_local_origin(loopback, ((CLIENT_ADDRESS_KEY, "::1"),))
    assert not is_local_origin(loopback, ((CLIENT_ADDRESS_KEY, "192.0.2.7"),))
    assert not is_local_origin(loopback, ((CLIENT_ADDRESS_KEY, "unknown"),))
    # Two claims: every one must be local (a client cannot add a friendlier one).
    both = ((CLIENT_ADDRESS_KEY, "127.0.0.1"), (CLIENT_ADDRESS_KEY, "192.0.2.7"))
    assert not is_local_origin(loopback, both)
    assert not is_local_origin("ipv4:192.0.2.7:1", ((CLIENT_ADDRESS_KEY, "127.0.0.1"),))


def test_the_shim_and_the_gateway_name_the_metadata_alike() -> None:
    assert auth_guard.CLIENT_ADDRESS_KEY == CLIENT_ADDRESS_KEY
