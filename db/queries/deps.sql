-- Dependencies (``after``): a timer waits for the timers it names, blocked with its slot at
-- 'infinity' (beyond every claim's bound) until each of them was delivered.

-- name: deps_lock
-- The timers a create names in ``after``, locked until the create commits, so that an
-- outcome recorded meanwhile waits for it and then sees that it has dependents.
select t.id, t.bucket, t.state, t.tenant, t.series_id
from timers t
where t.id = any(%(id)s::uuid[])
  and t.bucket between %(first_bucket)s::timestamptz and %(last_bucket)s::timestamptz
for update;

-- name: deps_insert
-- Records what a new timer waits for, marks those timers as having dependents, and blocks
-- the new one while any of them is not delivered yet.
with deps as (
    insert into timer_deps (timer_id, bucket, dep_id, dep_bucket)
    select %(timer_id)s, %(timer_bucket)s, u.id, u.bucket
    from unnest(%(id)s::uuid[], %(bucket)s::timestamptz[]) as u(id, bucket)
    returning dep_id
), marked as (
    update timers t set dependents = true
    where t.id = any(%(id)s::uuid[])
      and t.bucket between %(first_bucket)s::timestamptz and %(last_bucket)s::timestamptz
      and not t.dependents
    returning 1
)
update timers t
set slot = 'infinity', waiting_on = %(reason)s::text
where t.id = %(timer_id)s and t.bucket = %(timer_bucket)s and %(reason)s::text is not null;

-- name: deps_fail_new
-- A new timer one of whose dependencies already ended failed, dead or cancelled: it fails
-- at once, saying which.
update timers t
set state = 'failed', finished_at = now(), fired_at = now(), last_error = %(reason)s,
    waiting_on = null
where t.id = %(timer_id)s and t.bucket = %(timer_bucket)s and t.state = 'pending';

-- name: deps_resolve
-- The dependents of timers whose outcome was just recorded (%(id)s): failed at once when one
-- of their dependencies ended failed, dead or cancelled (saying which); released (due at
-- their own time, or now if that has passed) when every one was delivered; otherwise told
-- how many are left. Returns the ids of the dependents failed here, whose own dependents are
-- resolved next.
with affected as (
    select distinct d.timer_id, d.bucket from timer_deps d where d.dep_id = any(%(id)s::uuid[])
), verdict as (
    select a.timer_id, a.bucket,
           bool_and(dep.state = 'delivered') as ready,
           min(case when dep.state in ('failed', 'dead', 'cancelled')
                    then 'dependency ' || dep.id || ' ended ' || dep.state end) as failure,
           count(*) filter (where dep.state <> 'delivered') as waiting
    from affected a
    join timer_deps d on d.timer_id = a.timer_id
    join timers dep on dep.id = d.dep_id and dep.bucket = d.dep_bucket
    group by a.timer_id, a.bucket
), failed as (
    update timers t
    -- the last result is this verdict, stamped now (no request was made: no status)
    set state = 'failed', finished_at = now(), fired_at = now(), last_error = v.failure,
        waiting_on = null
    from verdict v
    where t.id = v.timer_id and t.bucket = v.bucket and v.failure is not null
      and t.state = 'pending' and t.slot = 'infinity'
    returning t.id, t.bucket
), released as (
    update timers t
    set run_at = greatest(now(), t.due_at, t.deadline_at - interval '1 second'),
        slot = timerhook_slot(greatest(now(), t.due_at, t.deadline_at - interval '1 second')),
        waiting_on = null
    from verdict v
    where t.id = v.timer_id and t.bucket = v.bucket and v.ready
      and t.state = 'pending' and t.slot = 'infinity'
    returning t.id
), noted as (
    update timers t
    set waiting_on = 'after: waiting for ' || v.waiting || ' of its dependencies'
    from verdict v
    where t.id = v.timer_id and t.bucket = v.bucket and not v.ready and v.failure is null
      and t.state = 'pending' and t.slot = 'infinity'
      and t.waiting_on is distinct from 'after: waiting for ' || v.waiting || ' of its dependencies'
    returning 1
), wake as (
    -- a released timer due now wakes the dispatchers at commit
    select pg_notify('timerhook_due', '') from released limit 1
)
select coalesce((select array_agg(id) from failed), '{}') as failed,
       (select count(*) from released) as released,
       (select count(*) from noted) + (select count(*) from wake) as noted;

-- name: deps_any
-- Whether any timer waits for another at all (the sweep below reads every partition).
select exists (select 1 from timer_deps);

-- name: deps_stuck
-- Timers that waited for an outcome recorded by a dispatcher that died before resolving it
-- (the maintenance job's fallback): dependencies now final of blocked timers.
select distinct d.dep_id
from timer_deps d
join timers t on t.id = d.timer_id and t.bucket = d.bucket
join timers dep on dep.id = d.dep_id and dep.bucket = d.dep_bucket
where t.state = 'pending' and t.slot = 'infinity'
  and dep.state in ('delivered', 'failed', 'dead', 'cancelled')
limit 1000;

-- name: deps_of
-- A timer's dependencies and where each stands (GET /timer/{id}).
select d.dep_id, dep.state
from timer_deps d
join timers dep on dep.id = d.dep_id and dep.bucket = d.dep_bucket
where d.timer_id = %(id)s and d.bucket = %(bucket)s
order by d.dep_id;

-- name: deps_purge
-- Forgets the dependencies of timers older than the retention that no longer wait.
delete from timer_deps d
where d.bucket < %(cutoff)s::timestamptz
  and not exists (select 1 from timers t
                  where t.id = d.timer_id and t.bucket = d.bucket and t.state = 'pending');
