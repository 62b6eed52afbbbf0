"""The delivery-scheduler scenario on a compressed clock: 2,400 recurring deliveries a day, each
to be executed within a 24-hour SLA window, with the day scaled to 120 s.

Each delivery is a recurring timer (every 120 s, one occurrence here: one compressed day)
with a 120 s window, all due at the same instant, as a day's deliveries fall due at its start.
The ideal is the steady rate that meets every deadline: 2,400 / 120 s = 20/s. Reports the
per-second send rate, its worst deviation from 20/s (after the first second, before the
last), deadlines missed (target 0) and sends before their due time (target 0). One dispatcher
process, the cheap sink, the default 365-day horizon.
Run: ``python -m bench.windows [deliveries] [sla_seconds]``.
"""

from __future__ import annotations

import asyncio
import sys
import time

import uvloop

from bench import harness
from db.database import Database
from db.models import DeliveryOptions
from db.schedules import SeriesSpec


async def main(count: int, sla: int) -> None:
    ideal = count / sla
    async with harness.database() as url, harness.sink() as sink:
        proc = harness.dispatcher(url)
        await harness.wait_dispatchers(url, 1)
        start_ms = int(time.time() * 1000) + 15_000  # every delivery due at this instant
        async with Database(url, max_size=4) as db:
            spec = SeriesSpec(at_ms=start_ms, every_ms=sla * 1000, count=1)
            options = DeliveryOptions(window_ms=sla * 1000)

            async def make(n: int) -> None:
                for _ in range(n):
                    await db.schedules.create(spec, url=f"{sink}/delivery", options=options)

            await asyncio.gather(*(make(count // 4 + (i < count % 4)) for i in range(4)))
        stats = await harness.wait_count(
            sink, count, timeout=start_ms / 1000 - time.time() + sla + 60
        )
        proc.stop()
    per_second = [n for _, n in stats["per_second"]]
    full = per_second[1:-1]
    worst = max(abs(n - ideal) / ideal for n in full) if full else float("nan")
    lateness = stats["lateness_ms"]
    missed = sum(1 for ms in lateness if ms > sla * 1000)
    early = sum(1 for ms in lateness if ms < 0)
    figures = {
        "deliveries": count,
        "sla_s": sla,
        "ideal_per_s": ideal,
        "delivered": stats["unique"],
        "duplicates": stats["duplicates"],
        "spread_s": round(stats["last"] - stats["first"], 2),
        "worst_deviation_after_first_second": round(worst, 4),
        "deadlines_missed": missed,
        "early": early,
        "per_second": per_second,
    }
    harness.report("windows", figures)
    print(
        f"SUMMARY windows: {count:,} deliveries with a {sla} s SLA sent over "
        f"{figures['spread_s']} s at {min(full, default=0)}..{max(full, default=0)}/s "
        f"(ideal {ideal:.1f}/s, worst second off by {worst:.1%}); deadlines missed {missed}, "
        f"early {early}, duplicates {stats['duplicates']}"
    )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    uvloop.run(main(args[0] if args else 2400, args[1] if len(args) > 1 else 120))
