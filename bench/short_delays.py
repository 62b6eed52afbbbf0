"""Short delays on time: ``timerhook serve`` on its defaults takes 100 creates a second over
HTTP, half due at once and half in one second, and the sink measures each arrival against
the due time its id carries. Reports p50, p99 and max lateness and how many arrived early.

Before the LISTEN/NOTIFY wake-up such timers waited for the dispatcher's next tick: 0 s
timers arrived 523 ms late at the median and up to 1.15 s late.
Run: ``python -m bench.short_delays [seconds] [rate] [delay] [warmup]`` (delay 0 or 1: only
those; -1 or none: half and half; warmup: seconds of the same load first, not measured).
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
import uvloop

from bench import harness


async def _creates(
    session: aiohttp.ClientSession, base: str, sink: str, count: int, rate: int,
    delay: int | None,
) -> None:  # fmt: skip
    """``count`` evenly spaced creates at ``rate`` a second, one at a time."""
    start = time.perf_counter()
    for i in range(count):
        body = {"url": f"{sink}/hook", "seconds": i % 2 if delay is None else delay}
        async with session.post(f"{base}/timer", json=body) as r:
            assert r.status == 200, await r.text()
        pause = start + (i + 1) / rate - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)


async def main(seconds: int, rate: int, delay: int | None, warmup: int = 0) -> None:
    count = seconds * rate
    async with harness.database() as url, harness.sink() as sink:
        port = harness.free_port()
        proc = harness.Proc(
            [sys.executable, "-m", "cli.main", "serve"],
            {
                "TIMERHOOK_DATABASE_URL": url,
                "TIMERHOOK_PORT": str(port),
                "TIMERHOOK_ALLOW_PRIVATE_TARGETS": "1",
                "TIMERHOOK_HORIZON_DAYS": str(harness.HORIZON_DAYS),
                "TIMERHOOK_LOG_LEVEL": "WARNING",
            },
        )
        base = f"http://127.0.0.1:{port}"
        await harness.wait_dispatchers(url, 1)
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # the API may answer a moment after the dispatcher registers
                try:
                    async with session.get(f"{base}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            if warmup:
                # the same load first, not measured: every pooled connection of the dispatcher
                # and the API has then run (and planned) each of its statements
                await _creates(session, base, sink, warmup * rate, rate, delay)
                await asyncio.sleep(1.5)
                await harness.sink_reset(sink)
            await _creates(session, base, sink, count, rate, delay)
        stats = await harness.wait_count(sink, count, timeout=30)
        proc.stop()
    late = stats["lateness_ms"]
    figures = {
        "timers": count,
        "rate_per_s": rate,
        "delay_s": "0 and 1" if delay is None else delay,
        "warmup_s": warmup,
        "delivered": stats["unique"],
        "p50_ms": round(harness.percentile(late, 50), 2),
        "p99_ms": round(harness.percentile(late, 99), 2),
        "max_ms": round(max(late), 2),
        "early": sum(1 for x in late if x < 0),
    }
    harness.report("short_delays", figures)
    print(
        f"SUMMARY short delays ({figures['delay_s']} s) at {rate} creates/s: "
        f"p50 {figures['p50_ms']} ms, "
        f"p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms, early {figures['early']} "
        f"of {count}" + (f" (after {warmup} s of the same load, not measured)" if warmup else "")
    )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    uvloop.run(
        main(
            args[0] if args else 20,
            args[1] if len(args) > 1 else 100,
            args[2] if len(args) > 2 and args[2] >= 0 else None,
            args[3] if len(args) > 3 else 0,
        )
    )
