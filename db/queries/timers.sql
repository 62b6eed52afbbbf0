-- Named queries on the timers table. Every time-dependent query takes %(now)s, which is NULL in
-- production (the database clock decides) and a chosen instant in tests.

-- name: timer_insert
-- Inserts one timer per element of the input arrays and returns, per input position, its id
-- and due time, and the database clock it counted from (now_at; time_left is
-- core.timing.time_left of the two). Due times come from the database clock, never a server's (or, for
-- an absolute ``at``, are that instant, at_ms). Every column is given (db.models.DeliveryOptions
-- holds the defaults, for this statement and the batch's COPY alike).
with clock as (
    -- now, rounded up to the millisecond so that no due time is early
    select ceil(extract(epoch from coalesce(%(now)s::timestamptz, now())) * 1000)::bigint as now_ms
), input as (
    select t.ord, t.url, coalesce(t.at_ms, clock.now_ms + t.delay_ms) as due_ms,
           coalesce(t.at_ms - clock.now_ms, t.delay_ms) as delay_ms, t.window_ms, t.payload,
           t.headers,
           t.timeout_ms, t.max_attempts, t.delivery, t.priority, t.request_id, t.tenant, t.host,
           -- resources travel as one space-separated text per timer (unnest flattens arrays
           -- of arrays); names never hold a space
           string_to_array(t.resources, ' ') as resources
    from unnest(%(delay_ms)s::bigint[], %(url)s::text[], %(payload)s::jsonb[],
                %(headers)s::jsonb[], %(timeout_ms)s::integer[], %(max_attempts)s::integer[],
                %(delivery)s::text[], %(priority)s::smallint[], %(resources)s::text[],
                %(request_id)s::text[], %(tenant)s::text[], %(host)s::text[],
                %(at_ms)s::bigint[], %(window_ms)s::bigint[])
         with ordinality as t(delay_ms, url, payload, headers, timeout_ms, max_attempts,
                              delivery, priority, resources, request_id, tenant, host, at_ms,
                              window_ms, ord),
         clock
), rows as (
    -- referenced twice below, so materialised once: the ids inserted are the ids returned
    select ord, timerhook_id(due_ms) as id, url, delay_ms, window_ms, payload, headers,
           timeout_ms,
           max_attempts, delivery, priority, resources, request_id, tenant, host,
           'epoch'::timestamptz + due_ms * interval '1 millisecond' as due_at,
           timerhook_slot('epoch'::timestamptz + due_ms * interval '1 millisecond') as bucket,
           'epoch'::timestamptz + (due_ms + window_ms) * interval '1 millisecond'
               as deadline_at,
           floor(random() * %(shards)s)::smallint as shard
    from input
), inserted as (
    insert into timers (id, bucket, due_at, run_at, slot, shard, url, payload, headers,
                        timeout_ms, max_attempts, delivery, priority, resources, request_id,
                        tenant, host, deadline_at)
    -- a windowed row waits for the window planner, and without it goes a second before its
    -- deadline (never before its due time)
    select id, bucket, due_at,
           greatest(due_at, coalesce(deadline_at - interval '1 second', due_at)),
           timerhook_slot(greatest(due_at, coalesce(deadline_at - interval '1 second', due_at))),
           shard, url, payload, headers, timeout_ms,
           max_attempts, delivery, priority, resources, request_id, tenant, host, deadline_at
    from rows
    returning 1
), wake as (
    -- a timer due within the dispatchers' claim window (%(wake_ms)s; null: none) wakes them
    -- now instead of at their next tick (db/listen.py); delivered at commit, once a
    -- transaction however many rows it names
    select pg_notify('timerhook_due', '') from rows
    where rows.delay_ms < %(wake_ms)s::bigint
    limit 1
)
select ord, id, due_at,
       (select 'epoch'::timestamptz + now_ms * interval '1 millisecond' from clock) as now_at,
       (select count(*) from inserted) as inserted, (select count(*) from wake) as woke
from rows
order by ord;

-- name: timer_get
-- One timer by id; the bucket (derived from the id) prunes the scan to one partition. A
-- tenant's key reads only its own timers (%(tenant)s; null: any tenant's, for admin keys).
select id, state, due_at, run_at, url, attempts, created_at, fired_at, finished_at,
       last_status, last_error,
       coalesce(%(now)s::timestamptz, now()) as read_at,
       max_attempts, round_start, delivery, payload, headers, timeout_ms, priority, resources,
       waiting_on, request_id, tenant, series_id, occurrence, deadline_at,
       exists (select 1 from timer_deps d where d.timer_id = timers.id
                                           and d.bucket = timers.bucket) as has_deps
from timers
where id = %(id)s and bucket = %(bucket)s
  and (%(tenant)s::text is null or tenant = %(tenant)s::text);

