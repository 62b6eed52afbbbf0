-- Named queries on recurring timers (schedules) and their occurrence rows in timers. Every
-- row of a series has its bucket less than a day ahead of now (an occurrence is made a
-- lookahead of seconds before its time, and a retry keeps its bucket): the bound
-- "bucket <= now + 1 day" on every read of them prunes the partitions beyond tomorrow.

-- name: schedule_insert
-- A new series, active, its first occurrence to be made at first_at.
insert into schedules (id, tenant, url, host, payload, headers, timeout_ms, max_attempts,
                       delivery, priority, resources, request_id, every_ms, cron, time_zone,
                       first_at, until_at, max_count, misfire, next_at, window_ms)
values (%(id)s, %(tenant)s, %(url)s, %(host)s, %(payload)s::jsonb, %(headers)s::jsonb,
        %(timeout_ms)s, %(max_attempts)s, %(delivery)s,
        %(priority)s, string_to_array(%(resources)s, ' '), %(request_id)s,
        %(every_ms)s, %(cron)s, %(time_zone)s, %(first_at)s, %(until_at)s, %(max_count)s,
        %(misfire)s, %(first_at)s, %(window_ms)s);

-- name: schedule_get
-- One series by id (a tenant's key reads only its own: %(tenant)s; null: any), with the due
-- times of its latest occurrence already due and of the earliest still to come.
select s.id, s.tenant, s.url, s.state, s.every_ms, s.cron, s.time_zone, s.first_at,
       s.until_at, s.max_count, s.misfire, s.window_ms, s.next_n, s.next_at, s.occurrences,
       s.created_at,
       s.paused_at, s.ended_at, s.payload, s.headers, s.timeout_ms, s.max_attempts,
       s.delivery, s.priority, s.resources, s.request_id,
       (select max(t.due_at) from timers t
        where t.series_id = s.id and t.state <> 'cancelled'
          and t.due_at <= coalesce(%(now)s::timestamptz, now())
          and t.bucket <= coalesce(%(now)s::timestamptz, now()) + interval '1 day') as last_at,
       (select min(t.due_at) from timers t
        where t.series_id = s.id and t.state in ('pending', 'inflight')
          and t.due_at > coalesce(%(now)s::timestamptz, now())
          and t.bucket <= coalesce(%(now)s::timestamptz, now()) + interval '1 day') as upcoming_at,
       coalesce(%(now)s::timestamptz, now()) as db_now
from schedules s
where s.id = %(id)s and (%(tenant)s::text is null or s.tenant = %(tenant)s::text);

-- name: schedule_list
-- Series in id order (the order of their first times) after %(after)s, for keyset pagination.
select s.id, s.tenant, s.url, s.state, s.every_ms, s.cron, s.time_zone, s.first_at,
       s.until_at, s.max_count, s.misfire, s.window_ms, s.next_n, s.next_at, s.occurrences,
       s.created_at,
       s.paused_at, s.ended_at, s.payload, s.headers, s.timeout_ms, s.max_attempts,
       s.delivery, s.priority, s.resources, s.request_id,
       null::timestamptz as last_at, null::timestamptz as upcoming_at,
       coalesce(%(now)s::timestamptz, now()) as db_now
from schedules s
where (%(tenant)s::text is null or s.tenant = %(tenant)s::text)
  and (%(after)s::uuid is null or s.id > %(after)s::uuid)
order by s.id
limit %(limit)s;

-- name: schedule_lock
-- One series under a row lock, for a pause, a resume or a DELETE (a tenant's key: its own
-- only).
select s.id, s.state, s.every_ms, s.cron, s.time_zone, s.first_at, s.until_at, s.max_count,
       s.misfire, s.next_n, s.next_at, coalesce(%(now)s::timestamptz, now()) as db_now
from schedules s
where s.id = %(id)s and (%(tenant)s::text is null or s.tenant = %(tenant)s::text)
for update;

-- name: schedule_pass_lock
-- The schedule pass's share of reap_lock (db/queries/timers.sql): passes run side by side, a
-- reap waits for them and they for it.
select pg_advisory_xact_lock_shared(hashtext('timerhook.reap_and_pass'));

-- name: schedule_due
-- The schedule pass: active series whose next occurrence falls due by now + lookahead, under
-- row locks that other dispatchers' passes skip (one pass makes a series' occurrences at a
-- time, and its transaction moves the series on in the same commit).
select s.id, s.state, s.every_ms, s.cron, s.time_zone, s.first_at, s.until_at, s.max_count,
       s.misfire, s.next_n, s.next_at, coalesce(%(now)s::timestamptz, now()) as db_now
