"""The plan stage: of the timers due now, which go out now, and why each of the others waits.

Every decision between claiming and sending is made here, over what the claimer found:

- **Caps**: tokens are taken from the global cap (a token bucket in PostgreSQL shared by the
  fleet) before rows are leased, and only as many rows are leased as were granted; sends
  under a cap are paced ``60 / per_minute`` seconds apart. While the cap binds, the claimer
  leases by priority across every key (``timer_claim_ranked``).
- **Resources**: ``choose_held`` is the satellite selector's rule, greedy by priority then due
  time: of the due rows that name resources, take each one whose resources are neither held
  nor taken by a row chosen before it. Rows due in the same second are one choice.
- **Per-host limits and circuits**: ``HostGate`` and ``Breaker`` (dispatcher/hosts.py); a row
  to a host with an open circuit is given back, pending until the circuit's cool-down ends,
  its attempt not counted.
- **Why it waits**: each held-back row gets a ``waiting_on`` text, written to the database
  (the resource pass writes its own; host-limit waits are noted through the recorder), and
  ``timerhook plan`` runs the same functions over what the database holds.

Pure decisions are plain functions with unit tests (tests/unit/test_planner.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from core.caps import NO_CAPPED, CappedScopes, CappedStream, Grant, stream_scopes
from core.settings import Settings
from db.connection import DatabaseUnavailable
from db.database import Database
from db.models import Claim, ClaimedTimer
from dispatcher.clock import ClockMap
from dispatcher.hosts import Breaker, HostGate
from dispatcher.sender import Result

log = logging.getLogger(__name__)

# While a cap binds, the claimer asks for tokens this often (seconds): the stream is smooth
# within each second, and what falls due meanwhile competes by priority for the next tokens...
CAP_POLL_SECONDS = 0.1
# ... and keeps about this much of paced sends in hand: enough to ride out a slow claim
# without a gap in the stream, little enough that a timer of higher priority that falls due
# meanwhile waits no longer than this behind the ones already in hand.
CAP_IN_HAND_SECONDS = 0.5
# A capped stream's send of a token goes this long after the token was minted in the shared
# bucket (refilled at the cap's rate): every dispatcher of the fleet sends its tokens at their
# minting instants plus this, so together they make one even stream, whoever took which token.
# Longer than a take usually lags a mint (a poll, CAP_POLL_SECONDS, and a claim).
CAP_SEND_DELAY_SECONDS = 0.25


def minted(grant: Grant) -> list[float]:
    """The send instant of each token of a take, oldest first: the local instant its bucket
    minted it (the fill rose past each whole token at the cap's rate; the take got the oldest
    ones) plus CAP_SEND_DELAY_SECONDS. Tokens that waited in a full bucket come out in the past
    (send them now); a fleet sending every token at its instant sends one even stream."""
    rate = grant.per_minute / 60.0
    return [
        grant.answered_at - (grant.available - j) / rate + CAP_SEND_DELAY_SECONDS
        for j in range(1, grant.granted + 1)
    ]


def ranked(rows: Sequence[ClaimedTimer]) -> list[ClaimedTimer]:
    """Rows in the order contention serves them: higher priority, then earlier run_at."""
    return sorted(rows, key=lambda r: (-r.priority, r.run_at))


@dataclass(frozen=True, slots=True)
class OpenCircuit:
    """A host's circuit as this dispatcher knows it: open until (both clocks), and why."""

    until_mono: float
    until_db: datetime
    reason: str


@dataclass(slots=True)
class Pace:
    """One capped stream as this dispatcher paces it."""

    binding: bool = False  # a take granted less than asked
    next: float = 0.0  # monotonic instant of the stream's next paced send
    per_minute: int = 0  # the caps' rate at the last take (0: none)
    last_take: float = 0.0  # monotonic instant of the last take
    # (capped streams) the send instants of the tokens of the last take, oldest first
    slots: list[float] = field(default_factory=list)


WaitingNote = Callable[[ClaimedTimer, str], None]