-- name: timer_cancel
-- Cancels a pending timer. The row lock decides a race with a claim: a claim skips rows that a
-- cancel holds (SKIP LOCKED), and a cancel that waited for a claim's lock then sees the row in
-- flight. A row in flight has its claim revoked (timerhook_revoke): its owner drops it unless
-- its request went out, and says which (the caller waits for that answer, revoke_token).
-- Returns the state found and whether this call cancelled it; no row if no such timer.
with target as (
    select t.id, t.bucket, t.state, t.dependents, t.lease_token, t.lease_owner from timers t
    where t.id = %(id)s and t.bucket = %(bucket)s
      and (%(tenant)s::text is null or t.tenant = %(tenant)s::text)
    for update
), cancelled as (
    update timers t
    set state = 'cancelled', finished_at = coalesce(%(now)s::timestamptz, now())
    from target
    -- The bucket is the parameter, not target's column: the plan then holds one partition
    -- instead of every partition of the horizon (60 to 80 ms to plan at 365 days).
    where t.id = %(id)s and t.bucket = %(bucket)s and target.state = 'pending'
    returning t.id
), revoked as (
    select timerhook_revoke(array[target.id], array[target.bucket], array[target.lease_token],
                            array[target.lease_owner], null) as n
    from target where target.state = 'inflight'
)
select target.state as found, exists (select 1 from cancelled) as cancelled,
       target.dependents,
       case when (select count(*) from revoked) > 0 then target.lease_token end as revoke_token
from target;

-- name: bucket_keys_due
-- The oldest (slot, shard) keys with pending rows due by now + lookahead. A loose index scan:
-- each step jumps to the next key in the partial index instead of walking every row of a
-- herd. Rows that name resources are left to the resource pass (timer_claim_held), rows of a
-- capped tenant or host to the capped pass (timer_claim_capped). bucket <=
-- slot always, so the bucket bound prunes the partitions that cannot be due
-- (the bound is a stable expression, not a CTE, so pruning happens at executor start-up).
with recursive keys as (
    (select t.slot, t.shard from timers t
     where t.state = 'pending' and t.resources is null
       and not (t.tenant = any(%(capped_tenants)s::text[]) or t.host = any(%(capped_hosts)s::text[]))
       and t.slot <= coalesce(%(now)s::timestamptz, now()) + %(lookahead)s * interval '1 second'
       and t.bucket <= coalesce(%(now)s::timestamptz, now()) + %(lookahead)s * interval '1 second'
     order by t.slot, t.shard limit 1)
    union all
    select next.slot, next.shard
    from keys k,
         lateral (select t.slot, t.shard from timers t
                  where t.state = 'pending' and t.resources is null
                    and not (t.tenant = any(%(capped_tenants)s::text[])
                             or t.host = any(%(capped_hosts)s::text[]))
                    and (t.slot, t.shard) > (k.slot, k.shard)
                    and t.slot <= coalesce(%(now)s::timestamptz, now())
                                  + %(lookahead)s * interval '1 second'
                    and t.bucket <= coalesce(%(now)s::timestamptz, now())
                                    + %(lookahead)s * interval '1 second'
                  order by t.slot, t.shard limit 1) as next
)
select slot, shard from keys limit %(limit)s;

-- part: lease
-- The lease every claim sets on the rows it picked (as ``t``, with a ``clock`` CTE): in flight
-- to %(owner)s until %(lease_seconds)s from the clock's now, one more attempt, and a fencing
-- token one higher than the last lease's (docs/architecture.md, "Once").
set state = 'inflight', lease_owner = %(owner)s,
    lease_until = clock.now + %(lease_seconds)s * interval '1 second',
    attempts = t.attempts + 1, lease_token = t.lease_token + 1, waiting_on = null
from clock

-- part: claimed_row
-- The row every claim hands to its dispatcher: db.models.ClaimedTimer, field for field in
-- order. db_now is the database clock as each row is produced (clock_timestamp(), not the
-- transaction's start): the later it is read, the tighter the sender's timing.
returning t.id, t.bucket, t.url, t.run_at, t.attempts, t.max_attempts, t.round_start,
          t.delivery, t.payload::text as payload, t.headers, t.timeout_ms,
          case when %(now)s::timestamptz is null then clock_timestamp()
               else clock.now end as db_now,
          t.priority, t.resources, t.request_id, t.tenant, t.series_id, t.occurrence,
          t.lease_token

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
      and t.resources is null and t.bucket <= %(slot)s and (select got from lock)
      -- rows of a capped tenant or host go out through their own pass (timer_claim_capped)
      and not (t.tenant = any(%(capped_tenants)s::text[]) or t.host = any(%(capped_hosts)s::text[]))
    order by t.run_at
    limit %(batch)s
    for update skip locked
)
update timers t
-- use: lease
-- An array of ids, not a join with picked: a generic plan costs a join over the partitioned
-- table across every partition (368 at the default horizon), and while most of them were
-- never analyzed it prefers a hash join that reads whole partitions at every claim (5 ms and
-- more). With the array each partition's scan is its own choice (the primary key), and the
-- stable bucket bound leaves only the partitions that can hold due rows at executor start-up.
where t.id = any(array(select id from picked)) and t.bucket <= %(slot)s
-- use: claimed_row

