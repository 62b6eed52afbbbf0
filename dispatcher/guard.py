"""Refuses webhook targets on loopback and private networks, on the resolved address.

The check runs inside aiohttp's resolver, at connect time, so a name that resolves to a public
address when the timer is created and to 127.0.0.1 when it fires (DNS rebinding) is refused too.
aiohttp does not call the resolver for IP literals, so those are checked before the request.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services that sit outside the private ranges (AWS IPv6, Alibaba).
_METADATA = [ipaddress.ip_network("fd00:ec2::254/128"), ipaddress.ip_network("100.100.100.200/32")]


class TargetRefused(OSError):
    """The webhook target resolves to an address that private-target protection refuses."""


Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]


def refused_reason(address: IPAddress, allowed: Networks = ()) -> str | None:
    """Why an address may not be a webhook target, or None if it may.

    ``allowed`` networks (TIMERHOOK_ALLOWED_NETWORKS) are let through whatever they are.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in allowed):
        return None
    checks = [
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("unspecified", address.is_unspecified),
        ("metadata", any(address in net for net in _METADATA)),
        ("shared (CGNAT)", address in ipaddress.ip_network("100.64.0.0/10")),
    ]
    for name, hit in checks:
        if hit:
            return f"{address} is a {name} address"
    return None


def check_literal(host: str, allowed: Networks = ()) -> None:
    """Raises TargetRefused if host is an IP literal that is not allowed."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return  # a name: the resolver checks it
    reason = refused_reason(address, allowed)
    if reason:
        raise TargetRefused(f"target refused: {reason} (TIMERHOOK_ALLOW_PRIVATE_TARGETS=1 allows)")


class GuardedResolver(AbstractResolver):
    """A resolver that refuses names resolving to any address refused_reason rejects."""

    def __init__(self, inner: AbstractResolver | None = None, allowed: Networks = ()) -> None:
        self._inner = inner or ThreadedResolver()
        self._allowed = allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolves host and refuses the whole answer if one address is not allowed."""
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = refused_reason(ipaddress.ip_address(result["host"]), self._allowed)
            if reason:
                raise TargetRefused(
                    f"target refused: {host} resolves to {reason} "
                    "(TIMERHOOK_ALLOW_PRIVATE_TARGETS=1 allows)"
                )
        return results

    async def close(self, *args: Any) -> None:
        """Closes the wrapped resolver."""
        await self._inner.close()
