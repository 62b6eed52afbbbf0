"""Claiming and leasing: the due keys, the four claims, the resource pass, renewing, giving
back and reaping leases (docs/architecture.md, "The claim protocol")."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row

from core.caps import NO_CAPPED, CappedScopes, CappedStream
from core.ids import lock_key
from core.plan import HeldCandidate, Holds
from db.connection import PoolOwner, model_row
from db.models import Claim, ClaimedTimer, DueKey, ReapedLease, Renewal
from db.params import array_literal, named_rows
from db.query_loader import query

# Leases taken back per reap statement: a few dead dispatchers' worth (each holds at most its
# concurrency plus two batches, 2,256 by default); the dispatcher reaps again while a call
# took that many.
REAP_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class _Count:
    count: int


class LeaseStore(PoolOwner):
    """Leases due rows to a dispatcher, renews, gives back and reaps them."""

    async def due_keys(
        self,
        *,
        limit: int,
        lookahead_seconds: float = 0.0,
        capped: CappedScopes = NO_CAPPED,
        now: datetime | None = None,
    ) -> list[DueKey]:
        """The oldest (slot, shard) keys with rows due by now + lookahead (rows of the
        ``capped`` tenants and hosts aside)."""
        params = {"limit": limit, "lookahead": lookahead_seconds, "now": now, **capped.params()}
        return await self.fetch_all("bucket_keys_due", DueKey, params)

    async def claim(
        self,
        key: DueKey,
        *,
        owner: str,
        batch: int,
        lease_seconds: float,
        capped: CappedScopes = NO_CAPPED,
        now: datetime | None = None,
    ) -> Claim:
        """Leases up to ``batch`` pending rows of one key (rows of the ``capped`` tenants and
        hosts aside); none if another dispatcher holds it."""
        params = {
            "slot": key.slot,
            "shard": key.shard,
            "lock_key": lock_key(key.slot, key.shard),
            "owner": owner,
            "batch": batch,
            "lease_seconds": lease_seconds,
            "now": now,
            **capped.params(),
        }

        return await self._claiming("bucket_claim", params)

    async def claim_ranked(
        self,
        *,
        owner: str,
        batch: int,
        lease_seconds: float,
        after: Sequence[datetime | None] = (),
        capped: CappedScopes = NO_CAPPED,
        now: datetime | None = None,
    ) -> Claim:
        """Leases up to ``batch`` rows already due, highest priority first, then the earliest,
        across every key (the claim under a binding cap); ``after[p - 1]`` resumes priority
        p at that run_at."""
        resume = [*after, *[None] * (10 - len(after))][:10]
        params = {
            "owner": owner, "batch": batch, "lease_seconds": lease_seconds, "now": now,
            "after": resume, **capped.params(),
        }  # fmt: skip
        return await self._claiming("timer_claim_ranked", params)

    async def claim_capped(
        self,
        stream: CappedStream,
        *,
        capped: CappedScopes,
        owner: str,
        batch: int,
        lease_seconds: float,
        lookahead_seconds: float = 0.0,
        now: datetime | None = None,
    ) -> Claim:
        """Leases up to ``batch`` rows of one capped stream due by now + lookahead, highest
        priority first (its tokens were taken already). Planned generically (once per
        connection): it runs several times a second while a cap binds, and a fresh plan
        would weigh every partition of the horizon each time."""
        params = {
            "tenant": stream.tenant, "host": stream.host, "owner": owner, "batch": batch,
            "lease_seconds": lease_seconds, "lookahead": lookahead_seconds, "now": now,
            **capped.params(),
        }  # fmt: skip
        return await self._claiming("timer_claim_capped", params, generic=True)

    async def _claiming(
        self, name: str, params: dict[str, object], *, generic: bool = False
    ) -> Claim:
        """Runs a claim in its own transaction; the local instant is read before the commit,
        whose flush to disk can take tens of milliseconds. A claim that failed mid-way rolled
        back whole, so running it again is safe. ``generic``: as PoolOwner.rows has it."""

        async def op() -> Claim:
            async with self.connection() as conn, conn.transaction():
                cur = conn.cursor(row_factory=model_row(ClaimedTimer))
                await cur.execute(query(name), params, prepare=generic or None)
                rows = await cur.fetchall()
                answered_at = time.monotonic()
            return Claim(rows, answered_at)

        return await self.retrying(op, what=name)

    async def held_due(
        self, *, lookahead_seconds: float, limit: int = 1000, now: datetime | None = None
    ) -> list[HeldCandidate]:
        """The due rows that name resources, as the resource pass reads them (without its
        lock: a read, for the pass's rehearsal)."""
        params = {"lookahead": lookahead_seconds, "limit": limit, "now": now}
        return await self.fetch_all("held_candidates", HeldCandidate, params)

    async def held_view(
        self, *, lookahead_seconds: float, limit: int = 1000, now: datetime | None = None
    ) -> tuple[list[HeldCandidate], Holds]:
        """What a resource pass chooses from: the due rows that name resources (highest
        priority first) and the timer holding each of their resources now. A read; the
        choice is the planner's, and ``claim_held`` checks it again under the pass lock."""
        candidates = await self.held_due(lookahead_seconds=lookahead_seconds, limit=limit, now=now)
        if not candidates:
            return [], {}
        return candidates, await self.holds(sorted({r for c in candidates for r in c.resources}))

    async def claim_held(
        self,
        chosen: Sequence[HeldCandidate],
        *,
        owner: str,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> Claim:
        """Leases the rows a resource pass chose, with their holds, in one statement under
        the fleet-wide pass lock: a row taken meanwhile, or one whose resources another pass
        took since the choice was read, stays pending (the next pass chooses again). Safe to
        run again after a failure: it rolled back whole."""
        if not chosen:
            return Claim([], time.monotonic())
        params = {
            **named_rows([(c.id, c.bucket) for c in chosen]), "owner": owner,
            "lease_seconds": lease_seconds, "now": now,
        }  # fmt: skip

        async def op() -> Claim:
            async with self.connection() as conn, conn.transaction():
                await conn.execute(query("resource_pass_lock"))
                cur = conn.cursor(row_factory=model_row(ClaimedTimer))
                await cur.execute(query("timer_claim_held"), params)
                rows = await cur.fetchall()
                answered_at = time.monotonic()
            return Claim(rows, answered_at)

        return await self.retrying(op, what="timer_claim_held")

    async def note_waiting(self, notes: Sequence[tuple[uuid.UUID, datetime, str]]) -> int:
        """Writes why rows are held back (``waiting_on``), where the reason changed."""
        if not notes:
            return 0
        params = {**named_rows([(n[0], n[1]) for n in notes]), "reason": [n[2] for n in notes]}
        return await self.run("timer_waiting_note", params)

    async def holds(self, resources: Sequence[str]) -> Holds:
        """Which timer holds each resource of these names now, in any tenant, by (tenant,
        name): a name means the same resource only within one tenant."""
        async with self.connection() as conn:
            cur = await conn.execute(query("hold_list"), {"resources": list(resources)})
            return {(str(t), str(r)): h for t, r, h in await cur.fetchall()}

    async def release(
        self,
        timers: Sequence[ClaimedTimer],
        *,
        owner: str,
        until: datetime | None = None,
        reason: str | None = None,
    ) -> int:
        """Gives leased rows that were never sent back to pending, their attempt uncounted:
        due as before, or not before ``until`` (an open circuit) with ``reason`` as their
        ``waiting_on``."""
        if not timers:
            return 0
        params = {
            **named_rows([(t.id, t.bucket) for t in timers]),
            "token": [t.lease_token for t in timers],
            "owner": owner,
            "until": until,
            "reason": reason,
        }
        return await self._count("lease_release", params)

    async def renew(
        self,
        renew: Sequence[tuple[uuid.UUID, datetime, int]],
        *,
        owner: str,
        lease_seconds: float,
        counters: tuple[int, int, int] = (0, 0, 0),
        sweep: bool = True,
    ) -> Renewal:
        """The heartbeat of ``owner`` (publishing its counters: in flight, sent, failed), the
        renewal of the leases ``renew`` names (id, bucket, token), and (``sweep``) the
        give-back of rows leased to it that it does not name and whose lease is older than
        half a lease, in one statement (``lease_renew``). The caller names every lease it
        holds that is older than a share of the lease, so a held row never looks unheld."""
        in_flight, sent, failed = counters
        buckets = [bucket for _, bucket, _ in renew]
        params: dict[str, object] = {
            "owner": owner, "lease_seconds": lease_seconds, "in_flight": in_flight,
            "sent_total": sent, "failed_total": failed,
            # text literals joined in C (see record): this runs at every heartbeat
            "id": array_literal(str(i) for i, _, _ in renew),
            "bucket": array_literal(b.isoformat() for b in buckets),
            "token": array_literal(str(t) for _, _, t in renew),
            "first_bucket": min(buckets, default=None), "last_bucket": max(buckets, default=None),
            "sweep": sweep,
        }  # fmt: skip
        row = await self.fetch_one("lease_renew", Renewal, params)
        assert row is not None
        return row

    async def take_back(self, *, owner: str, known: Sequence[uuid.UUID]) -> int:
        """Gives back the rows leased to ``owner`` that it does not hold (``known``): claimed
        by a statement whose answer an outage lost, so never sent. Returns how many."""
        return await self._count("lease_take_back", {"owner": owner, "known": list(known)})

    async def _count(self, name: str, params: dict[str, object]) -> int:
        row = await self.fetch_one(name, _Count, params)
        return row.count if row else 0

    async def reap(
        self,
        *,
        dead: Sequence[tuple[str, datetime]] = (),
        now: datetime | None = None,
        limit: int = REAP_LIMIT,
    ) -> list[ReapedLease]:
        """Declares the ``dead`` peers dead (each with the heartbeat the caller saw unchanged
        for dead_after_seconds: one that heartbeated since is left alone) and takes back up to
        ``limit`` rows leased by them or by dispatchers that stopped or are not registered:
        at_least_once rows return to pending, at_most_once rows end failed (an occurrence
        that a later one of its coalescing series replaced ends skipped)."""
        params = {
            "dead": [d for d, _ in dead], "seen": [s for _, s in dead], "now": now,
            "limit": limit,
        }  # fmt: skip

        async def op() -> list[ReapedLease]:
            async with self.connection() as conn, conn.transaction():
                await conn.execute(query("reap_lock"))
                cur = conn.cursor(row_factory=class_row(ReapedLease))
                await cur.execute(query("lease_reap"), params)
                return await cur.fetchall()

        return await self.retrying(op, what="lease_reap")
