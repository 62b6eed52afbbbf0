"""A real HTTP sink on loopback that records every webhook it receives."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True)
class Received:
    """One request the sink received."""

    path: str
    body: bytes
    headers: dict[str, str]
    at: float  # time.time() on arrival


@dataclass(frozen=True)
class Reply:
    """A scripted answer: status, extra headers, a body, and a delay before answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


@dataclass
class Sink:
    """Records requests; ``status_for`` chooses each answer (200 unless told otherwise): a
    status, or a Reply for headers, a body or a delay."""

    received: list[Received] = field(default_factory=list)
    status_for: Callable[[Received], int | Reply] = lambda _r: 200
    url: str = ""
    host: str = "127.0.0.1"  # any loopback address: 127.0.0.2 is another "host" on this machine
    in_flight: int = 0  # requests being answered right now
    max_in_flight: int = 0  # the most ever answered at once
    _distinct: set[bytes] = field(default_factory=set)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listens on 127.0.0.1 at a free port."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Stopping does not wait for answers still held back (a scripted delay): the test is over.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{port}"

    async def stop(self) -> None:
        """Stops listening."""
        if self._runner:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        item = Received(request.path, await request.read(), dict(request.headers), time.time())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(item)
        finally:
            self.in_flight -= 1

    async def _answer(self, item: Received) -> web.Response:
        async with self._changed:
            self.received.append(item)
            self._distinct.add(item.body)
            self._changed.notify_all()
        answer = self.status_for(item)
        reply = answer if isinstance(answer, Reply) else Reply(answer)
        headers = dict(reply.headers)
        if 300 <= reply.status < 400:
            # A redirect points somewhere real, so a client that followed it would be seen here.
            headers["Location"] = f"{self.url}/redirected"
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return web.Response(status=reply.status, headers=headers, body=reply.body)

    async def wait_for(self, count: int, timeout: float) -> list[Received]:
        """Waits until at least ``count`` requests arrived; returns them all."""
        return await self.wait_until(lambda: len(self.received) >= count, timeout)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> list[Received]:
        """Waits until ``predicate`` holds (checked on every arrival); returns all requests."""

        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(wait(), timeout)
        return list(self.received)

    def distinct_bodies(self) -> int:
        """How many different bodies arrived (each timer's body is unique)."""
        return len(self._distinct)

    def for_id(self, timer_id: object) -> list[Received]:
        """The requests that carried this timer's id (the Idempotency-Key header)."""
        return [r for r in self.received if r.headers.get("Idempotency-Key") == str(timer_id)]

    def bodies(self) -> list[bytes]:
        """Every body received, in arrival order."""
        return [r.body for r in self.received]
