"""Dead letters from the command line: ``timerhook dead`` lists them, ``timerhook requeue``
puts one, a filtered set or all of them back."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.admin import console, run_db
from core.ids import parse_timer_id
from core.states import DEAD_LETTER_STATES, TimerState, parse_states
from db.models import RequeueFilter, RequeueResult


def dead(
    limit: int = typer.Option(50, min=1, max=1000, help="How many to show."),
    status: Annotated[
        list[str] | None,
        typer.Option(help="dead (out of attempts) and/or failed (not retryable); default both."),
    ] = None,
) -> None:
    """Dead letters (dead and failed timers), oldest due first."""
    states = _states(status)
    rows = run_db(lambda db: db.timers.listing(states=states, limit=limit))
    table = Table(title=f"dead letters ({', '.join(states)}), oldest first")
    for column in ("id", "state", "attempts", "last status", "last error", "url"):
        table.add_column(column, overflow="fold")
    for t in rows:
        status_text = str(t.last_status) if t.last_status is not None else "-"
        table.add_row(
            str(t.id), t.state, str(t.attempts), status_text, (t.last_error or "-")[:80], t.url
        )
    console.print(table)
    if len(rows) == limit:
        console.print(f"showing the first {limit}; GET /timer?status=dead,failed pages on")


def requeue(
    timer_id: str | None = typer.Argument(None, help="One timer to requeue."),
    all_: bool = typer.Option(False, "--all", help="Every dead letter matching the filters."),
    status: Annotated[
        list[str] | None, typer.Option(help="dead and/or failed; default both.")
    ] = None,
    url_prefix: str | None = typer.Option(None, help="Only timers whose URL starts with this."),
    limit: int | None = typer.Option(None, min=1, help="Requeue at most this many."),
) -> None:
    """Put dead letters back: due now, with a fresh round of attempts. Give a timer id, or
    --all (narrowed by --status, --url-prefix and --limit)."""
    if timer_id is not None:
        parsed = parse_timer_id(timer_id)
        if parsed is None:
            raise typer.BadParameter("not a timer id", param_hint="TIMER_ID")
        found: RequeueResult | None = run_db(lambda db: db.requeues.requeue(parsed))
        if found is None:
            console.print(f"no timer with id {timer_id}")
            raise typer.Exit(1)
        if not found.requeued:
            console.print(f"timer {timer_id} is {found.found}; only dead or failed are requeued")
            raise typer.Exit(1)
        console.print(f"requeued 1 timer: {timer_id}")
        return
    if not all_:
        raise typer.BadParameter("give a timer id, or --all (with filters to narrow it)")
    which = RequeueFilter(states=tuple(_states(status)), url_prefix=url_prefix)
    count = run_db(lambda db: db.requeues.requeue_matching(which, limit=limit))
    console.print(f"requeued {count:,} timer{'' if count == 1 else 's'}")


def _states(values: list[str] | None) -> list[TimerState]:
    try:
        return parse_states(values or DEAD_LETTER_STATES, allowed=DEAD_LETTER_STATES)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--status") from None
