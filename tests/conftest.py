"""Shared fixtures: a real PostgreSQL (template + a copy per test), settings, sinks, factories."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.settings import Settings
from db.database import Database
from db.models import CreatedTimer, DeliveryOptions
from dispatcher.service import Dispatcher
from tests.support import postgres
from tests.support.processes import Service, free_port
from tests.support.sink import Sink

# Short, so that each per-test copy of the template is quick (partitions dominate its cost).
TEST_HORIZON_DAYS = 30


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long tests (marked ``long(seconds=…)``: mostly waiting, 10 s to minutes each) first,
    the longest first, each followed by one short test, then the rest in file order.

    ``make test`` runs the suite on pytest-xdist workers, which take the first two tests each
    and then one more whenever one ends (``--maxschedchunk 1``). So each worker starts on one
    long test (never two), the next long ones go to the first workers free, and the short
    ones fill in around them: no worker is left finishing the long ones alone."""

    def length(item: pytest.Item) -> float:
        marker = item.get_closest_marker("long")
        return 0.0 if marker is None else float(marker.kwargs.get("seconds", 60))

    long = sorted((i for i in items if length(i)), key=lambda i: -length(i))
    short = [i for i in items if not length(i)]
    paired = [i for pair in zip(long, short, strict=False) for i in pair]
    items[:] = paired + long[len(paired) // 2 :] + short[len(paired) // 2 :]


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """The admin URL of this session's PostgreSQL server."""
    with postgres.server_url() as url:
        yield url


@pytest.fixture(scope="session")
def template_name(pg_admin_url: str) -> Iterator[str]:
    """A database migrated once per session, copied for every test."""
    name = postgres.build_template(pg_admin_url, TEST_HORIZON_DAYS)
    yield name
    postgres.drop_database(pg_admin_url, name)


@pytest.fixture(scope="session")
def template_copies(pg_admin_url: str, template_name: str) -> Iterator[postgres.Copies]:
    """Copies of the template, made ahead while tests run."""
    copies = postgres.Copies(
        pg_admin_url,
        template_name,
        rebuild=lambda: postgres.build_template(pg_admin_url, TEST_HORIZON_DAYS),
    )
    yield copies
    copies.close()


@pytest.fixture
def database_url(pg_admin_url: str, template_copies: postgres.Copies) -> Iterator[str]:
    """A fresh copy of the template database for this test, dropped afterwards."""
    name = template_copies.take()
    template_copies.pause()  # the test runs alone; copies are made between tests
    yield postgres.with_database(pg_admin_url, name)
    postgres.drop_database(pg_admin_url, name)
    template_copies.resume()


@pytest.fixture
def make_settings(database_url: str) -> Callable[..., Settings]:
    """Settings for this test's database, loopback targets allowed; overridable per call."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "allow_private_targets": True,
            "horizon_days": TEST_HORIZON_DAYS,
            "http_timeout_seconds": 5.0,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Default test settings."""
    return make_settings()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """An open Database on this test's copy; no connection may be left checked out."""
    database = Database(database_url, max_size=4, name="test")
    await database.open()
    yield database
    # A connection the pool is still adding (it grows in the background when requests queue)
    # counts in pool_size before it is available: give growth a moment, a leak never settles.
    for _ in range(50):
        stats = database.pool.get_stats()
        if stats.get("pool_size", 0) == stats.get("pool_available", 0):
            break
        await asyncio.sleep(0.02)
    await database.close()
    assert stats.get("pool_size", 0) == stats.get("pool_available", 0), (
        f"a pooled connection was left checked out: {stats}"
    )


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    """A recording HTTP sink on loopback."""
    s = Sink()
    await s.start()
    yield s
    await s.stop()


MakeTimer = Callable[..., Awaitable[CreatedTimer]]


@pytest.fixture
async def other_sink() -> AsyncIterator[Sink]:
    """A second sink on another loopback address: another target host."""
    s = Sink(host="127.0.0.2")
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def make_timer(db: Database, sink: Sink, settings: Settings) -> MakeTimer:
    """Inserts a timer straight into the database (default: due in 1 s, aimed at the sink)."""

    async def make(
        delay_ms: int = 1000,
        url: str | None = None,
        now: datetime | None = None,
        **options: Any,
    ) -> CreatedTimer:
        created = await db.creates.insert(
            [delay_ms],
            [url or f"{sink.url}/hook"],
            shards=settings.shards,
            now=now,
            options=[DeliveryOptions(**options)],
        )
        return created[0]

    return make


@pytest.fixture
async def start_dispatcher(
    database_url: str, settings: Settings
) -> AsyncIterator[Callable[..., Awaitable[Dispatcher]]]:
    """Starts dispatchers (each on its own pool) and stops them all at the end of the test."""
    running: list[tuple[Database, Dispatcher]] = []

    async def start(settings_: Settings | None = None, **kwargs: Any) -> Dispatcher:
        chosen = settings_ or settings
        database = Database(
            database_url, max_size=4, name="dispatcher", timeout=chosen.dispatcher_db_timeout
        )
        await database.open()
        dispatcher = Dispatcher(database, chosen, **kwargs)
        await dispatcher.start()
        running.append((database, dispatcher))
        return dispatcher

    yield start
    for database, dispatcher in running:
        await dispatcher.stop()
        await database.close()


@pytest.fixture
async def client(settings: Settings, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the real app (lifespan run), talking ASGI in-process."""
    app = create_app(settings, database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://timerhook") as c:
            yield c


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Real ``timerhook <command>`` processes (killed at the end if a test left them)."""
    made: list[Service] = []

    def make(command: str = "serve", **env: str) -> Service:
        defaults = {
            "TIMERHOOK_PORT": str(free_port()),
            "TIMERHOOK_ALLOW_PRIVATE_TARGETS": "1",
            "TIMERHOOK_HORIZON_DAYS": "30",
            "TIMERHOOK_SHUTDOWN_GRACE_SECONDS": "10",
        }
        service = Service(command, {**defaults, **env}, tmp_path / f"{command}-{len(made)}.log")
        made.append(service)
        return service

    yield make
    for service in made:
        service.ensure_dead()


@pytest.fixture(scope="module")
def running_api(
    pg_admin_url: str, template_copies: postgres.Copies, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """A real `timerhook api` process for a module's tests that write nothing they read back
    (refusals, the fuzzer), on its own copy of the template."""
    name = f"timerhook_api_{secrets.token_hex(6)}"
    url = postgres.create_database(pg_admin_url, name, template=template_copies.template)
    log = Path(tmp_path_factory.mktemp("api")) / "api.log"
    service = Service(
        "api",
        {
            "TIMERHOOK_DATABASE_URL": url,
            "TIMERHOOK_PORT": str(free_port()),
            "TIMERHOOK_HORIZON_DAYS": "30",  # the template's partitions
        },
        log,
    )
    service.start()
    try:
        asyncio.run(service.wait_ready())
        yield service
    finally:
        service.ensure_dead()
        postgres.drop_database(pg_admin_url, name)
