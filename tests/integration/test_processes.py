"""Crash and restart with real ``timerhook serve`` processes and real signals."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from core.ids import due_ms_of, parse_timer_id
from tests.support.processes import Service, postmasters_of, stop_embedded
from tests.support.sink import Sink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MakeService = Callable[..., Service]


def _states(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("select state, count(*) from timers group by state").fetchall())


async def _create(service: Service, sink: Sink, delays: list[int]) -> list[str]:
    async with httpx.AsyncClient(base_url=service.base_url) as client:
        ids = []
        for seconds in delays:
            response = await client.post(
                "/timer", json={"seconds": seconds, "url": f"{sink.url}/h"}
            )
            assert response.status_code == 200, response.text
            ids.append(response.json()["id"])
        return ids


async def test_sigkill_while_timers_are_pending_loses_none_and_doubles_none(
    make_service: MakeService, database_url: str, sink: Sink
) -> None:
    first = make_service(TIMERHOOK_DATABASE_URL=database_url)
    first.start()
    await first.wait_ready()
    ids = await _create(first, sink, [3 + i % 4 for i in range(40)])  # due in 3 to 6 s
    await first.kill()
    assert _states(database_url) == {"pending": 40}
    # Stay down until every timer is overdue.
    last_due = max(due_ms_of(parse_timer_id(i)) for i in ids) / 1000  # type: ignore[arg-type]
    await asyncio.sleep(max(0.0, last_due + 0.5 - time.time()))
    assert sink.received == []

    second = make_service(TIMERHOOK_DATABASE_URL=database_url, TIMERHOOK_PORT=str(first.port))
    second.start()
    await second.wait_ready()
    await sink.wait_for(40, timeout=30)
    # A clean stop records every outcome; all 40 delivered means nothing more can be sent.
    assert await second.terminate() == 0
    assert _states(database_url) == {"delivered": 40}
    received = [json.loads(b)["id"] for b in sink.bodies()]
    assert sorted(received) == sorted(ids), "lost or doubled"


async def test_sigterm_mid_stream_stops_cleanly_and_duplicates_nothing(
    make_service: MakeService, database_url: str, sink: Sink
) -> None:
    service = make_service(TIMERHOOK_DATABASE_URL=database_url)
    service.start()
    await service.wait_ready()
    ids = await _create(service, sink, [1 + i % 6 for i in range(60)])  # a stream over 6 s
    await sink.wait_for(5, timeout=15)
    code = await service.terminate()
    assert code == 0, service.log()
    assert "stopped:" in service.log()
    states = _states(database_url)
    # Nothing was left in flight: sent ones are recorded, unsent ones were given back.
    assert set(states) <= {"delivered", "pending"}, (states, service.log()[-3000:])
    assert states.get("delivered", 0) == len(sink.received)
    restarted = make_service(TIMERHOOK_DATABASE_URL=database_url, TIMERHOOK_PORT=str(service.port))
    restarted.start()
    await restarted.wait_ready()
    await sink.wait_for(60, timeout=30)
    received = [json.loads(b)["id"] for b in sink.bodies()]
    assert sorted(received) == sorted(ids)
    assert await restarted.terminate() == 0


async def test_the_first_readme_command_serves_on_an_embedded_postgres(
    make_service: MakeService, tmp_path: Path, sink: Sink
) -> None:
    """`timerhook serve` with no database URL: embedded server, 2 s timer on time, once."""
    data_dir = tmp_path / "data"
    service = make_service(TIMERHOOK_DATA_DIR=str(data_dir))
    service.env.pop("TIMERHOOK_DATABASE_URL", None)
    service.start()
    try:
        await service.wait_ready(timeout=90)
        [timer_id] = await _create(service, sink, [2])
        due = due_ms_of(parse_timer_id(timer_id)) / 1000  # type: ignore[arg-type]
        [received] = await sink.wait_for(1, timeout=10)
        assert received.body == f'{{"id": "{timer_id}"}}'.encode()
        assert due <= received.at <= due + 1.5
        # Recorded within a flush interval of the send; kill only after, or the restart would
        # rightly send it again (the one duplicate window).
        shown = await _until_recorded(service, timer_id)
        assert (shown["id"], shown["time_left"], shown["attempts"]) == (timer_id, 0, 1)
        # A SIGKILL leaves the embedded server running; the next start joins it.
        await service.kill()
        again = make_service(TIMERHOOK_DATA_DIR=str(data_dir), TIMERHOOK_PORT=str(service.port))
        again.env.pop("TIMERHOOK_DATABASE_URL", None)
        again.start()
        await again.wait_ready(timeout=60)
        async with httpx.AsyncClient(base_url=again.base_url) as client:
            shown = (await client.get(f"/timer/{timer_id}")).json()
        assert (shown["id"], shown["time_left"], shown["status"]) == (timer_id, 0, "delivered")
        assert await again.terminate() == 0, again.log()
        assert len(sink.received) == 1
        # The last process to exit cleanly stopped the embedded server it shared.
        assert postmasters_of(data_dir / "pgdata") == []
    finally:
        stop_embedded(data_dir / "pgdata")


async def _until_recorded(service: Service, timer_id: str) -> dict[str, object]:
    """GET /timer/{id} until its status is final (the process is external: polling is the
    signal); returns the last answer."""
    async with httpx.AsyncClient(base_url=service.base_url) as client:
        for _ in range(100):
            body: dict[str, object] = (await client.get(f"/timer/{timer_id}")).json()
            if body["status"] == "delivered":
                return body
            await asyncio.sleep(0.05)
    raise AssertionError(f"timer {timer_id} not recorded delivered: {body}")


async def test_processes_started_together_share_one_embedded_server(
    make_service: MakeService, tmp_path: Path, sink: Sink
) -> None:
    """`timerhook api` and `timerhook dispatcher` started at the same moment on one data dir:
    one server, migrated once, and a timer created through one is sent by the other."""
    data_dir = tmp_path / "shared"
    api = make_service("api", TIMERHOOK_DATA_DIR=str(data_dir))
    dispatcher = make_service("dispatcher", TIMERHOOK_DATA_DIR=str(data_dir))
    for service in (api, dispatcher):
        service.env.pop("TIMERHOOK_DATABASE_URL", None)
    api.start()
    dispatcher.start()
    try:
        await api.wait_ready(timeout=90)
        [timer_id] = await _create(api, sink, [1])
        [received] = await sink.wait_for(1, timeout=30)
        assert json.loads(received.body) == {"id": timer_id}
        assert len(postmasters_of(data_dir / "pgdata")) == 1
        assert await dispatcher.terminate() == 0, dispatcher.log()
        assert postmasters_of(data_dir / "pgdata") != []  # the api still holds it
        assert await api.terminate() == 0, api.log()
        assert postmasters_of(data_dir / "pgdata") == []  # the last one out stopped it
    finally:
        stop_embedded(data_dir / "pgdata")


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _workers_of(pid: int) -> list[int]:
    """The uvicorn worker processes under ``pid`` (multiprocessing spawns, not its resource
    tracker)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(c) for c in f.read().split()]
    workers = []
    for child in children:
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"spawn_main" in f.read():
                workers.append(child)
    return workers


