"""The scaling story: 1, 2 and 4 dispatcher processes firing one backlog, and 1 and 2 API
processes taking creates, each against one PostgreSQL, with the CPU every part used.

For each step it prints the throughput and, from /proc over the same interval, the cores
used by the timerhook processes (a process and its children), by PostgreSQL (every
``postgres`` process) and by the whole machine, so that where the next core would go is a
figure, not a guess. Firing is measured against the cheap sink (bench/sink.py); creates
under wrk (64 connections), as in bench.creates. Run: ``python -m bench.scaling [timers]
[seconds]``.
"""

from __future__ import annotations

import json
import sys

import uvloop

from bench import harness
from bench.creates import BODY, api
from bench.wrk import ensure
from bench.wrk import post as wrk_post


async def dispatchers(url: str, sink: str, count: int, n: int) -> dict[str, float]:
    """``count`` overdue timers drained by ``n`` running dispatcher processes, with the cores
    every part used over the span the webhooks arrived in (harness.fire_backlog)."""
    rate, cpu = await harness.fire_backlog(url, sink, count, n)
    return {"webhooks_per_s": round(rate), **cpu}


async def apis(url: str, seconds: float, workers: int) -> dict[str, float]:
    """Creates per second under wrk (64 connections) into ``timerhook api`` with ``workers``."""
    proc, base = await api(url, TIMERHOOK_API_WORKERS=str(workers))
    try:
        wrk_post(f"{base}/timer", json.dumps(BODY), seconds=1, connections=64)  # warm up
        meter = harness.Meter()
        meter.start([proc.popen.pid])
        result = wrk_post(f"{base}/timer", json.dumps(BODY), seconds=seconds, connections=64)
        cpu = meter.stop()
    finally:
        proc.stop()
    assert result.refused == 0, result
    return {"creates_per_s": round(result.requests_per_s), **cpu}


async def main(count: int, seconds: float) -> None:
    ensure()
    figures: dict[str, object] = {"timers": count, "create_seconds": seconds}
    async with harness.database() as url, harness.sink() as sink:
        for n in (1, 2, 4):
            figures[f"dispatchers_{n}"] = await dispatchers(url, sink, count, n)
        for workers in (1, 2):
            figures[f"api_workers_{workers}"] = await apis(url, seconds, workers)
    harness.report("scaling", figures)
    lines = []
    for n in (1, 2, 4):
        f = figures[f"dispatchers_{n}"]
        assert isinstance(f, dict)
        lines.append(
            f"{n} dispatcher(s) {f['webhooks_per_s']:,}/s (timerhook {f['timerhook_cores']} "
            f"cores, PostgreSQL {f['postgres_cores']}, machine {f['machine_cores']})"
        )
    for workers in (1, 2):
        f = figures[f"api_workers_{workers}"]
        assert isinstance(f, dict)
        lines.append(
            f"{workers} API process(es) {f['creates_per_s']:,} creates/s (timerhook "
            f"{f['timerhook_cores']} cores, PostgreSQL {f['postgres_cores']}, machine "
            f"{f['machine_cores']})"
        )
    print("SUMMARY scaling: " + "; ".join(lines))


if __name__ == "__main__":
    args = sys.argv[1:]
    uvloop.run(main(int(args[0]) if args else 50_000, float(args[1]) if len(args) > 1 else 8.0))
