"""The dispatcher's HTTP client, chosen on numbers: raw POSTs per second from one process with
the same requests in flight, against the same cheap sink, through aiohttp and through pycurl's
CurlMulti on the event loop (dispatcher/curl.py, with and without the connect-time address
guard). Each client is measured ``rounds`` times, alternating; medians are printed.

Run: ``python -m bench.clients [N] [rounds]``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import aiohttp
import uvloop

from bench import harness
from dispatcher.curl import CurlClient

IN_FLIGHT = 64
HEADERS = ["Content-Type: application/json", "User-Agent: timerhook/0.1", "Expect:"]


async def aiohttp_posts(sink: str, count: int, concurrency: int) -> float:
    """POSTs per second from one aiohttp session with ``concurrency`` in flight."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem, session.post(f"{sink}/hook", data=b'{"x": 1}') as r:
                await r.read()

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.perf_counter() - start)


async def curl_posts(sink: str, count: int, concurrency: int, *, guarded: bool) -> float:
    """POSTs per second through one CurlClient with ``concurrency`` in flight."""
    client = CurlClient(
        connections=concurrency, body_cap=256, guard=(lambda url, ip: None) if guarded else None
    )
    url = f"{sink}/hook"
    body = b'{"x": 1}'
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            reply = await client.post(url, body, HEADERS, 5000)
            assert reply.status == 200, reply

    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - start)
    finally:
        client.close()


async def main(count: int, rounds: int) -> None:
    found: dict[str, list[float]] = {"aiohttp": [], "pycurl": [], "pycurl_guarded": []}
    async with harness.sink() as sink:
        for _ in range(rounds):
            found["aiohttp"].append(await aiohttp_posts(sink, count, IN_FLIGHT))
            found["pycurl"].append(await curl_posts(sink, count, IN_FLIGHT, guarded=False))
            found["pycurl_guarded"].append(await curl_posts(sink, count, IN_FLIGHT, guarded=True))
    medians = {name: round(statistics.median(v)) for name, v in found.items()}
    runs = {name: [round(x) for x in v] for name, v in found.items()}
    figures = {f"{name}_per_s": v for name, v in medians.items()}
    harness.report("clients", {"posts": count, "in_flight": IN_FLIGHT, "rounds": rounds,
                               **figures, "runs": runs})  # fmt: skip
    print(
        f"SUMMARY clients: aiohttp {medians['aiohttp']:,}/s, pycurl CurlMulti "
        f"{medians['pycurl']:,}/s ({medians['pycurl'] / medians['aiohttp']:.1f}x), with the "
        f"address guard {medians['pycurl_guarded']:,}/s (medians of {rounds})"
    )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    uvloop.run(main(*(args + [30_000, 3][len(args) :])))