async def test_api_workers_share_the_port_and_stop_together(
    make_service: MakeService, database_url: str
) -> None:
    service = make_service("api", TIMERHOOK_DATABASE_URL=database_url, TIMERHOOK_API_WORKERS="2")
    service.start()
    await service.wait_ready()
    assert service.proc is not None
    workers = _workers_of(service.proc.pid)
    assert len(workers) == 2, service.log()
    before = {w: _cpu_ticks(w) for w in workers}
    body = {"minutes": 5, "url": "https://example.com/hook"}
    # A new connection per request: 320 accepts on the shared socket, for either worker.
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=service.base_url, limits=fresh) as client:

        async def creates(n: int) -> None:
            for _ in range(n):
                assert (await client.post("/timer", json=body)).status_code == 200

        await asyncio.gather(*(creates(40) for _ in range(8)))
    assert _states(database_url) == {"pending": 320}
    # Both workers took requests.
    assert all(_cpu_ticks(w) > before[w] for w in workers), before
    # Whichever worker answers the scrape counts every worker's creates.
    async with httpx.AsyncClient(base_url=service.base_url, limits=fresh) as client:
        for _ in range(6):
            page = (await client.get("/metrics")).text
            assert 'timerhook_timers_created_total{kind="once"} 320.0' in page, page
    assert await service.terminate() == 0
    for worker in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(worker, 0)
