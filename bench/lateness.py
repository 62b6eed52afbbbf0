"""Lateness at a steady 1,000 timers due per second, one dispatcher.

Timers are due at evenly spread milliseconds over the run; the sink measures arrival minus the
due time carried in each id. Reports p50, p99, max and how many arrived early (must be 0).
Run: ``python -m bench.lateness [seconds] [rate]``.
"""

from __future__ import annotations

import sys

import uvloop

from bench import harness


async def main(seconds: int, rate: int) -> None:
    count = seconds * rate
    async with harness.database() as url, harness.sink() as sink:
        proc = harness.dispatcher(url)
        await harness.wait_dispatchers(url, 1)
        harness.insert_due(
            url, count, first_ms=3_000, spread_ms=seconds * 1000, target=f"{sink}/hook"
        )
        stats = await harness.wait_count(sink, count, timeout=seconds + 60)
        proc.stop()
    late = stats["lateness_ms"]
    figures = {
        "timers": count,
        "rate_per_s": rate,
        "delivered": stats["unique"],
        "p50_ms": round(harness.percentile(late, 50), 2),
        "p99_ms": round(harness.percentile(late, 99), 2),
        "max_ms": round(max(late), 2),
        "early": sum(1 for x in late if x < 0),
        "earliest_ms": round(min(late), 3),
    }
    harness.report("lateness", figures)
    print(
        f"SUMMARY lateness at {rate}/s: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
        f"max {figures['max_ms']} ms, early {figures['early']} of {count}"
    )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    uvloop.run(main(args[0] if args else 20, args[1] if len(args) > 1 else 1000))
