-- Named queries on the send statistics (send_stats per second, send_totals since the start).

-- name: send_stats_add
-- Adds what one dispatcher sent since its last report: per second of sending (rows in
-- ascending second order, so that two dispatchers adding at once lock rows in one order and
-- cannot deadlock), and to the totals. Histogram bucket counts travel as array texts.
with input as (
    select s.second, s.delivered, s.retried, s.failed, s.dead,
           s.lateness::bigint[] as lateness, s.latency::bigint[] as latency
    from unnest(%(second)s::timestamptz[], %(delivered)s::bigint[], %(retried)s::bigint[],
                %(failed)s::bigint[], %(dead)s::bigint[], %(lateness)s::text[],
                %(latency)s::text[])
         as s(second, delivered, retried, failed, dead, lateness, latency)
    order by s.second
), per_second as (
    insert into send_stats as t (second, delivered, retried, failed, dead, lateness, latency)
    select second, delivered, retried, failed, dead, lateness, latency from input
    on conflict (second) do update
    set delivered = t.delivered + excluded.delivered,
        retried = t.retried + excluded.retried,
        failed = t.failed + excluded.failed,
        dead = t.dead + excluded.dead,
        lateness = timerhook_array_add(t.lateness, excluded.lateness),
        latency = timerhook_array_add(t.latency, excluded.latency)
)
update send_totals
set delivered = delivered + %(delivered_total)s,
    retried = retried + %(retried_total)s,
    failed = failed + %(failed_total)s,
    dead = dead + %(dead_total)s,
    lateness = timerhook_array_add(lateness, %(lateness_total)s::bigint[]),
    lateness_sum = lateness_sum + %(lateness_sum)s,
    latency = timerhook_array_add(latency, %(latency_total)s::bigint[]),
    latency_sum = latency_sum + %(latency_sum)s,
    cap_waits = cap_waits + %(cap_waits)s,
    stale = stale + %(stale)s;

-- name: send_totals_get
-- The counters and histograms since the database was made.
select delivered, retried, failed, dead, lateness, lateness_sum, latency, latency_sum, cap_waits,
       stale
from send_totals;

-- name: send_stats_recent
-- Every second with sends over the last %(seconds)s seconds, oldest first (at most one row
-- per second: a primary key range scan).
select second, delivered, retried, failed, dead, lateness, latency
from send_stats
where second > coalesce(%(now)s::timestamptz, now()) - %(seconds)s * interval '1 second'
order by second;

-- name: send_stats_purge
-- Seconds older than the dashboard's history are dropped.
delete from send_stats
where second < coalesce(%(now)s::timestamptz, now()) - %(keep_hours)s * interval '1 hour';
