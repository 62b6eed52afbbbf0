"""Timer rows: insert, look up, claim, record, release and reap leases."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import TupleRow, class_row

from db.access import take_create_quota
from db.bulk import copy_timers
from db.connection import TRANSIENT, DatabaseUnavailable, PoolOwner, model_row
from db.ids import bucket_of, due_at_of, due_ms_of, lock_key
from db.models import (
    NO_CAPPED,
    Attempt,
    BatchCreate,
    CancelResult,
    CappedScopes,
    CappedStream,
    Claim,
    ClaimedTimer,
    CreatedTimer,
    DeliveryOptions,
    DueKey,
    HeldCandidate,
    HeldChoice,
    IdempotentCreate,
    PlanRow,
    QuotaRefusal,
    ReapedLease,
    Renewal,
    RequeueFilter,
    RequeueResult,
    RevocationState,
    SendOutcome,
    Timer,
    TimerSummary,
)
from db.query_loader import query
from db.states import TIMER_STATES, TimerState
from db.targets import host_of

log = logging.getLogger(__name__)


# How long a cancel or a pause waits for the dispatchers holding rows it revoked to answer
# (dropped unsent, or already sent); they answer within milliseconds unless frozen.
REVOKE_WAIT_SECONDS = 2.0
REVOKE_POLL_SECONDS = 0.005
REVOKE_POLL_MAX_SECONDS = 0.1


class QuotaExceeded(Exception):
    """A tenant's quota refused a create; nothing was written."""

    def __init__(self, refusal: QuotaRefusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Count:
    count: int


_PLAIN = DeliveryOptions()
# Dead letters requeued per statement by a bulk requeue.
_REQUEUE_BATCH = 5000
# Leases taken back per reap statement: a few dead dispatchers' worth (each holds at most its
# concurrency plus two batches, 2,256 by default); the dispatcher reaps again while a call
# took that many.
REAP_LIMIT = 10_000


def insert_params(
    delays_ms: Sequence[int],
    urls: Sequence[str],
    options: Sequence[DeliveryOptions] | None,
    *,
    shards: int,
    now: datetime | None,
    wake_ms: int | None = None,
) -> dict[str, object]:
    opts = options or [_PLAIN] * len(delays_ms)
    # Arrays as text literals joined in C (see array_literal): psycopg's list dumper walks
    # each element in Python, and this runs for every create.
    text, number = _quoted_or_null, _number_or_null
    return {
        "delay_ms": array_literal(map(str, delays_ms)),
        "url": array_literal(map(text, urls)),
        "payload": array_literal(text(o.payload) for o in opts),
        "headers": array_literal(text(o.headers) for o in opts),
        "timeout_ms": array_literal(number(o.timeout_ms) for o in opts),
        "max_attempts": array_literal(number(o.max_attempts) for o in opts),
        "delivery": array_literal(text(o.delivery) for o in opts),
        "priority": array_literal(number(o.priority) for o in opts),
        "resources": array_literal(
            text(" ".join(o.resources) if o.resources else None) for o in opts
        ),
        "request_id": array_literal(text(o.request_id) for o in opts),
        "tenant": array_literal(text(o.tenant) for o in opts),
        "host": array_literal(text(host_of(u)) for u in urls),
        "at_ms": array_literal(number(o.at_ms) for o in opts),
        "window_ms": array_literal(number(o.window_ms) for o in opts),
        "shards": shards,
        "now": now,
        "wake_ms": wake_ms,
    }


def named_rows(rows: Sequence[tuple[uuid.UUID, datetime]]) -> dict[str, object]:
    """The parameters that name rows to a statement: their ids and buckets, and the range of
    the buckets as two scalars. A range of scalar parameters prunes partitions when the
    executor starts, which neither a join with the rows nor ``bucket = any(array)`` does, so
    a statement over a batch sets up only the partitions that hold it (one or two), not all
    of them (about 368 at the default horizon)."""
    buckets = [bucket for _, bucket in rows]
    return {
        "id": [timer_id for timer_id, _ in rows],
        "bucket": buckets,
        "first_bucket": min(buckets),
        "last_bucket": max(buckets),
    }


def array_literal(items: Iterable[str]) -> str:
    """A PostgreSQL array's text form from its elements' (already quoted where needed)."""
    return "{" + ",".join(items) + "}"


def _number_or_null(value: float | None) -> str:
    return "NULL" if value is None else repr(value)


def _quoted_or_null(text: str | None) -> str:
    if text is None:
        return "NULL"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _replayed(ids: Sequence[uuid.UUID], at: datetime) -> list[CreatedTimer]:
    """The timers of an earlier batch as its replay answers them: time_left counted from
    ``at`` (the database clock), as GET /timer/{id} counts it."""
    now_ms = at.timestamp() * 1000
    return [
        CreatedTimer(
            id=i,
            due_at=due_at_of(i),
            time_left=max(0, math.ceil((due_ms_of(i) - now_ms) / 1000)),
        )
        for i in ids
    ]


async def earlier_create(
    conn: psycopg.AsyncConnection[TupleRow], key: str
) -> tuple[str, uuid.UUID, list[uuid.UUID] | None] | None:
    """Inside a keyed create's transaction: locks the key until the commit and returns what an
    earlier request with it made (its fingerprint, its timer or series, a batch's timers), or
    None if none did."""
    await conn.execute(query("idempotency_lock"), {"key": key})
    cur = await conn.execute(query("idempotency_get"), {"key": key})
    row = await cur.fetchone()
    return (row[0], row[1], row[2]) if row is not None else None


async def record_create(
    conn: psycopg.AsyncConnection[TupleRow], key: str, fingerprint: str, made: uuid.UUID,
    batch: list[uuid.UUID] | None = None,
) -> None:  # fmt: skip
    """Remembers what a keyed create made, in its transaction."""
    await conn.execute(
        query("idempotency_record"),
        {"key": key, "fingerprint": fingerprint, "timer_id": made, "timer_ids": batch},
    )


class DependencyRefused(Exception):
    """A timer named in ``after`` cannot be waited for; the message says which and why."""


_FINAL_FAILURES = ("failed", "dead", "cancelled")


async def lock_dependencies(
    conn: psycopg.AsyncConnection[TupleRow], after: Sequence[uuid.UUID], tenant: str
) -> list[tuple[uuid.UUID, datetime, str]]:
    """The timers a create waits for, locked to its commit: (id, bucket, state) each;
    DependencyRefused when one is not a one-shot timer of this tenant."""
    cur = await conn.execute(query("deps_lock"), named_rows([(i, bucket_of(i)) for i in after]))
    found = {r[0]: r for r in await cur.fetchall()}
    for timer_id in after:
        row = found.get(timer_id)
        if row is None or row[3] != tenant:
            raise DependencyRefused(f"no timer with id {str(timer_id)!r}")
        if row[4] is not None:
            raise DependencyRefused(
                f"{timer_id} is an occurrence of a recurring timer; only one-shot timers can "
                "be waited for"
            )
    return [(r[0], r[1], r[2]) for r in (found[i] for i in after)]


async def block_on(
    conn: psycopg.AsyncConnection[TupleRow], timer_id: uuid.UUID,
    deps: Sequence[tuple[uuid.UUID, datetime, str]],
) -> None:  # fmt: skip
    """Records what a new timer waits for: failed at once if one of them ended failed, dead
    or cancelled; blocked while any is not delivered yet."""
    bucket = bucket_of(timer_id)
    failure = next((d for d in deps if d[2] in _FINAL_FAILURES), None)
    waiting = sum(1 for d in deps if d[2] != "delivered")
    reason = f"after: waiting for {waiting} of its dependencies" if waiting else None
    params = {
        **named_rows([(d[0], d[1]) for d in deps]), "timer_id": timer_id,
        "timer_bucket": bucket, "reason": None if failure else reason,
    }  # fmt: skip
    await conn.execute(query("deps_insert"), params)
    if failure is not None:
        await conn.execute(
            query("deps_fail_new"),
            {"timer_id": timer_id, "timer_bucket": bucket,
             "reason": f"dependency {failure[0]} ended {failure[2]}"},
        )  # fmt: skip


class TimerStore(PoolOwner):
    """Every query on the timers table."""

    async def insert(
        self,
        delays_ms: Sequence[int],
        urls: Sequence[str],
        *,
        shards: int,
        now: datetime | None = None,
        options: Sequence[DeliveryOptions] | None = None,
        wake_within_ms: int | None = None,
    ) -> list[CreatedTimer]:
        """Inserts timers in one statement and one commit; returns them in input order.

        ``options`` gives each timer's request shape and policy (default: the plain request).
        ``wake_within_ms``: a timer due within that many milliseconds wakes the dispatchers
        at the commit (LISTEN/NOTIFY, db/listen.py); None wakes none.
        Not retried on a lost connection: the commit may have happened, and a blind retry
        would create a second timer. The caller reports the failure instead.
        """
        params = insert_params(
            delays_ms, urls, options, shards=shards, now=now, wake_ms=wake_within_ms
        )

        async def once() -> list[CreatedTimer]:
            async with self.connection() as conn:
                cur = await conn.execute(query("timer_insert"), params)
                rows = await cur.fetchall()
            return [CreatedTimer(id=r[1], due_at=r[2], time_left=int(r[3])) for r in rows]

        return await self._inserting(once, ahead_ms=max(delays_ms, default=0), now=now)

    async def insert_idempotent(
        self,
        *,
        key: str | None,
        fingerprint: str,
        delay_ms: int,
        url: str,
        shards: int,
        options: DeliveryOptions | None = None,
        quota: bool = False,
        wake_within_ms: int | None = None,
        after: Sequence[uuid.UUID] = (),
    ) -> IdempotentCreate:
        """Creates one timer for a keyed request, or finds the one an earlier request with the
        same key created. Lookup, insert and record share one transaction under a lock on the
        key. Not retried on a lost connection, like insert.

        ``quota``: the timer's tenant has quotas; they are checked (and a creates token
        spent) in the same transaction, after the key's lookup (a replay spends nothing), and
        a refusal raises QuotaExceeded with nothing written. ``key`` None: a plain create.
        ``after``: timers of the same tenant it waits for (DependencyRefused, nothing
        written, when one is unknown, another tenant's, or an occurrence of a series).
        """
        params = insert_params(
            [delay_ms], [url], [options] if options else None, shards=shards, now=None,
            wake_ms=wake_within_ms,
        )  # fmt: skip
        tenant = options.tenant if options else "default"

        async def once() -> IdempotentCreate:
            async with self.connection() as conn, conn.transaction():
                if key is not None:
                    earlier = await earlier_create(conn, key)
                    if earlier is not None:
                        return IdempotentCreate(
                            timer_id=earlier[1], replayed=True, conflict=earlier[0] != fingerprint
                        )
                if quota:
                    refusal = await take_create_quota(conn, tenant)
                    if refusal is not None:
                        raise QuotaExceeded(refusal)
                deps = await lock_dependencies(conn, after, tenant) if after else []
                cur = await conn.execute(query("timer_insert"), params)
                row = await cur.fetchone()
                assert row is not None
                if after:
                    await block_on(conn, row[1], deps)
                if key is not None:
                    await record_create(conn, key, fingerprint, row[1])
            return IdempotentCreate(timer_id=row[1], replayed=False, conflict=False)

        return await self._inserting(once, ahead_ms=delay_ms, now=None)

    async def insert_batch(
        self,
        delays_ms: Sequence[int],
        urls: Sequence[str],
        options: Sequence[DeliveryOptions],
        *,
        shards: int,
        key: str | None = None,
        fingerprint: str = "",
        quota: bool = False,
        wake_within_ms: int | None = None,
        now: datetime | None = None,
    ) -> BatchCreate:
        """Creates a batch of timers with one COPY and one commit, all or none; returns them in
        input order. ``key``: as insert_idempotent (the earlier batch's timers, by its key, or
        a conflict when the body differs). ``quota``: the tenant's quotas are checked for the
        whole batch (every timer is its tenant's: ``options[0].tenant``). Not retried on a
        lost connection, like insert."""
        tenant = options[0].tenant if options else "default"

        async def once() -> BatchCreate:
            async with self.connection() as conn, conn.transaction():
                if key is not None:
                    earlier = await earlier_create(conn, key)
                    if earlier is not None:
                        if earlier[0] != fingerprint or earlier[2] is None:
                            return BatchCreate([], replayed=True, conflict=True)
                        clock = await conn.execute(query("clock_now"), {"now": now})
                        (at,) = await clock.fetchone() or (None,)
                        return BatchCreate(_replayed(earlier[2], at), replayed=True, conflict=False)
                if quota:
                    refusal = await take_create_quota(conn, tenant, count=len(delays_ms))
                    if refusal is not None:
                        raise QuotaExceeded(refusal)
                created = await copy_timers(
                    conn, delays_ms, urls, options, shards=shards, wake_ms=wake_within_ms, now=now
                )
                if key is not None:
                    ids = [c.id for c in created]
                    await record_create(conn, key, fingerprint, ids[0], ids)
            return BatchCreate(created, replayed=False, conflict=False)

        return await self._inserting(once, ahead_ms=max(delays_ms, default=0), now=now)

    async def _inserting(
        self, once: Callable[[], Awaitable[T]], *, ahead_ms: int, now: datetime | None
    ) -> T:
        """Runs an insert; a day without a partition (maintenance behind, say after days down)
        gets its partitions made on the spot and the insert runs once more. A lost database
        becomes DatabaseUnavailable; nothing was written then, or the caller cannot know."""
        try:
            try:
                return await once()
            except pg_errors.CheckViolation as exc:
                if "no partition" not in str(exc):
                    raise
                log.warning("a timer's partition was missing; creating partitions now")
            async with self.connection() as conn:
                await conn.execute(
                    query("partition_ensure_ahead"), {"ahead_ms": ahead_ms, "now": now}
                )
            return await once()
        except DatabaseUnavailable:
            raise
        except TRANSIENT as exc:  # a statement-level failure: nothing was written
            raise DatabaseUnavailable(f"timer_insert: {exc}") from exc

    async def purge_dependencies(self, *, retention_days: int) -> int:
        """Forgets what timers older than the retention waited for (once they wait no more)."""
        cutoff = datetime.now(UTC) - timedelta(days=retention_days + 1)
        return await self.run("deps_purge", {"cutoff": cutoff}, budget=self.long_budget)

    async def purge_revocations(self, *, now: datetime | None = None) -> int:
        """Deletes revocations older than a day whose claim no longer holds its row."""
        return await self.run("revocations_purge", {"now": now}, budget=self.long_budget)

    async def purge_idempotency(self, *, hours: int, now: datetime | None = None) -> int:
        """Forgets idempotency keys older than ``hours``; returns how many."""
        return await self.run(
            "idempotency_purge", {"hours": hours, "now": now}, budget=self.long_budget
        )

    async def get(
        self, timer_id: uuid.UUID, *, tenant: str | None = None, now: datetime | None = None
    ) -> Timer | None:
        """The timer with this id, looked up in the one partition its id names; with
        ``tenant``, only if it belongs to that tenant."""
        params = {"id": timer_id, "bucket": bucket_of(timer_id), "tenant": tenant, "now": now}
        return await self.fetch_one("timer_get", Timer, params)

    async def cancel(
        self, timer_id: uuid.UUID, *, tenant: str | None = None, now: datetime | None = None
    ) -> CancelResult | None:
        """Cancels the timer if it is pending; None if there is no such timer (of ``tenant``,
        when given)."""
        # One statement: a repeat after a lost connection finds the timer cancelled already,
        # which is the same answer.
        params = {"id": timer_id, "bucket": bucket_of(timer_id), "tenant": tenant, "now": now}
        result = await self.fetch_one("timer_cancel", CancelResult, params)
        if result is not None and result.cancelled and result.dependents:
            await self.resolve_dependents([timer_id])  # they fail at once, saying why
        return result

    async def revoked(
        self, rows: Sequence[tuple[uuid.UUID, datetime, int]]
    ) -> list[RevocationState]:
        """Where the revocations of these leases (id, bucket, token) stand."""
        if not rows:
            return []
        params = {
            **named_rows([(i, b) for i, b, _ in rows]), "token": [t for _, _, t in rows],
        }  # fmt: skip
        return await self.fetch_all("revocation_state", RevocationState, params)

    async def settle(
        self, leases: Sequence[tuple[uuid.UUID, datetime, int]], *,
        wait: float = REVOKE_WAIT_SECONDS,
    ) -> list[RevocationState]:  # fmt: skip
        """Waits, ``wait`` seconds at most, until the fate of every revoked lease (id,
        bucket, token) is known: its owner answered, or it is no longer in flight under that
        lease. Returns where each stands. Polled: the owners answer in milliseconds."""
        give_up = time.monotonic() + wait
        pause = REVOKE_POLL_SECONDS
        while True:
            states = await self.revoked(leases)
            if all(s.settled for s in states) or time.monotonic() >= give_up:
                return states
            await asyncio.sleep(pause)
            pause = min(pause * 2, REVOKE_POLL_MAX_SECONDS)  # quick answers are the rule

    async def answer_revocation(self, row: ClaimedTimer, *, owner: str, dropped: bool) -> None:
        """This dispatcher's answer to the revocation of a row it holds: dropped unsent (the
        timer cancelled) or its request gone out already."""
        params = {
            "id": row.id, "bucket": row.bucket, "token": row.lease_token, "owner": owner,
            "answer": "dropped" if dropped else "sending",
        }  # fmt: skip
        (dependents,), *_ = await self.rows("revocation_answer", params)
        if dependents:
            await self.resolve_dependents([row.id])

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

    async def claim_held(
        self,
        choose: Callable[[list[HeldCandidate], dict[str, uuid.UUID]], Awaitable[HeldChoice]],
        *,
        owner: str,
        lookahead_seconds: float,
        lease_seconds: float,
        limit: int = 1000,
        now: datetime | None = None,
    ) -> Claim | None:
        """The resource pass, in one transaction under the fleet-wide pass lock: reads the
        due rows that name resources and the holds on those resources, lets ``choose`` pick
        which go (and say why the others wait), then leases the chosen rows together with
        their holds and notes the reasons. None when another dispatcher is making the pass.
        """

        async def op() -> Claim | None:
            async with self.connection() as conn, conn.transaction():
                cur = await conn.execute(query("resource_pass_lock"))
                got = await cur.fetchone()
                if not got or not got[0]:
                    return None
                cand = conn.cursor(row_factory=class_row(HeldCandidate))
                await cand.execute(
                    query("held_candidates"),
                    {"lookahead": lookahead_seconds, "limit": limit, "now": now},
                )
                candidates = await cand.fetchall()
                if not candidates:
                    return Claim([], time.monotonic())
                names = sorted({r for c in candidates for r in c.resources})
                cur = await conn.execute(query("hold_list"), {"resources": names})
                holds = {str(r): h for r, h in await cur.fetchall()}
                choice = await choose(candidates, holds)
                if choice.waiting:
                    await conn.execute(
                        query("timer_waiting_note"),
                        {
                            **named_rows([(c.id, c.bucket) for c, _ in choice.waiting]),
                            "reason": [why for _, why in choice.waiting],
                        },
                    )
                rows: list[ClaimedTimer] = []
                if choice.chosen:
                    claimed = conn.cursor(row_factory=model_row(ClaimedTimer))
                    await claimed.execute(
                        query("timer_claim_held"),
                        {
                            **named_rows([(c.id, c.bucket) for c in choice.chosen]),
                            "owner": owner,
                            "lease_seconds": lease_seconds,
                            "now": now,
                        },
                    )
                    rows = await claimed.fetchall()
                answered_at = time.monotonic()
            return Claim(rows, answered_at)

        return await self.retrying(op, what="timer_claim_held")

    async def note_waiting(self, notes: Sequence[tuple[uuid.UUID, datetime, str]]) -> int:
        """Writes why rows are held back (``waiting_on``), where the reason changed."""
        if not notes:
            return 0
        params = {**named_rows([(n[0], n[1]) for n in notes]), "reason": [n[2] for n in notes]}
        return await self.run("timer_waiting_note", params)

    async def holds(self, resources: Sequence[str]) -> dict[str, uuid.UUID]:
        """Which timer holds each of these resources now (those held)."""
        async with self.connection() as conn:
            cur = await conn.execute(query("hold_list"), {"resources": list(resources)})
            return {str(r): h for r, h in await cur.fetchall()}

    async def clock(self, now: datetime | None = None) -> datetime:
        """The database clock (or ``now``)."""
        async with self.connection() as conn:
            cur = await conn.execute(query("clock_now"), {"now": now})
            row = await cur.fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    async def plan_candidates(
        self, *, lookahead_seconds: float, limit: int, now: datetime | None = None
    ) -> list[PlanRow]:
        """What the next pass would look at (``timerhook plan``)."""
        params = {"lookahead": lookahead_seconds, "limit": limit, "now": now}
        return await self.fetch_all("plan_candidates", PlanRow, params)

    async def record(self, outcomes: Sequence[SendOutcome], *, owner: str) -> int:
        """Records send outcomes and their attempts in one statement, each fenced by its
        lease's token; returns how many rows it recorded (a stale outcome, whose lease was
        taken over, is not)."""
        if not outcomes:
            return 0
        # The arrays go as text literals joined in C: psycopg's list dumper walks each
        # element in Python, which was an eighth of the dispatcher's CPU at full speed.
        buckets = [o.bucket for o in outcomes]
        params = {
            "id": array_literal(map(str, (o.id for o in outcomes))),
            "bucket": array_literal(b.isoformat() for b in buckets),
            "first_bucket": min(buckets),
            "last_bucket": max(buckets),
            "state": array_literal(o.state for o in outcomes),
            "status": array_literal(_number_or_null(o.status) for o in outcomes),
            "error": array_literal(_quoted_or_null(o.error) for o in outcomes),
            "fired_at": array_literal(o.fired_at.isoformat() for o in outcomes),
            "latency_ms": array_literal(_number_or_null(o.latency_ms) for o in outcomes),
            "retry_in": array_literal(_number_or_null(o.retry_in) for o in outcomes),
            "held": [o.id for o in outcomes if o.held],
            "token": array_literal(str(o.token) for o in outcomes),
            "owner": owner,
        }
        # Conditioned on the lease (state and owner), so a repeat changes nothing more.
        (recorded, resolve), *_ = await self.rows("timer_record", params)
        if resolve:
            await self.resolve_dependents(resolve)
        return int(recorded)

    async def recorded_before(self, outcomes: Sequence[SendOutcome]) -> int:
        """How many of a record's outcomes are written, by it or by an earlier try whose
        answer was lost (``timer_record_repeats``); the rest are stale."""
        if not outcomes:
            return 0
        params = {
            **named_rows([(o.id, o.bucket) for o in outcomes]),
            "fired_at": [o.fired_at for o in outcomes],
        }
        (count,), *_ = await self.rows("timer_record_repeats", params)
        return int(count)

    async def resolve_dependents(self, ids: Sequence[uuid.UUID]) -> None:
        """The timers waiting for these (whose outcome is final): released when every one they
        wait for was delivered, failed at once when one ended failed, dead or cancelled, and
        so on down their own dependents. Safe to repeat (a crash before it is caught up by
        the maintenance job's ``resolve_stuck``)."""
        todo = list(ids)
        while todo:
            found = await self.rows("deps_resolve", {"id": todo}, generic=True)
            todo = list(found[0][0]) if found else []

    async def resolve_stuck(self) -> int:
        """Resolves the dependents a dispatcher left blocked when it died between recording an
        outcome and resolving it (or a lease reaped as failed); returns how many dependencies
        were looked at again. Reads nothing else while no timer waits for another."""
        (any_deps,), *_ = await self.rows("deps_any", {})
        if not any_deps:
            return 0
        stuck = [row[0] for row in await self.rows("deps_stuck", {}, generic=True)]
        if stuck:
            await self.resolve_dependents(stuck)
        return len(stuck)

    async def dependencies(self, timer_id: uuid.UUID) -> list[tuple[uuid.UUID, TimerState]]:
        """The timers this one waits for (``after``), with their states."""
        rows = await self.rows(
            "deps_of", {"id": timer_id, "bucket": bucket_of(timer_id)}, generic=True
        )
        return [(r[0], r[1]) for r in rows]

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

    async def counts(self) -> dict[str, int]:
        """How many timers are in each state."""
        async with self.connection() as conn:
            cur = await conn.execute(query("timer_counts"))
            return {str(state): int(n) for state, n in await cur.fetchall()}

    async def listing(
        self,
        *,
        states: Sequence[TimerState] = TIMER_STATES,
        limit: int,
        after: uuid.UUID | None = None,
        tenant: str | None = None,
        once_only: bool = False,
    ) -> list[TimerSummary]:
        """Up to ``limit`` timers in the given states (of ``tenant``, when given), in id (due)
        order after ``after``; ``once_only``: not the occurrences of recurring timers."""
        params = {
            "tenant": tenant,
            "once_only": once_only,
            "states": list(states),
            "limit": limit,
            "after": after,
            "after_bucket": bucket_of(after) if after else None,
        }
        # A generic plan: planned once per connection, not over every partition per page.
        return await self.fetch_all("timer_list", TimerSummary, params, generic=True)

    async def attempts(self, timer_id: uuid.UUID) -> list[Attempt]:
        """Every recorded attempt of a timer, oldest first."""
        params = {"id": timer_id, "bucket": bucket_of(timer_id)}
        return await self.fetch_all("attempt_list", Attempt, params)

    async def requeue(
        self, timer_id: uuid.UUID, *, tenant: str | None = None, now: datetime | None = None
    ) -> RequeueResult | None:
        """Requeues one dead or failed timer (due now, a fresh round of attempts); None if
        there is no such timer (of ``tenant``, when given)."""
        # A repeat finds the timer pending: it reports "not requeued", never requeues twice.
        params = {"id": timer_id, "bucket": bucket_of(timer_id), "tenant": tenant, "now": now}
        return await self.fetch_one("timer_requeue", RequeueResult, params)

    async def requeue_matching(
        self, which: RequeueFilter, *, limit: int | None = None, now: datetime | None = None
    ) -> int:
        """Requeues the dead letters that match (at most ``limit``); returns how many. Runs in
        batches of a few thousand, each its own short transaction."""
        started = await self.clock(now)
        cutoff = min(which.finished_before, started) if which.finished_before else started
        total = 0
        while limit is None or total < limit:
            batch = _REQUEUE_BATCH if limit is None else min(_REQUEUE_BATCH, limit - total)
            params: dict[str, object] = {
                "states": list(which.states),
                "url_prefix": which.url_prefix,
                "finished_after": which.finished_after,
                "finished_before": cutoff,
                "limit": batch,
                "now": now,
            }

            done = await self.run("timers_requeue", params, budget=self.long_budget)
            total += done
            if done < batch:
                break
        if total:
            log.info("requeued %d dead letters", total)
        return total
