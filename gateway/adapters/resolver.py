"""Resolves an endpoint's host name to its addresses (DNS discovery).

A routing-file endpoint may be a name that resolves to many addresses (a
Kubernetes headless Service, ``docker compose --scale``): each address is
then an endpoint of its own, with its own channel, health checks and
breaker. gRPC's own ``dns:///`` resolver would balance inside one channel,
where the router could not see, check or eject each replica.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Literal, Protocol

Family = Literal["any", "ipv4", "ipv6"]
_FAMILIES = {"any": socket.AF_UNSPEC, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


class Resolver(Protocol):
    """Turns a host name into IP addresses."""

    async def resolve(self, host: str) -> list[str]:
        """The host's addresses (IP literals, no port); raise OSError if it cannot."""
        ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``, so /etc/hosts and DNS)."""

    def __init__(self, family: Family = "any", timeout_s: float = 2.0) -> None:
        self._family = _FAMILIES[family]
        self._timeout_s = timeout_s

    async def resolve(self, host: str) -> list[str]:
        """Every distinct address of ``host``, in the resolver's order."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout_s):
                infos = await loop.getaddrinfo(
                    host, None, family=self._family, type=socket.SOCK_STREAM
                )
        except TimeoutError:
            raise OSError(f"resolving {host} timed out") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


def split_host_port(entry: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into its parts."""
    host, _, port = entry.rpartition(":")
    return host.strip("[]"), int(port)


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP literal (nothing to resolve)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def join_host_port(ip: str, port: int) -> str:
    """An address the gRPC channel understands (IPv6 in brackets)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