from schedules s
where s.state = 'active'
  and s.next_at <= coalesce(%(now)s::timestamptz, now()) + %(lookahead)s * interval '1 second'
  -- one series only (its create or resume makes its first occurrence at once when near)
  and (%(id)s::uuid is null or s.id = %(id)s::uuid)
order by s.next_at
limit %(limit)s
for update skip locked;

-- name: occurrence_unsent
-- The occurrence rows of these series made already whose send was never recorded: waiting for
-- their time or held back (pending, never fired), or taken back from a dispatcher that died
-- before recording (pending again, never fired). A retry (a failure was recorded) is not.
select t.series_id, t.occurrence, t.due_at
from timers t
where t.series_id = any(%(ids)s::uuid[]) and t.state = 'pending' and t.fired_at is null
  and t.bucket <= coalesce(%(now)s::timestamptz, now()) + interval '1 day'
order by t.series_id, t.occurrence;

-- name: occurrence_insert
-- Makes occurrence rows: each a timer row with its series' request, due at the occurrence's
-- time. A row due within the dispatchers' claim window wakes them at commit (db/listen.py).
with input as (
    select u.series_id, u.occurrence, u.due_ms
    from unnest(%(series_id)s::uuid[], %(occurrence)s::integer[], %(due_ms)s::bigint[])
         as u(series_id, occurrence, due_ms)
), rows as (
    -- referenced once: the ids inserted are made once
    select timerhook_id(i.due_ms) as id, i.series_id, i.occurrence,
           'epoch'::timestamptz + i.due_ms * interval '1 millisecond' as due_at,
           timerhook_slot('epoch'::timestamptz + i.due_ms * interval '1 millisecond') as bucket,
           floor(random() * %(shards)s)::smallint as shard
    from input i
), inserted as (
    insert into timers (id, bucket, due_at, run_at, slot, shard, url, payload, headers,
                        timeout_ms, max_attempts, delivery, priority, resources, request_id,
                        tenant, host, series_id, occurrence, deadline_at)
    -- a windowed occurrence waits for the window planner, and without it goes a second
    -- before its deadline (as timer_insert)
    select r.id, r.bucket, r.due_at, r.run_at,
           timerhook_slot(r.run_at),
           r.shard, s.url, s.payload, s.headers, s.timeout_ms, s.max_attempts, s.delivery,
           s.priority, s.resources, s.request_id, s.tenant, s.host, r.series_id, r.occurrence,
           r.deadline_at
    from (select r.*, s.window_ms,
                 r.due_at + s.window_ms * interval '1 millisecond' as deadline_at,
                 greatest(r.due_at, r.due_at + (s.window_ms - 1000) * interval '1 millisecond')
                     as run_at
          from rows r join schedules s on s.id = r.series_id) as r
    join schedules s on s.id = r.series_id
    returning due_at
), wake as (
    select pg_notify('timerhook_due', '') from inserted
    where inserted.due_at < coalesce(%(now)s::timestamptz, now())
                            + %(wake_ms)s::bigint * interval '1 millisecond'
    limit 1
)
select (select count(*) from inserted) as made, (select count(*) from wake) as woke;

-- name: occurrence_skip
-- Occurrences made and never sent that a later one replaces (misfire "coalesce"): cancelled,
-- with why. A row claimed or recorded meanwhile (no longer pending, or fired) is left alone.
update timers t
set state = 'cancelled', finished_at = coalesce(%(now)s::timestamptz, now()),
    last_error = 'skipped: its time passed unsent; coalesced into occurrence ' || u.into_n
