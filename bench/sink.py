"""A webhook sink in its own process: counts arrivals per second and measures lateness.

Lateness is arrival time minus the due time that the timer id itself carries (its first 48
bits), so no bookkeeping is shared with the sender. ``GET /stats`` returns the figures.
Run: ``python -m bench.sink PORT``.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections import Counter

import uvloop
from aiohttp import web

arrivals: list[float] = []
lateness_ms: list[float] = []
ids: Counter[str] = Counter()


async def hook(request: web.Request) -> web.Response:
    now = time.time()
    body = await request.read()
    arrivals.append(now)
    try:
        timer_id = json.loads(body)["id"]
        due_ms = uuid.UUID(timer_id).int >> 80
        lateness_ms.append(now * 1000 - due_ms)
        ids[timer_id] += 1
    except (ValueError, KeyError):
        pass  # a raw POST from the client benchmark: counted, no lateness
    return web.Response(text="ok")


async def stats(request: web.Request) -> web.Response:
    per_second = Counter(int(t) for t in arrivals)
    return web.json_response(
        {
            "count": len(arrivals),
            "unique": len(ids),
            "duplicates": sum(n - 1 for n in ids.values()),
            "first": min(arrivals, default=None),
            "last": max(arrivals, default=None),
            "per_second": sorted(per_second.items()),
            "lateness_ms": sorted(lateness_ms),
        }
    )


async def count(request: web.Request) -> web.Response:
    """Cheap progress for polling (``/stats`` sorts everything; call it once at the end)."""
    return web.json_response({"count": len(arrivals), "unique": len(ids)})


async def reset(request: web.Request) -> web.Response:
    arrivals.clear()
    lateness_ms.clear()
    ids.clear()
    return web.Response(text="reset")


def main() -> None:
    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    app.router.add_get("/count", count)
    app.router.add_post("/reset", reset)
    uvloop.install()  # the sink should be the fastest part of the run, not the limit
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
