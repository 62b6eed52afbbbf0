"""Send statistics: what every dispatcher sent, per second and in total, with lateness and
attempt latency as histograms. Dispatchers add to them at their heartbeat; /metrics and the
dashboard read them, so the figures are the same whichever process serves them and however
many dispatchers there are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from db.connection import PoolOwner
from db.query_loader import query

# Upper bounds (seconds) of the lateness and latency histogram buckets, milliseconds to
# minutes; one more bucket past the last holds the rest (+Inf).
BOUNDS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
BUCKETS = len(BOUNDS) + 1

# What an attempt ended in: delivered (2xx), retried (a failure that will be tried again),
# failed (one that retrying cannot fix), dead (retries used up).
OUTCOMES = ("delivered", "retried", "failed", "dead")


def _zeros() -> list[int]:
    return [0] * BUCKETS


@dataclass(slots=True)
class SecondStats:
    """The sends of one second: counts by outcome, and per-bucket (not cumulative) counts."""

    second: datetime
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    lateness: list[int] = field(default_factory=_zeros)
    latency: list[int] = field(default_factory=_zeros)


@dataclass(slots=True)
class Totals:
    """Everything sent since the database was made (the counters of /metrics)."""

    counts: dict[str, int]
    lateness: list[int]
    lateness_sum: float
    latency: list[int]
    latency_sum: float
    cap_waits: int
    stale: int = 0  # outcomes refused for a stale lease token (taken over meanwhile)


def _array(values: Sequence[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def _summed(rows: Sequence[Sequence[int]]) -> list[int]:
    return [sum(column) for column in zip(*rows, strict=True)] if rows else _zeros()


class StatsStore(PoolOwner):
    """Adds and reads the send statistics."""

    async def add(
        self, seconds: Sequence[SecondStats], *, lateness_sum: float, latency_sum: float,
        cap_waits: int, stale: int = 0,
    ) -> None:  # fmt: skip
        """Adds one dispatcher's report (one statement, one commit). Not retried: a report
        whose commit was lost may have been added, and adding it twice would count twice."""
        ordered = sorted(seconds, key=lambda s: s.second)
        params: dict[str, object] = {
            "second": [s.second for s in ordered],
            "lateness": [_array(s.lateness) for s in ordered],
            "latency": [_array(s.latency) for s in ordered],
            "lateness_total": _summed([s.lateness for s in ordered]),
            "latency_total": _summed([s.latency for s in ordered]),
            "lateness_sum": lateness_sum,
            "latency_sum": latency_sum,
            "cap_waits": cap_waits,
            "stale": stale,
        }
        for outcome in OUTCOMES:
            params[outcome] = [s.counts[outcome] for s in ordered]
            params[f"{outcome}_total"] = sum(s.counts[outcome] for s in ordered)
        async with self.connection() as conn:
            await conn.execute(query("send_stats_add"), params)

    async def totals(self) -> Totals:
        """The counters and histograms since the database was made."""
        async with self.connection() as conn:
            cur = await conn.execute(query("send_totals_get"))
            row = await cur.fetchone()
        assert row is not None, "send_totals has its one row from the schema"
        return Totals(
            counts=dict(zip(OUTCOMES, map(int, row[:4]), strict=True)),
            lateness=list(row[4] or _zeros()), lateness_sum=float(row[5]),
            latency=list(row[6] or _zeros()), latency_sum=float(row[7]), cap_waits=int(row[8]),
            stale=int(row[9]),
        )  # fmt: skip

    async def recent(self, *, seconds: int, now: datetime | None = None) -> list[SecondStats]:
        """The seconds with sends over the last ``seconds``, oldest first."""
        async with self.connection() as conn:
            cur = await conn.execute(query("send_stats_recent"), {"seconds": seconds, "now": now})
            rows = await cur.fetchall()
        return [
            SecondStats(
                second=r[0],
                counts=dict(zip(OUTCOMES, map(int, r[1:5]), strict=True)),
                lateness=list(r[5]),
                latency=list(r[6]),
            )
            for r in rows
        ]

    async def purge(self, *, keep_hours: int, now: datetime | None = None) -> None:
        """Drops the seconds older than ``keep_hours``."""
        await self.run(
            "send_stats_purge", {"keep_hours": keep_hours, "now": now}, budget=self.long_budget
        )