# A dispatcher holds, per host, at most the rows its slots send within this share of a lease.
HOLD_SHARE_OF_LEASE = 0.5
# The weight of each new answer in a host's latency average, and the least latency counted.
LATENCY_WEIGHT = 0.2
MIN_LATENCY = 0.001


class Planner:
    """Caps, pacing, per-host limits, circuits and the dispatcher's concurrency."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        owner: str,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.owner = owner
        self._changed = changed
        # Circuit openings and closes stored so far (signals for callers and tests).
        self.circuits_opened = 0
        self.circuits_closed = 0
        self._global = Pace()  # the stream of every row without a cap of its own
        self._paces: dict[CappedStream, Pace] = {}
        # The tenants and hosts with caps of their own (refreshed every tick).
        self.capped: CappedScopes = NO_CAPPED
        self._sem = asyncio.Semaphore(settings.concurrency)
        self.gate = HostGate(min(settings.host_concurrency, settings.concurrency))
        self.breaker = Breaker(
            threshold=settings.circuit_failures,
            base_seconds=settings.circuit_seconds,
            max_seconds=settings.circuit_max_seconds,
        )
        self._circuits: dict[str, OpenCircuit] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Seconds a host took to answer, a moving average per host with rows held
        # (hold_limit); forgotten with the last of its rows (forget_latency).
        self._latency: dict[str, float] = {}

    @property
    def cap_binding(self) -> bool:
        """The global cap binds: a take granted less than asked; claim only what is due."""
        return self._global.binding

    @cap_binding.setter
    def cap_binding(self, value: bool) -> None:
        self._global.binding = value

    # -- caps ---------------------------------------------------------------------------

    def streams(self) -> list[CappedStream]:
        """The capped streams: each capped tenant, each capped host, and each pair of both
        (whose rows take tokens from both caps)."""
        tenants, hosts = self.capped.tenants, self.capped.hosts
        found = [CappedStream(t, None) for t in tenants]
        found += [CappedStream(None, h) for h in hosts]
        found += [CappedStream(t, h) for t in tenants for h in hosts]
        return found

    def stream_of(self, tenant: str, host: str) -> CappedStream | None:
        """The capped stream a row of this tenant and host belongs to (None: uncapped)."""
        if not self.capped:
            return None
        t = tenant if tenant in self.capped.tenants else None
        h = host if host in self.capped.hosts else None
        return None if t is None and h is None else CappedStream(t, h)

    def binding(self, stream: CappedStream) -> bool:
        """Whether the stream's caps held back rows at its last take."""
        pace = self._paces.get(stream)
        return pace is not None and pace.binding

    async def refresh_scopes(self) -> None:
        """Learns which tenants and hosts have caps of their own (each tick)."""
        capped = await self.db.caps.capped()
        if capped != self.capped:
            log.info(
                "capped tenants: %s; capped hosts: %s",
                ", ".join(capped.tenants) or "none", ", ".join(capped.hosts) or "none",
            )  # fmt: skip
            self.capped = capped
            self._paces = {s: p for s, p in self._paces.items() if s in set(self.streams())}

    async def grant(
        self, wanted: int, now: datetime | None, stream: CappedStream | None = None
    ) -> Grant:
        """Takes up to ``wanted`` tokens of the global cap (and, for a capped stream, of its
        tenant's and host's caps at once); notes whether the caps bind.

        While they bind, a dispatcher keeps only a short queue of paced sends in hand (about
        CAP_IN_HAND_SECONDS): when the cap starts to bind it takes that much, then what the
        bucket refilled since its last take, so the stream keeps the cap's full rate and does
        not run dry when a claim is slow (a commit waiting for a busy disk). Tokens beyond
        that stay in (or go back to) the shared bucket, where the next take of any dispatcher
        spends them on the highest-priority work due by then. A long queue of its own would
        make a timer that falls due later wait behind it, whatever its priority.
        """
        pace = self._pace(stream)
        started = time.monotonic()
        was_binding = pace.binding
        if was_binding and pace.next - started > CAP_IN_HAND_SECONDS:
            return Grant(0, pace.per_minute)  # enough in hand: ask again at the next poll
        scopes = stream_scopes(stream)
        grant = await self.db.caps.take(scopes=scopes, wanted=wanted, now=now)
        since, pace.last_take = started - pace.last_take, started
        pace.binding = grant.granted < wanted
        pace.per_minute = grant.per_minute
        if pace.binding and grant.per_minute:
            seconds = min(since, CAP_IN_HAND_SECONDS) if was_binding else CAP_IN_HAND_SECONDS
            keep = max(1, math.ceil(grant.per_minute / 60 * seconds))
            if grant.granted > keep:
                await self.give_back(grant.granted - keep, stream)  # the newest tokens
                grant = Grant(keep, grant.per_minute, grant.available, grant.answered_at)
        if stream is not None:
            pace.slots = minted(grant) if grant.per_minute else []
        return grant

    async def give_back(self, n: int, stream: CappedStream | None = None) -> None:
        """Returns tokens taken for rows that were not there."""
        scopes = stream_scopes(stream)
        await self.db.caps.give_back(scopes=scopes, n=n)

    def _pace(self, stream: CappedStream | None) -> Pace:
        if stream is None:
            return self._global
        pace = self._paces.get(stream)
        if pace is None:
            pace = self._paces[stream] = Pace()
        return pace

    def deadlines(
        self, claim: Claim, per_minute: int, stream: CappedStream | None = None
    ) -> list[tuple[ClaimedTimer, float]]:
        """Each claimed row with the monotonic instant to send it: its run_at, or under a cap
        the next paced instant of its stream (sends ``60 / per_minute`` apart, a smooth
        stream), in the order contention serves them."""
        clock = ClockMap.of(claim)
        spacing = 60.0 / per_minute if per_minute else 0.0
        rows = claim.rows
        if spacing and stream is not None:
            # a capped stream claims ahead while its caps have room: rows due by now go
            # first, by priority; the ones ahead in their time order
            due = claim.answered_at
            rows = sorted(
                rows,
                key=lambda r: (
                    (0, -r.priority, r.run_at) if clock.local(r.run_at) <= due else (1, 0, r.run_at)
                ),
            )
        elif spacing:
            rows = ranked(rows)
        pace = self._pace(stream)
        planned = []
        slots = pace.slots if stream is not None else []
        for i, row in enumerate(rows):
            deadline = clock.local(row.run_at)
            if i < len(slots):
                # a capped stream: its token's minting instant plus the fleet's delay
                deadline = max(deadline, slots[i])
                pace.next = max(pace.next, deadline)
            elif spacing:
                deadline = max(deadline, pace.next, claim.answered_at)
                pace.next = deadline + spacing
            planned.append((row, deadline))
        if stream is not None:
            pace.slots = []
        return planned

    # -- hosts --------------------------------------------------------------------------

    def circuit(self, host: str) -> OpenCircuit | None:
        """The host's open circuit, if it is open now; past its cool-down, the host is
        probed one send at a time until one succeeds."""
        if not self._circuits:
            return None
        found = self._circuits.get(host)
        if found is None:
            return None
        if found.until_mono > time.monotonic():
            return found
        del self._circuits[host]
        if self.breaker.tripped(host):
            self.gate.set_probing(host, True)
        return None

    async def enter(self, row: ClaimedTimer, host: str) -> None:
        """Takes a slot of the row's host, then one of the dispatcher's concurrency, for its
        send; ``leave`` gives both back. A row that waits for its host long enough to matter
        is reported by ``note_waits``."""
        gate = self.gate
        await gate.acquire(host, priority=row.priority, due=row.run_at.timestamp(), item=row)
        try:
            await self._sem.acquire()
        except BaseException:
            gate.release(host)
            raise

    def note_waits(self, note: WaitingNote) -> None:
        """Says why each row that has waited a second or more for its host waits (each
        once): its ``waiting_on`` names the host limit. Called every tick; a short wait for a
        busy host is normal and costs no write."""
        for host, row in self.gate.waited(longer_than=1.0):
            assert isinstance(row, ClaimedTimer)
            note(
                row,
                f"host limit: {host} has {self.gate.active(host)} sends in flight in "
                f"dispatcher {self.owner} (TIMERHOOK_HOST_CONCURRENCY="
                f"{self.gate.limit_of(host)})",
            )

    def leave(self, host: str) -> None:
        """Gives back what ``enter`` took."""
        self._sem.release()
        self.gate.release(host)

    def hold_limit(self, host: str) -> int | None:
        """How many rows waiting for ``host`` this dispatcher may hold: as many as its slots
        for the host send within half a lease at the host's recent latency (the lease is
        renewed, but a row held longer waits in vain where another dispatcher's slots could
        send it). None while no answer was seen; at least one round of the slots."""
        latency = self._latency.get(host)
        if latency is None:
            return None
        slots = self.gate.limit
        return max(slots, int(slots * HOLD_SHARE_OF_LEASE * self.settings.lease_seconds / latency))

    def send_time(self, host: str, rows: int) -> float:
        """About how long this dispatcher's slots take to send ``rows`` rows to ``host``."""
        return rows / self.gate.limit * self._latency.get(host, 0.0)

    def forget_latency(self, keep: set[str]) -> None:
        """Forgets the latencies of hosts with no row held: none waiting (``keep``) and none
        being sent. A host whose every held row is being sent keeps its latency, so that the
        rows claimed meanwhile are held to ``hold_limit`` (forgotten, the next claim's rows
        for it were all kept, up to the whole buffer)."""
        self._latency = {h: s for h, s in self._latency.items() if h in keep or self.gate.active(h)}

    def observe(self, host: str, result: Result) -> None:
        """Feeds a send's result to the host's breaker, which opens or closes its circuit,
        and to its latency average."""
        if result.latency_ms is not None:
            seconds = max(result.latency_ms / 1000, MIN_LATENCY)
            before = self._latency.get(host)
            self._latency[host] = (
                seconds if before is None else before + (seconds - before) * LATENCY_WEIGHT
            )
        failure = result.failure
        if failure is None or failure.status is not None or failure.refused:
            if self.breaker.counting and self.breaker.success(host):
                self.gate.set_probing(host, False)
                log.info("circuit of host %s closed: it answers again", host)
                self._spawn(self._close(host))
            return
        if self.breaker.tripped(host) and host not in self._circuits:
            self.gate.set_probing(host, True)  # a failed probe: still one at a time
        trip = self.breaker.failure(
            host, result.error or "no answer", circuit_open=host in self._circuits
        )
        if trip is None:
            return
        until_mono = time.monotonic() + trip.seconds
        # Until the database confirms, the local estimate of its clock is now.
        estimate = datetime.now(UTC) + timedelta(seconds=trip.seconds)
        self._circuits[host] = OpenCircuit(until_mono, estimate, trip.reason)
        log.warning("circuit of host %s opened for %.0f s: %s", host, trip.seconds, trip.reason)
        self._spawn(self._open(host, trip.seconds, trip.failures, trip.reason))

    async def _open(self, host: str, seconds: float, failures: int, reason: str) -> None:
        until = await self.db.circuits.open(
            host=host, seconds=seconds, failures=failures, reason=reason, owner=self.owner
        )
        known = self._circuits.get(host)
        if known is not None:
            self._circuits[host] = OpenCircuit(known.until_mono, until, known.reason)
        self.circuits_opened += 1
        self._changed()

    async def _close(self, host: str) -> None:
        await self.db.circuits.close(host=host)
        self.circuits_closed += 1
        self._changed()

    async def refresh_circuits(self) -> None:
        """Learns the circuits other dispatchers opened (each tick)."""
        now = time.monotonic()
        for c in await self.db.circuits.list():
            if c.open and c.host not in self._circuits:
                self._circuits[c.host] = OpenCircuit(now + c.seconds_left, c.open_until, c.reason)

    def _spawn(self, op: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await op
            except DatabaseUnavailable as exc:
                log.error("circuit change not stored (the database is unreachable): %s", exc)

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