from unnest(%(series_id)s::uuid[], %(occurrence)s::integer[], %(into_n)s::integer[])
     as u(series_id, occurrence, into_n)
where t.series_id = u.series_id and t.occurrence = u.occurrence
  and t.state = 'pending' and t.fired_at is null
  and t.series_id = any(%(series_id)s::uuid[])
  and t.bucket <= coalesce(%(now)s::timestamptz, now()) + interval '1 day';

-- name: schedule_advance
-- Moves series on past the occurrences just made (in the same transaction): the next one to
-- make and its time, or ended when there is none.
update schedules s
set next_n = u.next_n,
    next_at = u.next_at,
    state = case when u.next_at is null then 'ended' else s.state end,
    ended_at = case when u.next_at is null then coalesce(%(now)s::timestamptz, now())
                    else s.ended_at end,
    occurrences = s.occurrences + u.made
from unnest(%(id)s::uuid[], %(next_n)s::integer[], %(next_at)s::timestamptz[],
            %(made)s::integer[]) as u(id, next_n, next_at, made)
where s.id = u.id and s.state = 'active';

-- name: schedule_set_state
-- A pause (paused, its unsent occurrences skipped) or a resume (active from next_n at
-- next_at, or ended when the schedule has no time left), under schedule_lock's row lock.
with changed as (
    update schedules s
    set state = %(state)s,
        next_n = coalesce(%(next_n)s, s.next_n),
        next_at = case when %(state)s in ('active', 'paused') then coalesce(%(next_at)s, s.next_at)
                  end,
        paused_at = case when %(state)s = 'paused' then coalesce(%(now)s::timestamptz, now()) end,
        ended_at = case when %(state)s = 'ended' then coalesce(%(now)s::timestamptz, now())
                        else s.ended_at end
    where s.id = %(id)s
    returning s.id
)
update timers t
set state = 'cancelled', finished_at = coalesce(%(now)s::timestamptz, now()),
    last_error = 'skipped: the series was paused'
where %(state)s = 'paused' and t.series_id in (select id from changed)
  and t.state = 'pending' and t.fired_at is null
  and t.bucket <= coalesce(%(now)s::timestamptz, now()) + interval '1 day';

-- name: schedule_cancel
-- Ends a series (DELETE): no occurrence is made any more, and its pending ones (unsent or
-- waiting for a retry) are cancelled. Returns the state found and whether this call ended it;
-- no row if no such series (or another tenant's). Run after schedule_lock in the same
-- transaction: this statement's snapshot then holds every occurrence a pass made.
with target as (
    select s.id, s.state from schedules s
    where s.id = %(id)s and (%(tenant)s::text is null or s.tenant = %(tenant)s::text)
    for update
), ended as (
    update schedules s
    set state = 'cancelled', next_at = null, ended_at = coalesce(%(now)s::timestamptz, now())
    from target
    where s.id = target.id and target.state in ('active', 'paused')
    returning s.id
), stopped as (
    update timers t
    set state = 'cancelled', finished_at = coalesce(%(now)s::timestamptz, now())
    where t.series_id in (select id from target) and t.state = 'pending'
      and t.bucket <= coalesce(%(now)s::timestamptz, now()) + interval '1 day'
    returning 1
)
select target.state as found, exists (select 1 from ended) as cancelled,
       (select count(*) from stopped) as stopped
from target;

-- name: series_revoke
-- After a DELETE or a pause of a series: revokes the claims of its occurrences in flight
-- (claimed ahead of their instant, or being sent) with timerhook_revoke, and returns them, so
-- that the request can wait for their owners' answers. Every row of a series has its bucket
-- at most a lookahead ahead of now, so the bucket bound prunes every later partition.
with inflight as (
    select t.id, t.bucket, t.lease_token, t.lease_owner from timers t
    where t.series_id = %(id)s and t.state = 'inflight'
      and t.bucket <= now() + interval '1 day'
), revoked as (
    select timerhook_revoke(array_agg(id), array_agg(bucket), array_agg(lease_token),
                            array_agg(lease_owner), %(reason)s::text) as n
    from inflight
)
select i.id, i.bucket, i.lease_token from inflight i, revoked;
