-- Named queries behind `timerhook backlog`.

-- name: backlog_histogram
-- Pending timers per step (a second, a minute, ...) from now to now + window, by due slot.
-- The bucket bound prunes partitions past the window.
select date_bin(%(step)s * interval '1 second', slot, 'epoch'::timestamptz) as at,
       count(*) as pending
from timers
where state = 'pending'
  and slot > now()
  and slot <= now() + %(window)s * interval '1 second'
  and bucket <= now() + %(window)s * interval '1 second'
group by 1
order by 1;

-- name: backlog_overdue
-- Pending timers whose time has come and gone, the age of the oldest, and how many are in
-- flight right now.
select count(*) filter (where t.state = 'pending') as overdue,
       extract(epoch from now() - min(t.run_at) filter (where t.state = 'pending'))::float8
           as oldest_age_seconds,
       (select count(*) from timers where state = 'inflight') as in_flight
from timers t
where t.state = 'pending' and t.slot <= now() and t.bucket <= now();

-- name: backlog_counts
-- Pending timers (due or not) and dead letters, from the state index (the gauges of /metrics,
-- cached by the API, never read per scrape).
select count(*) filter (where state = 'pending') as pending,
       count(*) filter (where state = 'dead') as dead
from timers
where state in ('pending', 'dead');
