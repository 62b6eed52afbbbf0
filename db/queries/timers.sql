-- Named queries on the timers table. Every time-dependent query takes %(now)s, which is NULL in
-- production (the database clock decides) and a chosen instant in tests.

-- name: timer_insert
-- Inserts one timer per element of the input arrays and returns, per input position, its id,
-- due time and time_left. Due times come from the database clock, never a server's.
with clock as (
    -- now, rounded up to the millisecond so that no due time is early
    select ceil(extract(epoch from coalesce(%(now)s::timestamptz, now())) * 1000)::bigint as now_ms
), input as (
    select t.ord, t.url, clock.now_ms + t.delay_ms as due_ms, t.delay_ms
    from unnest(%(delay_ms)s::bigint[], %(url)s::text[]) with ordinality as t(delay_ms, url, ord),
         clock
), rows as (
    -- referenced twice below, so materialised once: the ids inserted are the ids returned
    select ord, timerhook_id(due_ms) as id, url, delay_ms,
           'epoch'::timestamptz + due_ms * interval '1 millisecond' as due_at,
           'epoch'::timestamptz + ceil(due_ms / 1000.0) * interval '1 second' as bucket,
           floor(random() * %(shards)s)::smallint as shard
    from input
), inserted as (
    insert into timers (id, bucket, due_at, run_at, slot, shard, url)
    select id, bucket, due_at, due_at, bucket, shard, url from rows
    returning 1
)
select ord, id, due_at, ceil(delay_ms / 1000.0)::bigint as time_left,
       (select count(*) from inserted) as inserted
from rows
order by ord;

-- name: timer_get
-- One timer by id; the bucket (derived from the id) prunes the scan to one partition.
select id, state, due_at, run_at, url, attempts, created_at, fired_at, finished_at,
       last_status, last_error,
       greatest(ceil(extract(epoch from due_at - coalesce(%(now)s::timestamptz, now()))), 0)::bigint
           as time_left
from timers
where id = %(id)s and bucket = %(bucket)s;

-- name: timer_cancel
-- Cancels a pending timer. The row lock decides a race with a claim: a claim skips rows that a
-- cancel holds (SKIP LOCKED), and a cancel that waited for a claim's lock then sees the row in
-- flight. Returns the state found and whether this call cancelled it; no row if no such timer.
with target as (
    select t.id, t.bucket, t.state from timers t
    where t.id = %(id)s and t.bucket = %(bucket)s
    for update
), cancelled as (
    update timers t
    set state = 'cancelled', finished_at = coalesce(%(now)s::timestamptz, now())
    from target
    where t.id = target.id and t.bucket = target.bucket and target.state = 'pending'
    returning t.id
)
select target.state as found, exists (select 1 from cancelled) as cancelled from target;

-- name: bucket_keys_due
-- The oldest (slot, shard) keys with pending rows due by now + lookahead. A loose index scan:
-- each step jumps to the next key in the partial index instead of walking every row of a
-- herd. bucket <= slot always, so the bucket bound prunes the partitions that cannot be due
-- (the bound is a stable expression, not a CTE, so pruning happens at executor start-up).
with recursive keys as (
    (select t.slot, t.shard from timers t
     where t.state = 'pending'
       and t.slot <= coalesce(%(now)s::timestamptz, now()) + %(lookahead)s * interval '1 second'
       and t.bucket <= coalesce(%(now)s::timestamptz, now()) + %(lookahead)s * interval '1 second'
     order by t.slot, t.shard limit 1)
    union all
    select next.slot, next.shard
    from keys k,
         lateral (select t.slot, t.shard from timers t
                  where t.state = 'pending' and (t.slot, t.shard) > (k.slot, k.shard)
                    and t.slot <= coalesce(%(now)s::timestamptz, now())
                                  + %(lookahead)s * interval '1 second'
                    and t.bucket <= coalesce(%(now)s::timestamptz, now())
                                    + %(lookahead)s * interval '1 second'
                  order by t.slot, t.shard limit 1) as next
)
select slot, shard from keys limit %(limit)s;

-- name: bucket_claim
-- Takes one (slot, shard) key under a transaction-scoped advisory lock and leases up to
-- %(batch)s of its pending rows to %(owner)s. Returns no row when another dispatcher holds the
-- key right now (it moves on to the next key). The lock is released at commit, by which time
-- the rows are in flight under a lease and no longer visible to other claimers.
with clock as (
    select coalesce(%(now)s::timestamptz, now()) as now
), lock as (
    -- one claimer per key at a time, across every dispatcher
    select pg_try_advisory_xact_lock(%(lock_key)s) as got
), picked as (
    -- oldest first; SKIP LOCKED steps past a row that a cancel or requeue holds
    select t.id, t.bucket
    from timers t
    where t.slot = %(slot)s and t.shard = %(shard)s and t.state = 'pending'
      and t.bucket <= %(slot)s and (select got from lock)
    order by t.run_at
    limit %(batch)s
    for update skip locked
)
update timers t
set state = 'inflight', lease_owner = %(owner)s,
    lease_until = clock.now + %(lease_seconds)s * interval '1 second',
    attempts = t.attempts + 1
from picked, clock
where t.id = picked.id and t.bucket = picked.bucket
returning t.id, t.bucket, t.url, t.run_at, t.attempts, clock.now as db_now;

-- name: timer_record
-- Records the outcome of a batch of sends by their lease owner. A row whose lease was reaped
-- meanwhile (its owner was declared dead) is left alone: its new owner will record it.
update timers t
set state = r.state,
    fired_at = r.fired_at,
    finished_at = case when r.state in ('delivered', 'failed') then r.fired_at end,
    last_status = r.status,
    last_error = r.error,
    lease_owner = null,
    lease_until = null
from unnest(%(id)s::uuid[], %(bucket)s::timestamptz[], %(state)s::text[],
            %(status)s::integer[], %(error)s::text[], %(fired_at)s::timestamptz[])
     as r(id, bucket, state, status, error, fired_at)
where t.id = r.id and t.bucket = r.bucket and t.state = 'inflight' and t.lease_owner = %(owner)s;

-- name: lease_release
-- Gives back leased rows that were never sent (a clean shutdown), undoing their attempt count.
update timers t
set state = 'pending', lease_owner = null, lease_until = null, attempts = t.attempts - 1
from unnest(%(id)s::uuid[], %(bucket)s::timestamptz[]) as r(id, bucket)
where t.id = r.id and t.bucket = r.bucket and t.state = 'inflight' and t.lease_owner = %(owner)s;

-- name: lease_reap
-- Puts back to pending every in-flight row whose lease ran out or whose owner is dead (stale
-- heartbeat) or gone (deregistered): at-least-once, the row is sent again.
with clock as (
    select coalesce(%(now)s::timestamptz, now()) as now
), dead as (
    -- owners that can no longer be sending anything
    select d.id from dispatchers d, clock
    where d.stopped_at is not null
       or d.heartbeat_at < clock.now - %(dead_after_seconds)s * interval '1 second'
), victims as (
    -- read before the update so that the owner they are taken from can be reported
    select t.id, t.bucket, t.lease_owner
    from timers t, clock
    where t.state = 'inflight'
      and (t.lease_until < clock.now or t.lease_owner in (select id from dead))
    for update of t skip locked
)
update timers t
set state = 'pending', lease_owner = null, lease_until = null
from victims v
where t.id = v.id and t.bucket = v.bucket
returning t.id, v.lease_owner;

-- name: timer_counts
-- How many timers are in each state (admin and tests).
select state, count(*) as n from timers group by state order by state;
