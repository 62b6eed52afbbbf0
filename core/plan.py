"""The planner's plain values and rules, shared by the dispatcher's planner and by the API
and the CLI that explain it: the rows a resource pass looks at, its choice, the rows
``timerhook plan`` shows, and why a timer waits. No I/O."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from core.caps import GLOBAL, HOST, TENANT, cap_wait
from core.states import TimerState
from core.targets import host_of


def circuit_wait(host: str, reason: str) -> str:
    """Why a timer waits for an open circuit of its host (pending until the cool-down)."""
    return f"circuit open for host {host}: {reason}"


# Who holds each held resource now: (tenant, name) -> the holding timer's id. A resource
# name means the same resource only within one tenant.
Holds = dict[tuple[str, str], uuid.UUID]


@dataclass(frozen=True, slots=True)
class HeldCandidate:
    """A due pending row that names resources, as the resource pass sees it."""

    id: uuid.UUID
    bucket: datetime
    priority: int
    run_at: datetime
    resources: list[str]
    tenant: str = "default"
    host: str = ""


@dataclass(frozen=True, slots=True)
class HeldChoice:
    """What a resource pass decided: the rows to lease now, and each other row with the
    reason it waits."""

    chosen: list[HeldCandidate]
    waiting: list[tuple[HeldCandidate, str]]


@dataclass(frozen=True, slots=True)
class PlanRow:
    """A row the next pass would look at, for ``timerhook plan``."""

    id: uuid.UUID
    bucket: datetime
    state: TimerState
    url: str
    priority: int
    run_at: datetime
    resources: list[str] | None
    waiting_on: str | None
    lease_owner: str | None
    tenant: str = "default"


def choose_held(candidates: Sequence[HeldCandidate], holds: Holds, room: int) -> HeldChoice:
    """The resource choice of one pass: ``candidates`` in priority order (then due time),
    ``holds`` maps each held resource, by (tenant, name), to the timer holding it: a name
    means the same resource only within one tenant. Greedy: each candidate whose resources
    are free and not taken by one chosen before it goes, up to ``room`` of them; every other
    candidate gets the reason it waits."""
    taken: dict[tuple[str, str], HeldCandidate] = {}
    chosen: list[HeldCandidate] = []
    waiting: list[tuple[HeldCandidate, str]] = []
    for cand in candidates:
        reason = None
        for name in cand.resources:
            key = (cand.tenant, name)
            if key in holds:
                reason = f"resource {name} held by timer {holds[key]}"
                break
            if key in taken:
                first = taken[key]
                reason = (
                    f"resource {name} goes first to timer {first.id} (priority {first.priority})"
                )
                break
        if reason is None and len(chosen) >= room:
            reason = "its turn: this pass is full (the dispatcher's send buffer)"
        if reason is not None:
            waiting.append((cand, reason))
            continue
        chosen.append(cand)
        taken.update(((cand.tenant, name), cand) for name in cand.resources)
    return HeldChoice(chosen, waiting)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the next pass would do with one row: send it now, or why it waits."""

    row: PlanRow
    send_now: bool
    why: str


def plan_pass(
    rows: Sequence[PlanRow],
    *,
    holds: Holds,
    circuits: dict[str, str],
    tokens: float | None,
    room: int,
    scope_tokens: dict[str, float] | None = None,
) -> list[Decision]:
    """The next pass over what the database holds (``timerhook plan``), by the rules the
    dispatchers follow: open circuits first, then resources (``choose_held``), then the
    tokens of the caps of the row's tenant and host (``scope_tokens``, by scope, for those
    that have one) and of the global cap (None: no cap), in priority order, then due time."""
    left_in = dict(scope_tokens or {})
    pending = [r for r in rows if r.state == "pending"]
    held_rows = [r for r in pending if r.resources and host_of(r.url) not in circuits]
    candidates = [
        HeldCandidate(r.id, r.bucket, r.priority, r.run_at, list(r.resources or ()), r.tenant)
        for r in held_rows
    ]
    choice = choose_held(candidates, holds, room)
    resource_wait = {c.id: why for c, why in choice.waiting}
    left = None if tokens is None else int(tokens + 1e-9)
    decisions = []
    for row in rows:
        host = host_of(row.url)
        if row.state != "pending":
            why = f"in dispatcher {row.lease_owner}: {row.waiting_on}"
            decisions.append(Decision(row, False, why))
        elif host in circuits:
            decisions.append(Decision(row, False, circuit_wait(host, circuits[host])))
        elif row.id in resource_wait:
            decisions.append(Decision(row, False, resource_wait[row.id]))
        elif empty := [s for s in (TENANT + row.tenant, HOST + host) if left_in.get(s, 1.0) < 1]:
            decisions.append(Decision(row, False, cap_wait(empty[:1])))
        elif left is not None and left < 1:
            decisions.append(Decision(row, False, cap_wait([GLOBAL])))
        else:
            if left is not None:
                left -= 1
            for scope in (TENANT + row.tenant, HOST + host):
                if scope in left_in:
                    left_in[scope] -= 1
            # (a waiting_on it still carries is stale: its reason is gone)
            decisions.append(Decision(row, True, "nothing holds it back"))
    return decisions