-- name: timer_claim_ranked
-- Under a binding cap: leases up to %(batch)s pending rows already due, highest priority
-- first, then the earliest run_at, across every (slot, shard) key, so that the few tokens
-- there are go to the most important work of the whole fleet. Rows a cancel or another
-- claimer holds are skipped (SKIP LOCKED), never waited for. %(after)s[p] is the run_at
-- where the dispatcher's last claim of priority p stopped (it forgets them every tick, so a
-- row given back behind it waits a tick at most).
with clock as (
    select coalesce(%(now)s::timestamptz, now()) as now
), ranked as (
    -- one short range of timers_pending_rank_idx per priority, 10 down to 1: a backlog of
    -- future rows at one priority is never walked to reach the due rows of the next
    select c.id, c.bucket, c.priority, c.run_at
    from generate_series(10, 1, -1) as p(priority),
         lateral (select t.id, t.bucket, t.priority, t.run_at, t.deadline_at from timers t
                  where t.state = 'pending' and t.resources is null and t.priority >= 1
                    and t.priority = p.priority
                    and not (t.tenant = any(%(capped_tenants)s::text[])
                             or t.host = any(%(capped_hosts)s::text[]))
                    -- resumed where the last claim of this priority stopped: a herd's rows
                    -- claimed already leave dead index entries at the front of the range
                    and t.run_at >= coalesce((%(after)s::timestamptz[])[p.priority],
                                             '-infinity')
                    and t.run_at <= coalesce(%(now)s::timestamptz, now())
                    -- a windowed row waits for the window planner to give it its instant
                    and t.slot <= coalesce(%(now)s::timestamptz, now()) + interval '1 second'
                    -- a row due now has its bucket at the next whole second at the latest
                    and t.bucket <= coalesce(%(now)s::timestamptz, now()) + interval '1 second'
                  order by t.run_at
                  limit %(batch)s) as c
    -- timers without an SLA window first: a windowed one may still wait, within its window
    order by c.deadline_at is not null, c.priority desc, c.run_at
    limit %(batch)s
), picked as (
    -- ids as an array, not a join (see bucket_claim), under ranked's stable bucket bound
    select t.id from timers t
    where t.id = any(array(select id from ranked)) and t.state = 'pending'
      and t.bucket <= coalesce(%(now)s::timestamptz, now()) + interval '1 second'
    for update of t skip locked
)
update timers t
-- use: lease
where t.id = any(array(select id from picked))
  and t.bucket <= coalesce(%(now)s::timestamptz, now()) + interval '1 second'
-- use: claimed_row

