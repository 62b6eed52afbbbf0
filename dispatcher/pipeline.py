"""The send pipeline: every claimed row's way out of a dispatcher, one step after another.

1. **claimed**: a claim hands its rows over (``schedule``), each with its planned instant (the
   planner paces a capped stream); a row whose claim was revoked already is dropped, and one
   for a host slower than this dispatcher can serve within half a lease is given back
   (``Planner.hold_limit``; ``shed`` does the same at each heartbeat for rows held already);
2. **planned**: the row waits for its instant, then for a slot of its host (an open circuit
   gives it back to pending instead);
3. **still owned**: the last check before the request, with no ``await`` between it and the
   request: the leases are safe (``Ownership``) and the claim was not revoked. Past the safe
   window the row waits for the next heartbeat, which drops it if it was taken over;
4. **sent**: the sender's request, which never raises (an exception is a failed attempt);
5. **recorded**: the outcome goes to the recorder, fenced there by the lease's token.

A revocation (``on_revoke``: a cancel or a pause met the row) drops a row that is not being
sent and answers ``dropped``, or answers ``sending``. The protocol and why it holds:
docs/architecture.md, "Once".
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from core.caps import CappedStream, cap_wait, stream_scopes
from core.plan import circuit_wait
from db.connection import DatabaseUnavailable
from db.database import Database
from db.models import Claim, ClaimedTimer
from dispatcher.clock import ClockMap, sleep_until
from dispatcher.hosts import host_of
from dispatcher.ownership import Ownership
from dispatcher.planner import Planner
from dispatcher.recorder import Recorder
from dispatcher.retry import Failure
from dispatcher.sender import ERROR_CHARS, Result, Sender

log = logging.getLogger(__name__)

Lease = tuple[uuid.UUID, datetime, int]  # id, bucket, token

# A row a cap paces this much or more past its time notes why it waits (``waiting_on``), as a
# row waiting a second for its host does; shorter waits are normal and cost no write.
PACED_NOTE_SECONDS = 1.0


class Pipeline:
    """The rows a dispatcher holds, each on its way out (``schedule``)."""

    def __init__(
        self,
        db: Database,
        *,
        owner: str,
        planner: Planner,
        sender: Sender,
        recorder: Recorder,
        ownership: Ownership,
        progress: Callable[[], Coroutine[Any, Any, None]],
        waited: Callable[[], bool],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.db = db
        self.owner = owner
        self.planner = planner
        self.sender = sender
        self.recorder = recorder
        self.ownership = ownership
        self._progress = progress  # awaited after a row leaves, while someone waits (waited)
        self._waited = waited
        self._spawn = spawn
        # Every claimed row not yet recorded: waiting for its time or its host, or being sent.
        self.claimed: dict[asyncio.Task[None], ClaimedTimer] = {}
        self.sending: set[asyncio.Task[None]] = set()
        # Claims revoked by a cancel or a pause (id -> token, monotonic instant heard): a row
        # is dropped unsent when it is held, or as soon as its claim's answer brings it.
        self._revoked: dict[uuid.UUID, tuple[int, float]] = {}
        # Rows held that are not being sent yet, per host; the hosts being shed (logged once).
        self._waiting: Counter[str] = Counter()
        # When each held row's lease was last made or renewed (monotonic): renewed once it is
        # older than a share of the lease, not at every heartbeat.
        self._leased_at: dict[asyncio.Task[None], float] = {}
        self._shedding: set[str] = set()

    # -- 1. claimed -------------------------------------------------------------------------

    def schedule(self, claim: Claim, per_minute: int, stream: CappedStream | None) -> None:
        """Starts a task per claimed row that sends it at its planned instant (paced with the
        rest of its capped stream, if any); a row revoked already is dropped."""
        clock = ClockMap.of(claim)
        waiting = self._waiting
        limits: dict[str, int | None] = {}  # per host, for this claim (most name one host)
        # a row a cap paces to a second or more past its time says so while it waits
        paced = cap_wait(stream_scopes(stream), per_minute) if per_minute else None
        for row, deadline in self.planner.deadlines(claim, per_minute, stream):
            if self._revoked and self.is_revoked(row):
                self._spawn(self._answer(row, dropped=True))
                continue
            if paced is not None and deadline - clock.local(row.run_at) >= PACED_NOTE_SECONDS:
                self.recorder.note(row, paced)
            host = host_of(row.url)
            if host in limits:
                limit = limits[host]
            else:
                limit = limits[host] = self.planner.hold_limit(host)
            if limit is not None and waiting[host] >= limit:
                self._give_back([row], host, limit)
                continue
            waiting[host] += 1
            task = asyncio.create_task(self._send(row, host, deadline, clock))
            task.add_done_callback(self._never_ran)
            self.claimed[task] = row
            self._leased_at[task] = claim.answered_at

    def shed(self) -> int:
        """Gives back the rows waiting for a host beyond what this dispatcher sends to it
        within half a lease (``Planner.hold_limit``), the least urgent first: they wait
        pending, due when the rows kept should be sent, for this dispatcher or another.
        Returns how many. Run at each heartbeat."""
        self.planner.forget_latency(set(self._waiting))
        over = {}
        for host, count in self._waiting.items():
            limit = self.planner.hold_limit(host)
            if limit is not None and count > limit:
                over[host] = limit
            else:
                self._shedding.discard(host)
        if not over:
            return 0  # the usual case: no per-row work at all
        waiting: dict[str, list[tuple[asyncio.Task[None], ClaimedTimer]]] = {}
        for task, row in self.claimed.items():
            host = host_of(row.url)
            if host in over and task not in self.sending:
                waiting.setdefault(host, []).append((task, row))
        shed = 0
        for host, rows in waiting.items():
            limit = over[host]
            if len(rows) <= limit:
                continue
            rows.sort(key=lambda held: (-held[1].priority, held[1].run_at))
            for task, _ in rows[limit:]:
                task.cancel()
            self._give_back([row for _, row in rows[limit:]], host, limit)
            shed += len(rows) - limit
        return shed

    def _left(self, host: str) -> None:
        """A row for ``host`` stopped waiting (sent, given back or dropped)."""
        left = self._waiting[host] - 1
        if left > 0:
            self._waiting[host] = left
        else:
            del self._waiting[host]

    def _give_back(self, rows: list[ClaimedTimer], host: str, limit: int) -> None:
        wait = self.planner.send_time(host, limit)
        if host not in self._shedding:
            self._shedding.add(host)
            log.info(
                "host %s is slow: this dispatcher holds at most %d of its timers (what it "
                "sends to it within half a lease); the rest wait pending, about %.0f s",
                host, limit, wait,
            )  # fmt: skip
        why = f"host {host} is slow: more of its timers are due than this dispatcher sends soon"
        until = datetime.now(UTC) + timedelta(seconds=wait)  # only later, never earlier
        for row in rows:
            self.recorder.defer(row, until, why)

    async def _send(self, row: ClaimedTimer, host: str, deadline: float, clock: ClockMap) -> None:
        task = asyncio.current_task()
        assert task is not None
        waiting = True
        try:
            # 2. planned: its instant, then its host
            await sleep_until(deadline)
            while True:
                circuit = self.planner.circuit(host)
                if circuit is not None:
                    self.recorder.defer(row, circuit.until_db, circuit_wait(host, circuit.reason))
                    return
                await self.planner.enter(row, host)
                # 3. still owned: no await from here to the request, so nothing can change it
                if self._revoked and self.is_revoked(row):
                    self.planner.leave(host)
                    return  # dropped: on_revoke writes the answer
                if self.ownership.safe():
                    break
                # not confirmed alive recently enough to be sure the lease is still ours: the
                # next heartbeat renews it, or drops the row if it was taken over
                self.planner.leave(host)
                await self.ownership.wait_safe()
            # 4. sent: the sender never raises; anything that escapes it (a bug, something it
            # did not foresee) is a failed attempt with its error, counted against
            # max_attempts, never a row left to wait for its lease
            waiting = False
            self._left(host)
            self.sending.add(task)
            sent_mono = time.monotonic()
            try:
                result = await self.sender.send(row)
            except Exception as exc:
                result = _raised(row, exc, sent_mono)
            finally:
                self.planner.leave(host)
            # 5. recorded; an occurrence of a series deleted or paused while it was being sent
            # is not retried
            self.planner.observe(host, result)
            ended = row.series_id is not None and self.is_revoked(row)
            self.recorder.outcome(
                row, result, clock.database(sent_mono), ended=ended,
                leased_at=self._leased_at.get(task, float("-inf")),
            )  # fmt: skip
        finally:
            if waiting:
                self._left(host)
            self.sending.discard(task)
            self.claimed.pop(task, None)
            self._leased_at.pop(task, None)
            if self._waited():  # most sends have no one waiting: no coroutine, no lock
                await self._progress()

    def _never_ran(self, task: asyncio.Task[None]) -> None:
        """A task cancelled before its first step (a revocation, a shed or a drop right after
        the claim) never enters ``_send``, so its ``finally`` does not run: done here."""
        row = self.claimed.pop(task, None)
        if row is None:
            return  # the usual case: _send's finally let go of it
        self._leased_at.pop(task, None)
        self._left(host_of(row.url))
        if self._waited():
            self._spawn(self._progress())

    # -- what the heartbeat and a revocation change ---------------------------------------

    def held_leases(self) -> list[Lease]:
        """Every lease held: rows waiting or being sent, and rows whose outcome or deferral
        is not written yet."""
        leases = {row.id: (row.id, row.bucket, row.lease_token) for row in self.claimed.values()}
        for lease in self.recorder.held_leases():
            leases.setdefault(lease[0], lease)
        return list(leases.values())

    def leases_to_renew(self, leased_before: float) -> tuple[list[Lease], list[asyncio.Task[None]]]:
        """The leases made or renewed before ``leased_before`` (monotonic) of rows held and of
        outcomes waiting to be written, and of every deferral that waits to be written; with
        the rows' tasks, to mark renewed (``renewed``)."""
        tasks = [t for t, at in self._leased_at.items() if at < leased_before]
        leases = {
            row.id: (row.id, row.bucket, row.lease_token)
            for row in (self.claimed[t] for t in tasks if t in self.claimed)
        }
        for lease in self.recorder.held_leases(leased_before):
            leases.setdefault(lease[0], lease)
        return list(leases.values()), tasks

    def renewed(self, tasks: list[asyncio.Task[None]], at: float) -> None:
        """The leases of these rows were renewed by a statement that started at ``at``."""
        for task in tasks:
            if task in self._leased_at:
                self._leased_at[task] = at

    def drop(self, ids: set[uuid.UUID]) -> int:
        """Cancels the rows of ``ids`` that are not being sent yet (no longer this
        dispatcher's to send); returns how many."""
        dropped = [
            task for task, row in self.claimed.items() if row.id in ids and task not in self.sending
        ]
        for task in dropped:
            task.cancel()
        return len(dropped)

    def waiting(self) -> dict[asyncio.Task[None], ClaimedTimer]:
        """The rows held that are not being sent (waiting for their instant or their host)."""
        return {t: row for t, row in self.claimed.items() if t not in self.sending}

    def on_revoke(self, payload: str) -> None:
        """A cancel or a pause revoked the claim of a row (NOTIFY timerhook_revoke, 'owner
        id token'): dropped now if it is held and not being sent, the answer written either
        way; remembered, in case the claim's answer has not brought the row yet."""
        try:
            owner, ident, token = payload.split()
            row_id, lease = uuid.UUID(ident), int(token)
        except ValueError:
            log.warning("ignored a malformed revocation %r", payload)
            return
        if owner != self.owner:
            return
        self._revoked[row_id] = (lease, time.monotonic())
        for task, row in self.claimed.items():
            if row.id == row_id and row.lease_token == lease:
                dropped = task not in self.sending
                if dropped:
                    task.cancel()
                self._spawn(self._answer(row, dropped=dropped))
                return

    def is_revoked(self, row: ClaimedTimer) -> bool:
        """Whether a cancel or a pause revoked this row's claim."""
        found = self._revoked.get(row.id)
        return found is not None and found[0] == row.lease_token

    def forget_revocations(self, heard_before: float) -> None:
        """Forgets revocations heard before a monotonic instant (a lease ago)."""
        self._revoked = {k: v for k, v in self._revoked.items() if v[1] > heard_before}

    async def _answer(self, row: ClaimedTimer, *, dropped: bool) -> None:
        try:
            await self.db.revocations.answer(row, owner=self.owner, dropped=dropped)
        except DatabaseUnavailable as exc:
            # The request that revoked answers 409 (not confirmed): never 2xx, then a send.
            log.warning("could not answer the revocation of timer %s: %s", row.id, exc)


def _raised(row: ClaimedTimer, exc: Exception, started: float) -> Result:
    """The failed attempt of a send that raised: connected, since the request may have gone
    out (the fault can come after the answer), so an at_most_once timer is not sent again."""
    log.exception("sending timer %s raised; recorded as a failed attempt", row.id)
    error = f"internal error while sending: {type(exc).__name__}: {exc}"
    latency = (time.monotonic() - started) * 1000
    return Result(None, error[:ERROR_CHARS], latency, Failure(None, connected=True))
