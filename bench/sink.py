"""A webhook sink in its own process: counts arrivals per second and measures lateness.

It must cost far less than what it measures, so it is a bare asyncio protocol on uvloop with
httptools' C parser (the HTTP parser uvicorn uses), not a web framework: about a fifth of an
aiohttp server's CPU per request. Each POST is counted, its timer id noted (duplicates
counted) and its lateness taken as arrival time minus the due time that the id itself
carries (its first 48 bits), so no bookkeeping is shared with the sender. A POST whose body
names no timer (the raw client benchmark's) is counted without lateness.

``GET /stats`` returns every figure, ``GET /count`` the cheap progress counters and
``POST /reset`` starts again. Run: ``python -m bench.sink PORT``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import httptools
import uvloop

ID_KEY = b'"id": "'
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
CLOSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


class Figures:
    """What arrived: times, lateness from the ids, distinct ids and duplicates."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.arrivals: list[float] = []
        self.lateness_ms: list[float] = []
        self.ids: set[bytes] = set()
        self.duplicates = 0

    def hook(self, body: bytes, now: float) -> None:
        self.arrivals.append(now)
        at = body.find(ID_KEY)
        if at < 0:
            return  # a raw POST from the client benchmark: counted, no lateness
        timer_id = body[at + 7 : at + 43]
        try:
            due_ms = int(timer_id[:8] + timer_id[9:13], 16)  # the id's first 48 bits
        except ValueError:
            return
        self.lateness_ms.append(now * 1000 - due_ms)
        if timer_id in self.ids:
            self.duplicates += 1
        else:
            self.ids.add(timer_id)

    def count(self) -> dict[str, int]:
        return {"count": len(self.arrivals), "unique": len(self.ids)}

    def stats(self) -> dict[str, object]:
        per_second = Counter(int(t) for t in self.arrivals)
        return {
            "count": len(self.arrivals),
            "unique": len(self.ids),
            "duplicates": self.duplicates,
            "first": min(self.arrivals, default=None),
            "last": max(self.arrivals, default=None),
            "per_second": sorted(per_second.items()),
            "lateness_ms": sorted(self.lateness_ms),
        }


figures = Figures()


class Sink(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, url = b"".join(self.body), self.url
        self.body, self.url = [], b""
        method = self.parser.get_method()
        if method == b"POST" and url == b"/reset":
            figures.reset()
            answer = OK
        elif method == b"POST":
            figures.hook(body, time.time())
            answer = OK
        elif url == b"/count":
            answer = _json(figures.count())
        elif url == b"/stats":
            answer = _json(figures.stats())
        else:
            answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
        assert self.transport is not None
        if self.parser.should_keep_alive():
            self.transport.write(answer)
        else:
            self.transport.write(CLOSE if answer is OK else answer)
            self.transport.close()


def _json(value: object) -> bytes:
    body = json.dumps(value).encode()
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    uvloop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
