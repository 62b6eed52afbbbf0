"""Admin commands: ``backlog``, ``dispatchers``, ``caps``: rich tables over the database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from core.caps import GLOBAL, HOST, TENANT, Cap
from core.plan import Holds, PlanRow, plan_pass
from core.settings import get_settings
from core.targets import host_of
from core.windows import yds_curve
from db import embedded
from db.access import valid_tenant
from db.backlog import step_for, window_seconds
from db.database import Database
from db.models import BacklogStep, Circuit, Overdue

T = TypeVar("T")

console = Console()
caps_app = typer.Typer(help="Show or set the per-minute caps.", invoke_without_command=True)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_BAR = 40


def parse_window(text: str) -> int:
    """'90s', '10m', '2h', '1d' -> seconds."""
    seconds = window_seconds(text)
    if seconds is None:
        raise typer.BadParameter(
            "give a positive number and a unit: 90s, 10m, 2h or 1d (at most 366 days)"
        )
    return seconds


def run_db(action: Callable[[Database], Awaitable[T]]) -> T:
    settings = get_settings()
    url = settings.database_url or embedded.start(settings.data_dir)

    async def main() -> T:
        async with Database(url, max_size=1, name="cli") as db:
            return await action(db)

    return asyncio.run(main())


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def backlog(
    window: str = typer.Option("60s", help="How far ahead to look: 90s, 10m, 2h, 1d."),
) -> None:
    """Pending timers per second, minute or hour ahead, with the overdue count and age."""
    seconds = parse_window(window)
    step = step_for(seconds)

    async def read(db: Database) -> tuple[list[BacklogStep], Overdue, list[tuple[datetime, int]]]:
        steps = await db.backlog.histogram(window_seconds=seconds, step_seconds=step)
        lookahead = get_settings().wake_within_ms / 1000
        return steps, await db.backlog.overdue(), await db.windows.work(lookahead_seconds=lookahead)

    histogram, overdue, work = run_db(read)
    steps = [(s.at, s.pending) for s in histogram]
    table = Table(title=f"pending timers, next {window} in steps of {step} s")
    table.add_column("due from (UTC)")
    table.add_column("pending", justify="right")
    table.add_column("", min_width=_BAR)
    peak = max((n for _, n in steps), default=0)
    for at, n in steps:
        bar = "█" * max(1, round(_BAR * n / peak)) if peak else ""
        table.add_row(at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"), f"{n:,}", bar)
    if not steps:
        table.add_row("-", "0", "nothing pending in this window")
    console.print(table)
    style = "bold red" if overdue.overdue else "green"
    console.print(
        Text(f"overdue: {overdue.overdue:,}", style=style),
        Text(f"  oldest overdue: {_age(overdue.oldest_age_seconds)}"),
        Text(f"  in flight: {overdue.in_flight:,}  total ahead: {sum(n for _, n in steps):,}"),
    )
    if work:
        _windowed(work)


def _windowed(work: list[tuple[datetime, int]]) -> None:
    """The windowed work released and its planned send rate ahead (the smoothed curve)."""
    now = datetime.now(UTC)
    table = Table(title=f"windowed timers: {sum(n for _, n in work):,} released, planned rate")
    table.add_column("until (UTC)")
    table.add_column("sends/s", justify="right")
    table.add_column("", min_width=_BAR)
    curve = yds_curve(now, work)
    peak = max((r for _, r in curve), default=0.0)
    for until, rate in curve:
        bar = "█" * max(1, round(_BAR * rate / peak)) if peak else ""
        table.add_row(until.strftime("%Y-%m-%d %H:%M:%S"), f"{rate:,.2f}", bar)
    console.print(table)


def dispatchers() -> None:
    """The dispatcher registry with liveness judged by the database clock."""
    settings = get_settings()
    rows = run_db(lambda db: db.dispatchers.list(dead_after_seconds=settings.dead_after_seconds))
    table = Table(title="dispatchers")
    for column in ("id", "host", "pid", "state", "heartbeat age", "in flight", "sent", "failed"):
        table.add_column(column, justify="right" if column in ("pid", "in flight") else "left")
    now = datetime.now(UTC)
    for d in rows:
        if d.stopped_at is not None:
            state = Text("stopped", style="dim")
        elif d.alive:
            state = Text("alive", style="green")
        else:
            state = Text("dead", style="bold red")
        age = _age((now - d.heartbeat_at).total_seconds())
        table.add_row(
            d.id, d.host, str(d.pid), state, age,
            f"{d.in_flight:,}", f"{d.sent_total:,}", f"{d.failed_total:,}",
        )  # fmt: skip
    console.print(table)


@caps_app.callback()
def caps_show(ctx: typer.Context) -> None:
    """Show the caps (``timerhook caps set global N``, ``tenant NAME N`` or ``host HOST N``
    changes one at run time)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = run_db(lambda db: db.caps.list())
    table = Table(title="per-minute caps")
    table.add_column("scope")
    table.add_column("per minute", justify="right")
    table.add_column("steady rate", justify="right")
    table.add_column("tokens now", justify="right")
    for cap in rows:
        limit = f"{cap.per_minute:,}" if cap.per_minute else "none"
        rate = f"{cap.per_minute / 60:,.1f}/s" if cap.per_minute else "-"
        table.add_row(cap.scope, limit, rate, f"{cap.tokens:,.1f}" if cap.per_minute else "-")
    if not rows:
        table.add_row(GLOBAL, "none", "-", "-")
    console.print(table)


