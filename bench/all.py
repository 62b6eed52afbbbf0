"""Every benchmark once, in one run, with its default size: ``python -m bench.all``.

Each prints its figures and a SUMMARY line, and appends them to bench/results/<name>.jsonl.
"""

from __future__ import annotations

import uvloop

from bench import (
    batch,
    clients,
    creates,
    firing,
    herd,
    lateness,
    memory,
    scaling,
    short_delays,
    windows,
)


async def main() -> None:
    await creates.main(8.0)
    await firing.main(50_000)
    await lateness.main(20, 1000)
    await herd.main(100_000, 60_000)
    await memory.main(1_000_000)
    await windows.main(2400, 120)
    await clients.main(30_000, 3)
    await batch.main(5.0, 3)
    await short_delays.main(10, 100, None)
    await short_delays.main(10, 100, None, warmup=15)
    await scaling.main(50_000, 8.0)


if __name__ == "__main__":
    uvloop.run(main())
