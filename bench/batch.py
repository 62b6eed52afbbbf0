"""Bulk create over HTTP: POST /timer/batch from 4 concurrent clients, 1,000 timers a request.

One ``timerhook api`` process (and, in the same run, ``--workers 2``) on a fresh database at
the bench's horizon. The ceiling printed beside it, from the same run: PostgreSQL's own COPY
of the same rows into the timers table from 4 connections (db/bulk.py's COPY, called
directly: no HTTP, no JSON, no checks). The clients send bodies serialised once, so the load
generator costs a few microseconds per timer. Medians of ``rounds``.
Run: ``python -m bench.batch [seconds] [rounds]``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

import aiohttp
import uvloop

from bench import harness
from bench.creates import api
from db.database import Database
from db.models import DeliveryOptions

CLIENTS = 4
PER_REQUEST = 1000
URLS = [f"https://example.com/hooks/{n}" for n in range(10)]


def body(n: int) -> bytes:
    """A batch of timers due in 1 to 2 hours, over 10 URLs (as a bulk load looks)."""
    timers = [
        {"url": URLS[i % 10], "seconds": 3600 + (n * 7 + i) % 3600} for i in range(PER_REQUEST)
    ]
    return json.dumps({"timers": timers}).encode()


async def load(base: str, seconds: float) -> float:
    """Timers created per second by CLIENTS clients posting batches for ``seconds``."""
    bodies = [body(n) for n in range(8)]
    done = 0
    stop_at = time.perf_counter() + seconds
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS)) as session:

        async def client(k: int) -> None:
            nonlocal done
            n = k
            while time.perf_counter() < stop_at:
                async with session.post(
                    f"{base}/timer/batch", data=bodies[n % 8], headers=headers
                ) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
                done += PER_REQUEST
                n += CLIENTS

        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(CLIENTS)))
        return done / (time.perf_counter() - start)


async def raw_copy(url: str, seconds: float) -> float:
    """The same rows through db/bulk.py's COPY from CLIENTS connections, one transaction per
    1,000 (no HTTP, no parsing, no checks): the database's ceiling for this path."""
    options = [DeliveryOptions(max_attempts=8)] * PER_REQUEST
    delays = [(3600 + i % 3600) * 1000 for i in range(PER_REQUEST)]
    urls = [URLS[i % 10] for i in range(PER_REQUEST)]
    done = 0
    stop_at = time.perf_counter() + seconds
    async with Database(url, max_size=CLIENTS, name="bench") as db:

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await db.creates.insert_batch(delays, urls, options, shards=16)
                done += PER_REQUEST

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        return done / (time.perf_counter() - start)


async def main(seconds: float, rounds: int) -> None:
    runs: dict[str, list[float]] = {"copy": [], "api": [], "api_2_workers": []}
    async with harness.database() as url:
        one, base_one = await api(url)
        two, base_two = await api(url, TIMERHOOK_API_WORKERS="2")
        try:
            await load(base_one, 1.0)  # warm up
            await load(base_two, 1.0)
            for _ in range(rounds):
                runs["copy"].append(await raw_copy(url, seconds))
                runs["api"].append(await load(base_one, seconds))
                runs["api_2_workers"].append(await load(base_two, seconds))
        finally:
            one.stop()
            two.stop()
    figures: dict[str, object] = {
        "horizon_days": harness.HORIZON_DAYS,
        "clients": CLIENTS,
        "timers_per_request": PER_REQUEST,
        **{f"{k}_per_s": round(statistics.median(v)) for k, v in runs.items()},
        **{f"{k}_runs": [round(x) for x in v] for k, v in runs.items()},
    }
    ceiling = statistics.median(runs["copy"])
    figures["api_vs_copy"] = round(statistics.median(runs["api"]) / ceiling, 2)
    figures["api_2_workers_vs_copy"] = round(statistics.median(runs["api_2_workers"]) / ceiling, 2)
    harness.report("batch", figures)
    print(
        f"SUMMARY batch: {figures['api_per_s']:,} timers/s through POST /timer/batch "
        f"(1 process; {figures['api_2_workers_per_s']:,}/s with 2 workers) against "
        f"{figures['copy_per_s']:,}/s for the same COPY without HTTP "
        f"({figures['api_vs_copy']}x), {CLIENTS} clients, medians of {rounds}"
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    uvloop.run(main(float(args[0]) if args else 5.0, int(args[1]) if len(args) > 1 else 3))