@caps_app.command("set")
def caps_set(
    args: Annotated[
        list[str],
        typer.Argument(
            metavar="SCOPE [NAME] PER_MINUTE",
            help="global N, tenant NAME N or host HOST N; N webhooks per minute, 0 for no cap.",
        ),
    ],
) -> None:
    """Set a cap now, for every running dispatcher, without a restart: the global cap, a
    tenant's (``caps set tenant acme 600``) or a target host's (``caps set host
    api.example.com 60``; the host as URLs name it, without the port)."""
    scope, per_minute = cap_scope(args)
    run_db(lambda db: db.caps.set(scope=scope, per_minute=per_minute))
    shown = f"{per_minute:,}/min ({per_minute / 60:,.1f}/s)" if per_minute else "no cap"
    console.print(f"{scope} cap: {shown}")


def cap_scope(args: list[str]) -> tuple[str, int]:
    """``global N`` | ``tenant NAME N`` | ``host HOST N`` -> (scope, per minute)."""
    hint = "SCOPE [NAME] PER_MINUTE"
    if not args or args[0] not in (GLOBAL, "tenant", "host"):
        raise typer.BadParameter("the scope is global, tenant or host", param_hint=hint)
    if len(args) != (2 if args[0] == GLOBAL else 3):
        raise typer.BadParameter("give global N, tenant NAME N or host HOST N", param_hint=hint)
    try:
        per_minute = int(args[-1])
    except ValueError:
        per_minute = -1
    if per_minute < 0:
        raise typer.BadParameter(
            "the cap is a whole number per minute, 0 for none", param_hint=hint
        )
    if args[0] == GLOBAL:
        return GLOBAL, per_minute
    name = args[1]
    if args[0] == "tenant":
        if not valid_tenant(name):
            raise typer.BadParameter("not a tenant name", param_hint=hint)
        return TENANT + name, per_minute
    host = host_of(f"http://{name}/") if not name.startswith("[") else name.strip("[]").lower()
    if ":" in name and not name.startswith("[") and name.count(":") == 1:
        raise typer.BadParameter("give the host without its port", param_hint=hint)
    if name.count(":") > 1 and not name.startswith("["):
        host = name.lower()  # an IPv6 literal without brackets
    if not host:
        raise typer.BadParameter("not a host name or IP literal", param_hint=hint)
    return HOST + host, per_minute


def plan(
    limit: int = typer.Option(50, min=1, max=1000, help="How many rows to show at most."),
) -> None:
    """The next pass: what would be sent now, what is held back and why (priority first)."""
    settings = get_settings()
    lookahead = settings.claim_window_seconds

    async def read(db: Database) -> tuple[list[PlanRow], Holds, list[Circuit],
                                         list[Cap], datetime]:  # fmt: skip
        rows = await db.timers.plan_candidates(lookahead_seconds=lookahead, limit=limit)
        names = sorted({n for r in rows for n in r.resources or ()})
        return (rows, await db.leases.holds(names), await db.circuits.list(), await db.caps.list(),
                await db.timers.clock())  # fmt: skip

    rows, holds, circuits, caps, now = run_db(read)
    cap = next((c for c in caps if c.scope == GLOBAL and c.per_minute), None)
    decisions = plan_pass(
        rows, holds=holds, circuits={c.host: c.reason for c in circuits if c.open},
        tokens=cap.tokens if cap else None, room=settings.concurrency + 2 * settings.batch_size,
        scope_tokens={c.scope: c.tokens for c in caps if c.per_minute and c.scope != GLOBAL},
    )  # fmt: skip
    table = Table(title=f"next pass at {now:%H:%M:%S} UTC (due by +{lookahead:g} s)")
    for column in ("timer", "prio", "due", "host", "resources", "now?", "why"):
        table.add_column(column, justify="right" if column in ("prio", "due") else "left")
    for d in decisions:
        due = (d.row.run_at - now).total_seconds()
        table.add_row(
            str(d.row.id), str(d.row.priority), f"{due:+.1f} s", host_of(d.row.url),
            ", ".join(d.row.resources or ()) or "-",
            Text("send", style="green") if d.send_now else Text("waits", style="yellow"), d.why,
        )  # fmt: skip
    console.print(table)
    sending = sum(d.send_now for d in decisions)
    cap_text = f"global cap {cap.per_minute:,}/min, {cap.tokens:.1f} tokens" if cap else "no cap"
    open_circuits = [c.host for c in circuits if c.open]
    console.print(
        f"{sending} would go now, {len(decisions) - sending} wait; {cap_text}; "
        f"open circuits: {', '.join(open_circuits) or 'none'}"
    )
