"""What API keys cost a create: ``timerhook api`` with auth off against the same API with a
key required and sent, on one database, in alternating rounds (medians over the rounds).

The keyed API checks each request's ``Authorization: Bearer`` against its in-memory cache
(refreshed from the database every 5 s): the hot path should cost no round trip.
Run: ``python -m bench.keys [seconds] [rounds]``.
"""

from __future__ import annotations

import statistics
import sys

import uvloop

from bench import harness
from bench.creates import api, load
from db.database import Database


async def main(seconds: float, rounds: int) -> None:
    figures: dict[str, float] = {}
    open_rates: list[float] = []
    keyed_rates: list[float] = []
    async with harness.database() as url:
        async with Database(url, max_size=1) as db:
            _, key = await db.keys.create(tenant="bench", admin=False, label="bench")
        header = {"Authorization": f"Bearer {key}"}
        for _ in range(rounds):
            for name, env, headers, rates in (
                ("open", {"TIMERHOOK_AUTH": "none"}, None, open_rates),
                ("keyed", {"TIMERHOOK_AUTH": "keys"}, header, keyed_rates),
            ):
                proc, base = await api(url, **env)
                try:
                    await load(base, 8, 1.0, headers)  # warm up
                    rates.append(await load(base, 64, seconds, headers))
                finally:
                    proc.stop()
                print(f"{name}: {rates[-1]:,.0f}/s", flush=True)
    figures["open_64_clients_per_s"] = round(statistics.median(open_rates))
    figures["keyed_64_clients_per_s"] = round(statistics.median(keyed_rates))
    figures["key_cost_percent"] = round(
        100 * (1 - figures["keyed_64_clients_per_s"] / figures["open_64_clients_per_s"]), 1
    )
    harness.report("keys", figures)
    print(
        f"SUMMARY keys: 64 clients, medians of {rounds}: "
        f"open {figures['open_64_clients_per_s']:,}/s, "
        f"with a key {figures['keyed_64_clients_per_s']:,}/s "
        f"({figures['key_cost_percent']}% slower)"
    )


if __name__ == "__main__":
    uvloop.run(
        main(
            float(sys.argv[1]) if len(sys.argv) > 1 else 5.0,
            int(sys.argv[2]) if len(sys.argv) > 2 else 3,
        )
    )
