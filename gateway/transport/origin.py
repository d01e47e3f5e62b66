"""Where a call comes from, for keys that are served only on this machine.

The demo tenant's key is published, so it must never serve a request that
came from the network. The gateway refuses a demo tenant file unless it
listens on loopback, but that alone is not enough: a REST shim listening on
0.0.0.0 in front of it would relay any remote client from 127.0.0.1.

So a demo key is accepted only when the *origin* of the call is local:

* the gRPC peer is a loopback address (or a Unix socket), and
* if the call carries ``x-llmgw-client-address`` (the REST shim always
  sets it, from the HTTP connection's peer, replacing anything a client
  sent: it forwards no client header of that name), that address is
  loopback too.

Nothing here can be forged from the network: a remote gRPC caller fails
the peer test (and cannot even connect: the gateway listens on loopback),
and a remote HTTP caller's address is written by the shim, not by the
caller. A local caller could claim another address, but only to refuse
itself. Behind a reverse proxy on the same host, the shim sees the proxy's
address unless the proxy sets ``X-Forwarded-For`` (uvicorn trusts it from
127.0.0.1 only): do not serve the demo tenant behind such a proxy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc

from common.grpcutil.status import ErrorDetails, build_status

CLIENT_ADDRESS_KEY = "x-llmgw-client-address"

_NOT_LOCAL = build_status(
    grpc.StatusCode.PERMISSION_DENIED,
    "The demo key is served only to clients on this machine (loopback). "
    "Create a tenant and a key of your own for other clients.",
    ErrorDetails(reason="demo_key_not_local"),
)


def is_loopback_host(host: str) -> bool:
    """Whether an IP address (as text, IPv6 with or without brackets) is loopback."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "localhost"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def peer_is_local(peer: str) -> bool:
    """Whether a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``,
    ``unix:/path``) is this machine."""
    kind, _, rest = peer.partition(":")
    if kind in ("unix", "unix-abstract"):
        return True
    if kind not in ("ipv4", "ipv6"):
        return False
    host = rest.rsplit(":", 1)[0]
    return is_loopback_host(host)


def is_local_origin(peer: str, metadata: Any) -> bool:
    """Whether the call and, for a relayed call, its original client are on loopback."""
    if not peer_is_local(peer):
        return False
    for key, value in metadata or ():
        if key == CLIENT_ADDRESS_KEY and not (isinstance(value, str) and is_loopback_host(value)):
            return False
    return True


def local_only(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler``, refusing with PERMISSION_DENIED calls whose origin is not local."""
    h: Any = handler

    async def check(context: grpc.aio.ServicerContext) -> None:
        if not is_local_origin(context.peer(), context.invocation_metadata()):
            await context.abort_with_status(_NOT_LOCAL)

    if h.unary_unary is not None:
        inner = h.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, h.request_deserializer, h.response_serializer
        )
    if h.unary_stream is not None:
        inner_stream = h.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await check(context)
            async with aclosing(inner_stream(request, context)) as messages:  # closed with us
                async for message in messages:
                    yield message

        return grpc.unary_stream_rpc_method_handler(
            stream, h.request_deserializer, h.response_serializer
        )

    # The public API has no client-streaming methods; refuse rather than serve unchecked.
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(_NOT_LOCAL)

    return grpc.unary_unary_rpc_method_handler(refuse, None, h.response_serializer)
