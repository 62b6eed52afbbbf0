-- The window planner (db/windows.py). A windowed row is released once its due time has come.
-- Until the planner gives it an instant, its run_at is the fallback a second before its
-- deadline (never before its due time; timer_insert): "not planned yet" is exactly that. A
-- row whose fallback is already within the claims' lookahead is left to them.

-- name: window_pacer_lock
-- The fleet's one plan state, locked for this plan: where the planned sends end (now, if
-- that is past), with the database clock.
select greatest(planned_until, coalesce(%(now)s::timestamptz, now())) as planned_from,
       coalesce(%(now)s::timestamptz, now()) as db_now
from window_pacer
for update;

-- name: window_pacer_set
update window_pacer set planned_until = %(planned_until)s;

-- name: window_work
-- Released windowed rows not planned yet, counted per tenth of a second of their deadline
-- (half a second before it, the latest instant a plan gives, rounded down: the rate computed
-- from them errs fast, never slow), earliest first.
select date_bin('100 milliseconds', t.deadline_at - interval '500 milliseconds',
                'epoch'::timestamptz) as deadline,
       count(*) as n
from timers t
where t.state = 'pending' and t.deadline_at is not null
  and t.due_at <= coalesce(%(now)s::timestamptz, now())
  and t.run_at = greatest(t.due_at, t.deadline_at - interval '1 second')
  and t.slot > coalesce(%(now)s::timestamptz, now()) + %(lookahead)s * interval '1 second'
  -- released rows have their bucket by the next second: later partitions are pruned
  and t.bucket <= coalesce(%(now)s::timestamptz, now()) + interval '1 second'
group by 1
order by 1;

-- name: window_pick
-- Gives the next %(n)s released rows (earliest deadline first) their instants: spread evenly,
-- %(step)s seconds apart from %(start)s, never before their due time nor later than half a
-- second before their deadline (the send's own time stays inside the window). Their slot
-- follows, so the key claims send them at that instant like any timer.
with locked as (
    select t.id, t.bucket, t.due_at, t.deadline_at
    from timers t
    where t.state = 'pending' and t.deadline_at is not null
      and t.due_at <= coalesce(%(now)s::timestamptz, now())
      and t.run_at = greatest(t.due_at, t.deadline_at - interval '1 second')
      and t.slot > coalesce(%(now)s::timestamptz, now()) + %(lookahead)s * interval '1 second'
      and t.bucket <= coalesce(%(now)s::timestamptz, now()) + interval '1 second'
    order by t.deadline_at
    limit %(n)s
    for update of t skip locked
), planned as (
    -- row_number cannot stand beside FOR UPDATE: numbered over the locked rows
    select l.id, l.bucket,
           greatest(l.due_at,
                    least(l.deadline_at - interval '500 milliseconds',
                          %(start)s::timestamptz
                          + (row_number() over (order by l.deadline_at, l.id) - 0.5)
                            * %(step)s * interval '1 second')) as run_at
    from locked l
)
update timers t
set run_at = p.run_at,
    slot = timerhook_slot(p.run_at)
from planned p
where t.id = p.id and t.bucket = p.bucket
  -- the ids and a bucket bound again: partitions pruned, each read by its primary key
  and t.id = any(array(select id from planned))
  and t.bucket <= coalesce(%(now)s::timestamptz, now()) + interval '1 second';