-- name: timer_claim_capped
-- The capped pass: leases up to %(batch)s pending rows of one capped stream due by now +
-- %(lookahead)s seconds, highest priority first, then the earliest run_at. A stream is a
-- capped tenant (its rows to hosts without a cap), a capped host (its rows of tenants without
-- a cap), or both (%(tenant)s and %(host)s, null where the stream has none); its tokens were
-- taken from every cap that applies. Rows naming resources are left to the resource pass.
with clock as (
    select coalesce(%(now)s::timestamptz, now()) as now
), picked as (
    select t.id, t.bucket from timers t
    where t.state = 'pending' and t.resources is null and t.host >= ''
      and (case when %(tenant)s::text is null
                then not t.tenant = any(%(capped_tenants)s::text[])
                else t.tenant = %(tenant)s::text end)
      and (case when %(host)s::text is null
                then not t.host = any(%(capped_hosts)s::text[])
                else t.host = %(host)s::text end)
      -- due by now + lookahead (0 while the stream's caps bind: only what is due competes)
      and t.run_at <= coalesce(%(now)s::timestamptz, now()) + %(lookahead)s * interval '1 second'
      -- a windowed row waits for the window planner to give it its instant
      and t.slot <= coalesce(%(now)s::timestamptz, now())
                    + (%(lookahead)s + 1) * interval '1 second'
      -- a row due then has its bucket at the next whole second at the latest
      and t.bucket <= coalesce(%(now)s::timestamptz, now())
                      + (%(lookahead)s + 1) * interval '1 second'
    order by t.priority desc, t.run_at
    limit %(batch)s
    for update of t skip locked
)
update timers t
-- use: lease
-- ids as an array, not a join, under picked's stable bucket bound (see bucket_claim)
where t.id = any(array(select id from picked))
  and t.bucket <= coalesce(%(now)s::timestamptz, now())
                  + (%(lookahead)s + 1) * interval '1 second'
-- use: claimed_row

-- name: resource_pass_lock
-- One resource pass applies its choice at a time across the fleet (timer_claim_held, in the
-- same transaction): each sees the holds every earlier pass took. Held to the transaction,
-- which is short (one statement after it), so it is waited for.
select pg_advisory_xact_lock(hashtext('timerhook.resource_pass')::bigint);

-- name: held_candidates
-- Pending rows that name resources and fall due by now + lookahead (the current second as a
-- whole: timers due in the same second form one choice), highest priority first, then run_at.
select t.id, t.bucket, t.priority, t.run_at, t.resources, t.tenant, t.host
from timers t
where t.state = 'pending' and t.resources is not null
  and t.slot <= coalesce(%(now)s::timestamptz, now()) + %(lookahead)s * interval '1 second'
  and t.bucket <= coalesce(%(now)s::timestamptz, now()) + %(lookahead)s * interval '1 second'
order by t.priority desc, t.run_at
limit %(limit)s;

-- name: hold_list
-- The holds on any of the given resource names, in any tenant: tenant, name, holding timer.
select tenant, resource, timer_id from resource_holds
where resource = any(%(resources)s::text[]);

-- name: timer_claim_held
-- Leases the rows the resource pass chose and takes their holds, in one statement: a hold
-- exists exactly while its timer is leased. Run under resource_pass_lock. The choice was
-- made over a read without the lock, so it is checked here: a row cancelled or claimed
-- meanwhile is skipped, and so is one whose resources another pass took since (it stays
-- pending, for the next pass to choose again).
with clock as (
    select coalesce(%(now)s::timestamptz, now()) as now
), picked as (
    -- arrays, not joins: the buckets' range prunes at executor start-up, the ids use each
    -- partition's primary key (see bucket_claim and timer_record)
    select t.id from timers t
    where t.id = any(%(id)s::uuid[])
      and t.bucket between %(first_bucket)s::timestamptz and %(last_bucket)s::timestamptz
      and t.state = 'pending'
      and not exists (select 1 from resource_holds h
                      where h.tenant = t.tenant and h.resource = any(t.resources))
    for update of t skip locked
), leased as (
    update timers t
    -- use: lease
    where t.id = any(array(select id from picked))
      and t.bucket between %(first_bucket)s::timestamptz and %(last_bucket)s::timestamptz
    -- use: claimed_row
), held as (
    -- the primary key on resource is the last word: two holders of one resource cannot exist
    insert into resource_holds (tenant, resource, timer_id, bucket, owner)
    select l.tenant, unnest(l.resources), l.id, l.bucket, %(owner)s from leased l
)
select * from leased;

-- name: timer_waiting_note
-- Says why rows are held back (waiting_on); written only where the reason changed.
update timers t set waiting_on = r.reason
from unnest(%(id)s::uuid[], %(bucket)s::timestamptz[], %(reason)s::text[])
     as r(id, bucket, reason)
where t.id = r.id and t.bucket = r.bucket and t.state in ('pending', 'inflight')
  and t.waiting_on is distinct from r.reason
  -- the ids and the buckets' range again: partitions pruned at executor start-up, each
  -- remaining one read by its primary key (see timer_record)
  and t.id = any(%(id)s::uuid[])
  and t.bucket between %(first_bucket)s::timestamptz and %(last_bucket)s::timestamptz;

-- name: timer_record
-- Records the outcome of a batch of sends by their lease owner, and each attempt. A retry
-- (state pending) is due retry_in seconds from now and goes back into the bucket (slot) of
-- that second, like any timer, so caps and shards apply to it; its partition (bucket) never
-- changes. Fenced: an outcome is recorded only while the row is still leased to this owner
-- under the token its claim set. A stale one (the lease was taken over, and maybe the row
-- claimed again since) changes nothing; the caller counts it.
with outcome as (
    select * from unnest(%(id)s::uuid[], %(bucket)s::timestamptz[], %(state)s::text[],
                         %(status)s::integer[], %(error)s::text[], %(fired_at)s::timestamptz[],
                         %(latency_ms)s::double precision[], %(retry_in)s::double precision[],
                         %(token)s::bigint[])
         as r(id, bucket, state, status, error, fired_at, latency_ms, retry_in, token)
), recorded as (
    -- a retry is never due before the timer itself (greatest with due_at), so
    -- slot >= bucket holds: bucket is due_at's whole second
    update timers t
    set state = r.state,
        run_at = case when r.state = 'pending'
                      then greatest(now() + r.retry_in * interval '1 second', t.due_at)
                      else t.run_at end,
        slot = case when r.state = 'pending'
                    then timerhook_slot(greatest(now() + r.retry_in * interval '1 second',
                                                 t.due_at))
                    else t.slot end,
        fired_at = r.fired_at,
        finished_at = case when r.state in ('delivered', 'failed', 'dead', 'cancelled')
                           then r.fired_at end,
        last_status = r.status,
        last_error = r.error,
        lease_owner = null,
        lease_until = null,
        waiting_on = null
    from outcome r
    -- In flight and leased to this owner, said through the lease columns: timers_lease_check
    -- makes "lease_owner = owner and lease_until is not null" mean state = 'inflight'. Said
    -- as state = 'inflight', it matched timers_inflight_idx's predicate, and the generic plan
    -- walked every in-flight row of the partition (every dispatcher's) through that index,
    -- testing each against the whole id array: 2 ms and more per batch of 500, growing
    -- with the fleet. Without it, the ids are looked up in the primary key.
    where t.id = r.id and t.bucket = r.bucket
      and t.lease_owner = %(owner)s and t.lease_until is not null and t.lease_token = r.token
      -- the ids and the buckets' range again, beside the join: a join key alone prunes no
      -- partition before execution (nor does "= any" of an array parameter), so every
      -- partition (368 at the default horizon) was set up and scanned for in-flight rows at
      -- every record; a range of scalar parameters prunes at executor start-up, and the ids
      -- use each remaining partition's primary key
      and t.id = any(%(id)s::uuid[])
      and t.bucket between %(first_bucket)s::timestamptz and %(last_bucket)s::timestamptz
    returning t.id, t.bucket, t.attempts, t.state, t.dependents
), released as (
    -- the resource holds of the rows recorded (%(held)s lists only rows that named any; the
    -- usual batch names none, and the cardinality test skips the whole join then)
    delete from resource_holds h
    where cardinality(%(held)s::uuid[]) > 0
      and h.timer_id = any(%(held)s::uuid[])
      and h.timer_id in (select id from recorded)
), noted as (
    -- one attempt row per recorded outcome (a refused record writes none)
    insert into timer_attempts (timer_id, bucket, attempt, at, status, latency_ms, error,
                                dispatcher)
    select rec.id, rec.bucket, rec.attempts, r.fired_at, r.status, r.latency_ms, r.error,
           %(owner)s
    from recorded rec join outcome r on r.id = rec.id and r.bucket = rec.bucket
    on conflict do nothing
)
-- how many were recorded, and those with dependents (``after``) whose outcome is final:
-- the recorder resolves their dependents next
select (select count(*) from recorded) as recorded,
       coalesce((select array_agg(id) from recorded
                 where dependents and state in ('delivered', 'failed', 'dead', 'cancelled')),
                '{}')
           as resolve;

-- name: timer_record_repeats
-- Of a record's outcomes, how many are written: by it, or by an earlier try of it whose
-- answer was lost (the database froze, the client gave up at its deadline and closed the
-- connection, and the server ran the statement when it woke). Such a row carries the
-- outcome's own fired_at, the instant of that very send; a row taken over does not.
select count(*)
from unnest(%(id)s::uuid[], %(bucket)s::timestamptz[], %(fired_at)s::timestamptz[])
     as r(id, bucket, fired_at)
join timers t on t.id = r.id and t.bucket = r.bucket and t.fired_at = r.fired_at
-- pruned and looked up by primary key, as in timer_record
where t.id = any(%(id)s::uuid[])
  and t.bucket between %(first_bucket)s::timestamptz and %(last_bucket)s::timestamptz;

-- name: revocation_answer
-- A dispatcher's answer to a revocation (timerhook_revoke) of a row it holds: 'dropped' (never
-- sent: cancelled, its attempt uncounted, its holds freed, the reason as its last_error) or
-- 'sending' (its request had gone out). Fenced by the lease. Returns whether the dropped
-- timer has dependents to resolve.
with answered as (
    update revocations v set answer = %(answer)s
    where v.timer_id = %(id)s and v.bucket = %(bucket)s and v.token = %(token)s
      and v.answer is null
    returning v.reason
), dropped as (
    update timers t
    set state = 'cancelled', finished_at = now(), lease_owner = null, lease_until = null,
        attempts = t.attempts - 1, waiting_on = null, last_error = (select reason from answered)
    where %(answer)s = 'dropped' and exists (select 1 from answered)
      and t.id = %(id)s and t.bucket = %(bucket)s and t.state = 'inflight'
      and t.lease_owner = %(owner)s and t.lease_token = %(token)s
    returning t.id, t.dependents
), unheld as (
    delete from resource_holds h where h.timer_id in (select id from dropped)
)
select coalesce((select dependents from dropped), false) as dependents;

-- name: revocation_state
-- Where revocations stand, for the request that made them: each one's answer, and whether its
-- row is still in flight under the revoked lease (the owner may be gone, or done with it).
select r.id, v.answer, t.state, (t.state = 'inflight' and t.lease_token = r.token) as held
from unnest(%(id)s::uuid[], %(bucket)s::timestamptz[], %(token)s::bigint[])
     as r(id, bucket, token)
join revocations v on v.timer_id = r.id and v.bucket = r.bucket and v.token = r.token
join timers t on t.id = r.id and t.bucket = r.bucket
where t.id = any(%(id)s::uuid[])
  and t.bucket between %(first_bucket)s::timestamptz and %(last_bucket)s::timestamptz;

-- name: revocations_purge
-- Revocations older than a day are of no use to anyone, unless the claim they revoked still
-- holds its row (a dispatcher paused that long: its row is reaped as revoked, never resent).
delete from revocations r
where r.requested_at < coalesce(%(now)s::timestamptz, now()) - interval '1 day'
  and not exists (select 1 from timers t
                  where t.id = r.timer_id and t.bucket = r.bucket
                    and t.lease_token = r.token and t.state = 'inflight');

-- name: lease_release
-- Gives back leased rows that were never sent, undoing their attempt count, and their resource
-- holds: at a clean shutdown (%(until)s null: due as before), or because their host's circuit
-- is open (due when it closes, never before their own run_at; %(reason)s kept in waiting_on).
-- Safe for at_most_once rows too: nothing of them went out.
with released as (
    update timers t
    set state = 'pending', lease_owner = null, lease_until = null, attempts = t.attempts - 1,
        run_at = greatest(%(until)s::timestamptz, t.run_at),
        slot = timerhook_slot(greatest(%(until)s::timestamptz, t.run_at)),
        waiting_on = %(reason)s::text
    from unnest(%(id)s::uuid[], %(bucket)s::timestamptz[], %(token)s::bigint[])
         as r(id, bucket, token)
    -- fenced like timer_record: only the lease this owner's claim made
    where t.id = r.id and t.bucket = r.bucket and t.state = 'inflight'
      and t.lease_owner = %(owner)s and t.lease_token = r.token
      and t.id = any(%(id)s::uuid[])
      and t.bucket between %(first_bucket)s::timestamptz and %(last_bucket)s::timestamptz
    returning t.id
), unheld as (
    delete from resource_holds h where h.timer_id in (select id from released)
)
select count(*) from released;

-- name: lease_take_back
-- After an outage: rows leased to %(owner)s that it does not hold (%(known)s lists every row
-- it holds: waiting for its instant, being sent, or with an outcome not yet written). Their
-- claim committed but its answer was lost with the connection, so they were never sent:
-- given back at once, their attempt uncounted, instead of waiting for the lease to run out.
with back as (
    update timers t
    set state = 'pending', lease_owner = null, lease_until = null,
        attempts = t.attempts - 1, waiting_on = null
    where t.state = 'inflight' and t.lease_owner = %(owner)s
      and not (t.id = any(%(known)s::uuid[]))
    returning t.id
), unheld as (
    delete from resource_holds h where h.timer_id in (select id from back)
)
select count(*) from back;

-- name: lease_renew
-- The heartbeat of a dispatcher, and the renewal of every lease it holds, in one statement
-- (docs/architecture.md, "The claim protocol"):
-- * the registry row proves it alive, unless a peer declared it dead (stopped_at set): then
--   nothing is renewed and ``alive`` is false;
-- * the leases it names (id, bucket, token: those held for a while, not every row claimed a
--   moment ago, which would write every held row every heartbeat) are extended; ``owned``
--   lists those still its own under that token (the rest were taken over: it drops them);
-- * rows leased to it that it does not name and whose lease ran out are given back unsent
--   (when %(sweep)s)
--   (their claim committed but its answer was lost, say in an outage): a claim whose answer
--   is still on its way has a fresh lease, so it is never taken, and a row it holds with a
--   lease run out is one it names (it names every lease older than a share of the lease).
-- A reap (lease_reap) that declares this dispatcher dead locks the same registry row: of the
-- two, the one that commits second sees the other's work, so a lease is never both renewed
-- and taken over.
with beat as (
    update dispatchers
    set heartbeat_at = now(), in_flight = %(in_flight)s,
        sent_total = %(sent_total)s, failed_total = %(failed_total)s
    where id = %(owner)s and stopped_at is null
    returning id
), held as (
    select * from unnest(%(id)s::uuid[], %(bucket)s::timestamptz[], %(token)s::bigint[])
         as r(id, bucket, token)
), renewed as (
    update timers t
    set lease_until = now() + %(lease_seconds)s * interval '1 second'
    from held r
    where t.id = r.id and t.bucket = r.bucket and exists (select 1 from beat)
      and t.lease_owner = %(owner)s and t.lease_until is not null and t.lease_token = r.token
      -- pruned and looked up by primary key, as in timer_record
      and t.id = any(%(id)s::uuid[])
      and t.bucket between %(first_bucket)s::timestamptz and %(last_bucket)s::timestamptz
    returning t.id
), lost as (
    -- leased to this dispatcher more than half a lease ago and not named by it: never sent.
    -- It names every lease it holds older than 0.3 of a lease (counted from the claim's
    -- answer, which comes within the claim's deadline of its start); a claim cut at its
    -- deadline that still committed (a stalled server) leaves such rows
    update timers t
    set state = 'pending', lease_owner = null, lease_until = null,
        attempts = t.attempts - 1, waiting_on = null
    -- It reads the rows in flight of every partition, so the caller asks for it
    -- (%(sweep)s) every third of a lease, not at every heartbeat: a one-time filter then
    -- skips the scan
    where %(sweep)s::boolean and t.state = 'inflight' and t.lease_owner = %(owner)s
      and t.lease_until < now() + 0.5 * %(lease_seconds)s * interval '1 second'
      and exists (select 1 from beat)
      and not (t.id = any(%(id)s::uuid[]))
    returning t.id
), unheld as (
    delete from resource_holds h where h.timer_id in (select id from lost)
)
select exists (select 1 from beat) as alive,
       coalesce((select array_agg(id) from renewed), '{}') as owned,
       (select count(*) from lost) as given_back;

-- name: reap_lock
-- Taken before lease_reap, in its transaction: the schedule pass takes it shared
-- (schedule_pass_lock), so each sees what the other did. A reap that gives back an
-- occurrence and a pass that makes a later one never both miss each other.
select pg_advisory_xact_lock(hashtext('timerhook.reap_and_pass'));

-- name: lease_reap
-- Takes back the in-flight rows of dispatchers that can no longer be sending them, in one
-- statement:
-- * the peers the caller declares dead (%(dead)s with the heartbeat it saw unchanged for
--   dead_after_seconds on its own clock, %(seen)s): marked stopped and declared dead, but
--   only while that heartbeat is still the one seen (a peer that heartbeated meanwhile is
--   alive, and the registry row's lock orders this against its lease_renew);
-- * dispatchers that stopped (deregistered, or declared dead before), and owners that are
--   not registered at all once their lease ran out.
-- Never by comparing timestamps: a lease or a heartbeat that looks old after the database or
-- the caller stalled proves nothing. Whether a taken row's send went out is unknown: an
-- at_least_once row goes back to pending and is sent again; an at_most_once row is never
-- repeated and ends failed. Either way the attempt is recorded with what happened.
with clock as (
    select coalesce(%(now)s::timestamptz, now()) as now
), declared as (
    update dispatchers d
    set stopped_at = clock.now, declared_dead_at = clock.now
    from unnest(%(dead)s::text[], %(seen)s::timestamptz[]) as x(id, seen), clock
    where d.id = x.id and d.heartbeat_at = x.seen and d.stopped_at is null
    returning d.id
), gone as (
    -- owners that cannot be sending anything: the ones just declared dead and the stopped
    -- ones (a registry row per process ever started: a small table)
    select id from declared
    union all
    select d.id from dispatchers d where d.stopped_at is not null
), victims as (
    -- read before the update so that the owner they are taken from can be reported
    select t.id, t.bucket, t.lease_owner, t.delivery,
           exists (select 1 from revocations r
                   where r.timer_id = t.id and r.bucket = t.bucket and r.token = t.lease_token
                     and (r.answer is null or t.series_id is not null)) as revoked,
           -- an occurrence of a "coalesce" series whose time passed while a later one was
           -- made already: sending it now would go after (or beside) that later one, which
           -- stands for everything missed; skipped as the schedule pass skips a pending one
           -- (the caller holds reap_lock: that pass has committed, or waits for this one)
           (select max(later.occurrence) from timers later
            where t.series_id is not null and t.fired_at is null and t.due_at < clock.now
              and later.series_id = t.series_id and later.occurrence > t.occurrence
              and (select s.misfire from schedules s where s.id = t.series_id) = 'coalesce'
              and later.bucket <= clock.now + interval '1 day') as coalesced_into
    from timers t, clock
    where t.state = 'inflight'
      and (t.lease_owner in (select id from gone)
           -- an owner the registry does not know (never registered, or its row deleted),
           -- once its lease ran out
           or (t.lease_until < clock.now
               and not exists (select 1 from dispatchers d where d.id = t.lease_owner)))
    -- at most %(limit)s a call (the caller calls again while a call reaps that many); 0 reaps
    -- nothing, which is how a dispatcher plans this statement at start (db/warmth.py)
    limit %(limit)s
    for update of t skip locked
), reaped as (
    update timers t
    -- a row whose claim was revoked (its owner died before it answered, or it was a series'
    -- occurrence whose request had gone out) is not sent again: the cancel or pause stands
    set state = case when v.revoked or v.coalesced_into is not null then 'cancelled'
                     when v.delivery = 'at_most_once' then 'failed' else 'pending' end,
        finished_at = case when v.revoked or v.coalesced_into is not null
                                or v.delivery = 'at_most_once' then clock.now end,
        -- the last result of a lost at_most_once send is this verdict, stamped now
        fired_at = case when v.delivery = 'at_most_once' then clock.now else t.fired_at end,
        last_status = case when v.delivery = 'at_most_once' then null else t.last_status end,
        last_error = case when v.coalesced_into is not null
                          then 'skipped: its time passed unsent; coalesced into occurrence '
                               || v.coalesced_into
                          when v.delivery = 'at_most_once'
                          then 'at_most_once: dispatcher ' || v.lease_owner
                               || ' was lost mid-send; the call may or may not have been made and is not repeated'
                          else t.last_error end,
        lease_owner = null, lease_until = null
    from victims v, clock
    -- the ids as an array too: each partition's primary key, never a scan of a partition
    where t.id = v.id and t.bucket = v.bucket and t.id = any(array(select id from victims))
    returning t.id, t.bucket, t.attempts, t.state, v.coalesced_into, v.lease_owner, clock.now
), unheld as (
    -- a hold lives exactly as long as its lease: taking the lease back frees the resources
    delete from resource_holds h where h.timer_id in (select id from reaped)
), noted as (
    insert into timer_attempts (timer_id, bucket, attempt, at, status, latency_ms, error,
                                dispatcher)
    select id, bucket, attempts, now, null, null,
           'outcome unknown: lease taken back from ' || lease_owner
           || case when state = 'failed' then ' (at_most_once: not repeated)'
                   when coalesced_into is not null
                   then ' (not sent again: a later occurrence of its series was made)'
                   when state = 'cancelled' then ' (not sent again: its claim was revoked)'
                   else ' (sent again)' end,
           lease_owner
    from reaped
    on conflict do nothing
)
select id, lease_owner from reaped;

-- name: timer_counts
-- How many timers are in each state (admin and tests).
select state, count(*) as n from timers group by state order by state;

-- name: timer_list
-- Timers in id order (which is due order) after %(after)s, for keyset pagination, with the
-- given states. One index probe per state (timers_state_list_idx), merged: a filter on dead
-- letters reads only dead letters. The bucket bound prunes partitions before the cursor.
select t.id, t.state, t.due_at, t.run_at, t.url, t.attempts, t.max_attempts, t.fired_at,
       t.finished_at, t.last_status, t.last_error, t.priority, t.resources, t.tenant,
       t.series_id, t.occurrence
from unnest(%(states)s::text[]) as s(state),
     lateral (select * from timers t
              where t.state = s.state
                and (%(tenant)s::text is null or t.tenant = %(tenant)s::text)
                -- ?kind=once: one-shot timers only, not the occurrences of series
                and (not %(once_only)s::boolean or t.series_id is null)
                and (%(after)s::uuid is null
                     or (t.id > %(after)s::uuid and t.bucket >= %(after_bucket)s::timestamptz))
              order by t.id
              limit %(limit)s) as t
order by t.id
limit %(limit)s;

-- name: attempt_list
-- A timer's attempts, oldest first, from the one partition its bucket names.
select attempt, at, status, latency_ms, error, dispatcher
from timer_attempts
where timer_id = %(id)s and bucket = %(bucket)s
order by attempt;

-- name: timer_requeue
-- Puts one dead or failed timer back into the bucket of now, with a fresh round of attempts.
-- Returns the state found and whether this call requeued it; no row if no such timer.
with clock as (
    select coalesce(%(now)s::timestamptz, now()) as now
), target as (
    select t.id, t.bucket, t.state from timers t
    where t.id = %(id)s and t.bucket = %(bucket)s
      and (%(tenant)s::text is null or t.tenant = %(tenant)s::text)
    for update
), requeued as (
    update timers t
    set state = 'pending', run_at = greatest(clock.now, t.due_at),
        slot = timerhook_slot(greatest(clock.now, t.due_at)),
        round_start = t.attempts, finished_at = null, waiting_on = null
    from target, clock
    where t.id = target.id and t.bucket = target.bucket and target.state in ('dead', 'failed')
      and t.id = %(id)s and t.bucket = %(bucket)s
    returning t.id
)
select target.state as found, exists (select 1 from requeued) as requeued from target;

-- name: timers_requeue
-- Puts up to %(limit)s dead letters matching the filter back into the bucket of now; returns
-- their ids. Requeued rows no longer match, so the caller repeats until none is left; the
-- finished_before bound (at the latest, when the requeue began) keeps a timer that dies again
-- meanwhile from being taken twice.
with clock as (
    select coalesce(%(now)s::timestamptz, now()) as now
), picked as (
    -- rows a cancel or a claim holds are skipped, not waited for
    select t.id, t.bucket from timers t
    where t.state = any(%(states)s::text[])
      and t.state in ('dead', 'failed')
      and (%(url_prefix)s::text is null
           or left(t.url, length(%(url_prefix)s::text)) = %(url_prefix)s::text)
      and (%(finished_after)s::timestamptz is null or t.finished_at >= %(finished_after)s)
      and t.finished_at < %(finished_before)s::timestamptz
    limit %(limit)s
    for update skip locked
)
update timers t
set state = 'pending', run_at = greatest(clock.now, t.due_at),
    slot = timerhook_slot(greatest(clock.now, t.due_at)),
    round_start = t.attempts, finished_at = null, waiting_on = null
from picked, clock
where t.id = picked.id and t.bucket = picked.bucket
returning t.id;

-- name: clock_now
-- The database clock (or the injected now).
select coalesce(%(now)s::timestamptz, now()) as now;

-- name: clock_ms
-- The database clock as timer_insert reads it for due times: the transaction's start (or the
-- injected now), in Unix milliseconds rounded up, so that no due time is early.
select ceil(extract(epoch from coalesce(%(now)s::timestamptz, now())) * 1000)::bigint;

-- name: timers_wake
-- Wakes the dispatchers at this transaction's commit (db/listen.py), as timer_insert does
-- for a timer due within their claim window.
select pg_notify('timerhook_due', '');

-- name: plan_candidates
-- What the next pass would look at: pending rows due by now + lookahead, highest priority
-- first, then run_at, with the rows that wait in a dispatcher (leased, not yet sent, with a
-- reason). For `timerhook plan`.
select t.id, t.bucket, t.state, t.url, t.priority, t.run_at, t.resources, t.waiting_on,
       t.lease_owner, t.tenant
from timers t
where ((t.state = 'pending'
        and t.slot <= coalesce(%(now)s::timestamptz, now()) + %(lookahead)s * interval '1 second')
       or (t.state = 'inflight' and t.waiting_on is not null))
  and t.bucket <= coalesce(%(now)s::timestamptz, now()) + %(lookahead)s * interval '1 second'
order by t.state desc, t.priority desc, t.run_at
limit %(limit)s;
