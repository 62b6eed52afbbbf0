"""``timerhook``: serve, api, dispatcher, migrate, backlog, dispatchers, caps."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from cli import access, admin, deadletters
from core import logs
from core.settings import Settings, get_settings
from db import embedded
from db.database import Database
from db.migrate import migrate as run_migrations

if TYPE_CHECKING:
    from dispatcher.service import Dispatcher

# The API, the dispatcher and uvicorn are imported by the commands that run them, so that the
# admin commands (caps, keys, backlog...) start in a fraction of the time.

app = typer.Typer(help="timerhook: self-hosted webhook timers.", no_args_is_help=True)
console = Console(stderr=True)
log = logging.getLogger("timerhook")


def _setup_logging(settings: Settings) -> None:
    logs.configure(settings.log_level, settings.log_format)


def _database_url(settings: Settings, *, supervise: bool = False) -> str:
    """The configured URL, or the embedded server's (started or joined) when none is set;
    ``supervise``: started again if it dies while this process runs."""
    if settings.database_url:
        return settings.database_url
    return embedded.start(settings.data_dir, supervise=supervise)


async def _prepare_async(url: str, settings: Settings) -> list[str]:
    applied = await run_migrations(url)
    async with Database(url, max_size=1, name="migrate") as db:
        await db.partitions.ensure(horizon_days=settings.horizon_days)
    return applied


def _prepare() -> tuple[Settings, str]:
    settings = get_settings()
    _setup_logging(settings)
    url = _database_url(settings, supervise=True)
    asyncio.run(_prepare_async(url, settings))
    return settings, url


@app.command()
def migrate() -> None:
    """Brings the database schema up to date and creates the partitions ahead."""
    settings = get_settings()
    _setup_logging(settings)
    url = _database_url(settings)
    applied = asyncio.run(_prepare_async(url, settings))
    console.print(f"migrated: {', '.join(applied) if applied else 'already up to date'}")


def _exit_normally_on_signals() -> None:
    """uvicorn handles SIGTERM/SIGINT while serving (graceful shutdown, dispatcher stop), then
    re-raises the signal with the handlers it found installed. With Python's defaults that
    kills the process before atexit runs, and the last process on an embedded server would
    never stop it. No-op handlers turn the re-raised signal into a normal exit."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: None)


def _serve(settings: Settings, url: str, *, with_dispatcher: bool) -> None:
    import uvicorn

    from api.app import create_app
    from dispatcher.service import Dispatcher

    companions = []
    if with_dispatcher:
        holder: dict[str, tuple[Database, Dispatcher]] = {}

        async def start() -> None:
            db = Database(
                url, max_size=settings.pool_size, name="dispatcher",
                timeout=settings.dispatcher_db_timeout,
                statement_timeout=settings.statement_timeout_seconds,
            )  # fmt: skip
            await db.open()
            dispatcher = Dispatcher(db, settings)
            await dispatcher.start()
            holder["d"] = (db, dispatcher)

        async def stop() -> None:
            if "d" in holder:
                db, dispatcher = holder.pop("d")
                await dispatcher.stop()
                await db.close()

        companions.append((start, stop))
    web = create_app(settings, url, companions=companions)
    _exit_normally_on_signals()
    uvicorn.run(
        web, host=settings.host, port=settings.port, log_config=None,
        access_log=settings.access_log,
    )  # fmt: skip


@app.command()
def serve() -> None:
    """API and one dispatcher in one process (embedded PostgreSQL unless a URL is set)."""
    settings, url = _prepare()
    _serve(settings, url, with_dispatcher=True)


@app.command()
def api(
    workers: int | None = typer.Option(
        None, "--workers", min=1, max=64,
        help="API worker processes sharing the port (default: TIMERHOOK_API_WORKERS, 1); "
        "each uses one core at most.",
    ),
) -> None:  # fmt: skip
    """The HTTP API alone."""
    settings, url = _prepare()
    count = workers or settings.api_workers
    if count == 1:
        _serve(settings, url, with_dispatcher=False)
        return
    import uvicorn

    # uvicorn's supervisor runs the workers, each building the app from the environment
    # (api.app.app_from_environment) on the URL prepared here; their counters meet in a
    # directory of prometheus-client's multiprocess mode, removed at exit.
    os.environ["TIMERHOOK_DATABASE_URL"] = url
    shared = tempfile.mkdtemp(prefix="timerhook-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared
    _exit_normally_on_signals()
    try:
        uvicorn.run(
            "api.app:app_from_environment", factory=True, workers=count, host=settings.host,
            port=settings.port, log_config=None, access_log=settings.access_log,
        )  # fmt: skip
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@app.command()
def dispatcher(
    processes: int | None = typer.Option(
        None, "--processes", min=1, max=64,
        help="Dispatcher processes to run from this command (default: "
        "TIMERHOOK_DISPATCHER_PROCESSES, 1); each uses one core at most.",
    ),
) -> None:  # fmt: skip
    """Dispatcher processes (one unless told); start as many as you like, on any machines."""
    from cli.fleet import Fleet
    from dispatcher.service import Dispatcher, run_until_signalled

    settings, url = _prepare()
    count = processes or settings.dispatcher_processes
    if count > 1:
        raise typer.Exit(Fleet(count, url, grace_seconds=settings.shutdown_grace_seconds).run())

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with Database(
            url, max_size=settings.pool_size, name="dispatcher",
            timeout=settings.dispatcher_db_timeout,
            statement_timeout=settings.statement_timeout_seconds,
        ) as db:  # fmt: skip
            await run_until_signalled(Dispatcher(db, settings), stop)

    run_loop(main())


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Runs a coroutine on uvloop where it is installed (faster sends), else on asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        asyncio.run(main)
    else:
        uvloop.run(main)


app.command()(admin.backlog)
app.command()(admin.dispatchers)
app.command()(admin.plan)
app.add_typer(admin.caps_app, name="caps")
app.add_typer(access.keys_app, name="keys")
app.add_typer(access.tenants_app, name="tenants")
app.command()(deadletters.dead)
app.command()(deadletters.requeue)


if __name__ == "__main__":  # pragma: no cover
    app()
