"""Refuses webhook targets on loopback and private networks, on the resolved address.

The check runs inside aiohttp's resolver, at connect time, so a name that resolves to a public
address when the timer is created and to 127.0.0.1 when it fires (DNS rebinding) is refused too.
aiohttp does not call the resolver for IP literals: the sender checks those before the request
(db/targets.py, shared with the API, which refuses them at create).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from db.targets import Networks, refused_reason

__all__ = ["GuardedResolver", "Networks", "TargetRefused"]


class TargetRefused(OSError):
    """The webhook target resolves to an address that private-target protection refuses."""


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
