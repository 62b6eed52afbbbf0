"""A herd: N timers due in the same second under a per-minute cap, one dispatcher.

Reports the per-second delivery counts, the worst deviation from the cap's rate after the
first second, and the drain time. Run: ``python -m bench.herd [N] [cap_per_minute]``.
"""

from __future__ import annotations

import sys

import uvloop

from bench import harness


async def main(count: int, cap: int) -> None:
    rate = cap / 60
    async with harness.database() as url, harness.sink() as sink:
        harness.insert_due(url, count, first_ms=4_000, spread_ms=0, target=f"{sink}/hook")
        proc = harness.dispatcher(url, TIMERHOOK_MAX_PER_MINUTE=str(cap))
        stats = await harness.wait_count(sink, count, timeout=count / rate + 120)
        proc.stop()
    per_second = [n for _, n in stats["per_second"]]
    # The first and the last second are partial by nature; judge the full ones between them.
    full = per_second[1:-1]
    worst = max(abs(n - rate) / rate for n in full) if full else float("nan")
    figures = {
        "timers": count,
        "cap_per_minute": cap,
        "target_per_s": rate,
        "delivered": stats["unique"],
        "duplicates": stats["duplicates"],
        "drain_s": round(stats["last"] - stats["first"], 2),
        "worst_deviation_after_first_second": round(worst, 4),
        "per_second": per_second,
    }
    harness.report("herd", figures)
    print(
        f"SUMMARY herd of {count:,} under {cap:,}/min: drained in {figures['drain_s']} s "
        f"(ideal {count / rate:.1f} s), worst second after the first off by {worst:.1%}, "
        f"seconds {min(full, default=0)}..{max(full, default=0)}/s"
    )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    uvloop.run(main(args[0] if args else 100_000, args[1] if len(args) > 1 else 60_000))
