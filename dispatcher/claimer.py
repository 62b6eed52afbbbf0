"""The claimer: due work to leased rows, following the claim protocol of docs/architecture.md.

One pass (``drain``) makes three kinds of claim, each a short transaction:

1. **The resource pass**: the due rows that name resources, chosen by the planner's
   ``choose_held`` under a fleet-wide advisory lock, leased together with their holds.
2. **Key claims** (no cap binding): the oldest due (slot, shard) keys, a tick plus 1.5 s ahead,
   each under ``pg_try_advisory_xact_lock`` so dispatchers share a herd instead of fighting.
   The live dispatchers split the keys between them (``share``): each claims its own keys
   first and another's only once that one should have claimed it (half a second into the
   lookahead: a dead or slow peer's keys still go on time), so two dispatchers do not claim
   every key in the same order, each finding half of them taken or drained by the other.
3. **Ranked claims** (a cap binds): only rows already due, highest priority first across every
   key, as many as the cap granted tokens for.
4. **The capped pass**: rows of a tenant or host with a cap of its own never go through 2 or 3
   (those claims leave them aside); each capped stream (a tenant, a host, or both) takes
   tokens from every cap that applies at once and leases that many of its rows, highest
   priority first, ahead of time while its caps have room and only rows already due while
   they bind. So a capped tenant or host waits on its own tokens while everyone else flows.

Rows leased are handed to the service (``hand_over``) with the cap's rate, for pacing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from core.caps import CappedScopes, CappedStream, cap_wait, stream_scopes
from core.plan import HeldCandidate, choose_held
from core.settings import Settings
from db.database import Database
from db.models import Claim, DueKey
from dispatcher.planner import Planner

log = logging.getLogger(__name__)

# How many (slot, shard) keys one pass looks at.
KEYS_PER_PASS = 64
# The key ``rehearse`` claims: long before any partition, so it leases nothing.
REHEARSAL_KEY = DueKey(datetime(2000, 1, 1, tzinfo=UTC), 0)
# Another dispatcher's key is claimed once it is due within the lookahead less this margin
# (seconds): its owner's pass has had that long to take it.
HELP_MARGIN_SECONDS = 0.5


class Claimer:
    """Finds due work and leases it, as much as there is room and tokens for."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        planner: Planner,
        *,
        owner: str,
        hand_over: Callable[[Claim, int, CappedStream | None], None],
        room: Callable[[], int],
        wait_for_room: Callable[[], Awaitable[None]],
        stopping: Callable[[], bool],
    ) -> None:
        self.db = db
        self.settings = settings
        self.planner = planner
        self.owner = owner
        self._hand_over = hand_over
        self._room = room
        self._wait_for_room = wait_for_room
        self._stopping = stopping
        self.lookahead_seconds = settings.claim_window_seconds
        # The resource pass looks at the current second as a whole (one choice), not further.
        self.held_lookahead_seconds = settings.tick_seconds + 0.5
        self.capped = False  # a cap said stop during the last pass: poll again soon
        # Per priority (index p - 1), the run_at where the last ranked claim stopped.
        self._resume: list[datetime | None] = [None] * 10
        self._now: datetime | None = None
        # (this dispatcher's rank, how many are alive): the key claims' split of the keys
        self.share = (0, 1)

    def set_peers(self, peers: list[str]) -> None:
        """The live dispatchers' ids (in id order, from the registry at each heartbeat):
        the keys are split between them. Not among them yet (or any more): every key is
        this dispatcher's."""
        self.share = (peers.index(self.owner), len(peers)) if self.owner in peers else (0, 1)

    def _owns(self, key: DueKey) -> bool:
        rank, size = self.share
        return size == 1 or (int(key.slot.timestamp()) + key.shard) % size == rank

    async def rehearse(self) -> None:
        """Runs a pass's reads and a key claim that leases nothing (a key in 2000): called
        in a ``db.warmth.rehearsal`` at start, so that they are planned before the first
        timer comes."""
        await self.db.leases.held_view(lookahead_seconds=self.held_lookahead_seconds)
        await self.db.leases.due_keys(
            limit=KEYS_PER_PASS, lookahead_seconds=self.lookahead_seconds,
            capped=self.planner.capped,
        )  # fmt: skip
        await self.db.leases.claim(
            REHEARSAL_KEY, owner=self.owner, batch=self.settings.batch_size,
            lease_seconds=self.settings.lease_seconds, capped=self.planner.capped,
        )  # fmt: skip

    async def drain(self, *, now: datetime | None = None) -> int:
        """One pass: claims what it may (by ``now``, default the database clock); returns how
        many rows it leased."""
        self.capped = False
        claimed = await self._held_pass(now)
        if self.planner.cap_binding:
            claimed += await self._ranked(now)
        else:
            claimed += await self._by_keys(now)
        if self.planner.capped:
            claimed += await self._capped_pass(now)
        return claimed

    # -- resources ----------------------------------------------------------------------

    async def _held_pass(self, now: datetime | None) -> int:
        room = self._room()
        if room <= 0 or self._stopping():
            return 0
        # 1. what the database holds: the due rows that name resources, and their holders
        candidates, holds = await self.db.leases.held_view(
            lookahead_seconds=self.held_lookahead_seconds, now=now
        )
        if not candidates:
            return 0
        # 2. the planner's choice (a plain function), then each stream's tokens, taken once:
        # the global cap's, and each capped tenant's or host's
        choice = choose_held(candidates, holds, room)
        streams: dict[CappedStream | None, list[HeldCandidate]] = {}
        for c in choice.chosen:
            streams.setdefault(self.planner.stream_of(c.tenant, c.host), []).append(c)
        chosen: list[HeldCandidate] = []
        waiting = list(choice.waiting)
        granted: dict[CappedStream | None, list[HeldCandidate]] = {}
        per_minute = 0
        for stream, rows in streams.items():
            grant = await self.planner.grant(len(rows), now, stream)
            per_minute = max(per_minute, grant.per_minute)
            granted[stream] = rows[: grant.granted]
            chosen += granted[stream]
            if grant.granted < len(rows):
                self.capped = True
                why = cap_wait(stream_scopes(stream), grant.per_minute)
                waiting += [(c, why) for c in rows[grant.granted :]]
        if waiting:
            await self.db.leases.note_waiting([(c.id, c.bucket, why) for c, why in waiting])
        # 3. the choice applied in one statement; tokens of rows it could not lease go back
        claim = await self.db.leases.claim_held(
            chosen, owner=self.owner, lease_seconds=self.settings.lease_seconds, now=now
        )
        leased = {r.id for r in claim.rows}
        for stream, rows in granted.items():
            unused = sum(1 for c in rows if c.id not in leased)
            if unused:
                await self.planner.give_back(unused, stream)
        if not claim.rows:
            return 0
        self._hand_over(claim, per_minute, None)
        return len(claim.rows)

    # -- no cap binding: by key, ahead of time -------------------------------------------

    async def _by_keys(self, now: datetime | None) -> int:
        claimed = 0
        while not self._stopping():
            keys = await self.db.leases.due_keys(
                limit=KEYS_PER_PASS, lookahead_seconds=self.lookahead_seconds,
                capped=self.planner.capped, now=now,
            )  # fmt: skip
            # Its own keys first; with none left in this list, the others' that their owners
            # should have taken by now. After its own, the list is read again: the keys the
            # others drained meanwhile are gone from it.
            taken = [k for k in keys if self._owns(k)]
            if not taken:
                # newest first: a live owner works from its oldest, so the two meet once
                late = (now or datetime.now(UTC)) + timedelta(
                    seconds=self.lookahead_seconds - HELP_MARGIN_SECONDS
                )
                taken = [k for k in reversed(keys) if k.slot <= late]
            progress = 0
            for key in taken:
                if self._stopping():
                    break
                progress += await self._claim_key(key, now)
                if self.capped or self.planner.cap_binding:
                    break
            claimed += progress
            # A cap said stop, nothing was claimable (none due, or every key held by another
            # dispatcher), or every due key was looked at: come back at the next tick or poll.
            if self.capped or self.planner.cap_binding:
                self.capped = True
                break
            if progress == 0 or (len(keys) < KEYS_PER_PASS and len(taken) == len(keys)):
                break
        return claimed

    async def _claim_key(self, key: DueKey, now: datetime | None) -> int:
        total = 0
        while not self._stopping():
            granted, leased = await self._leasing(
                lambda n: self.db.leases.claim(
                    key, owner=self.owner, batch=n, lease_seconds=self.settings.lease_seconds,
                    capped=self.planner.capped, now=now,
                ),
                now,
            )  # fmt: skip
            total += leased
            if granted == 0 or leased < granted or self.planner.cap_binding:
                break
        return total

    # -- a cap binds: only what is due, by priority --------------------------------------

    async def _ranked(self, now: datetime | None) -> int:
        claimed = 0
        self._now = now
        while not self._stopping():
            granted, leased = await self._leasing(self._claim_ranked, now)
            claimed += leased
            if granted == 0:
                break
            if leased < granted:
                # Fewer due rows than tokens: the cap no longer binds; claim ahead again.
                self.planner.cap_binding = False
                break
            if self.planner.cap_binding:
                self.capped = True
                break
        return claimed

    async def _claim_ranked(self, batch: int) -> Claim:
        claim = await self.db.leases.claim_ranked(
            owner=self.owner, batch=batch, lease_seconds=self.settings.lease_seconds,
            after=self._resume, capped=self.planner.capped, now=self._now,
        )  # fmt: skip
        for row in claim.rows:
            last = self._resume[row.priority - 1]
            if last is None or row.run_at > last:
                self._resume[row.priority - 1] = row.run_at
        return claim

    def forget_resume(self) -> None:
        """Ranked claims search each priority from its start again (every tick)."""
        self._resume = [None] * 10

    # -- capped tenants and hosts: each stream on its own tokens --------------------------

    async def _capped_pass(self, now: datetime | None) -> int:
        claimed = 0
        capped = self.planner.capped
        for stream in self.planner.streams():
            if self._stopping():
                break
            # ahead of time while the stream's caps have room; only what is due while they
            # bind, so that the few tokens go to the most important rows due
            lookahead = 0.0 if self.planner.binding(stream) else self.lookahead_seconds
            lease = self._capped_lease(stream, capped, lookahead, now)
            while not self._stopping():
                granted, leased = await self._leasing(lease, now, stream)
                claimed += leased
                if self.planner.binding(stream):
                    self.capped = True  # more may be due than tokens: poll again soon
                if granted == 0 or leased < granted or self.planner.binding(stream):
                    break
        return claimed

    def _capped_lease(
        self, stream: CappedStream, capped: CappedScopes, lookahead: float, now: datetime | None
    ) -> Callable[[int], Awaitable[Claim]]:
        async def lease(n: int) -> Claim:
            return await self.db.leases.claim_capped(
                stream, capped=capped, owner=self.owner, batch=n,
                lease_seconds=self.settings.lease_seconds, lookahead_seconds=lookahead, now=now,
            )  # fmt: skip

        return lease

    async def _leasing(
        self,
        lease: Callable[[int], Awaitable[Claim]],
        now: datetime | None,
        stream: CappedStream | None = None,
    ) -> tuple[int, int]:
        """One claim under the caps (the global one; a capped stream's too): tokens for as
        many rows as there is room for, a lease of up to that many, unused tokens given back,
        the rows handed over. Returns (tokens granted, rows leased); no tokens (a cap said
        stop, or stopping) is (0, 0)."""
        await self._wait_for_room()
        if self._stopping():
            return 0, 0
        grant = await self.planner.grant(min(self.settings.batch_size, self._room()), now, stream)
        if grant.granted == 0:
            self.capped = True
            return 0, 0
        claim = await lease(grant.granted)
        if len(claim.rows) < grant.granted:
            await self.planner.give_back(grant.granted - len(claim.rows), stream)
        if claim.rows:
            self._hand_over(claim, grant.per_minute, stream)
        return grant.granted, len(claim.rows)
