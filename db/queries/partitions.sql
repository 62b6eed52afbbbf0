-- Named queries for partition maintenance (the functions live in schema.sql).

-- name: partition_ensure
-- Creates the daily partitions from yesterday to the end of the accepted horizon (plus a day
-- of slack for timers created just before midnight UTC).
select timerhook_partitions_ensure(
    (coalesce(%(now)s::timestamptz, now()) at time zone 'UTC')::date - 1,
    (coalesce(%(now)s::timestamptz, now()) at time zone 'UTC')::date + %(horizon_days)s + 1
) as made;

-- name: partition_ensure_ahead
-- Creates the daily partitions from yesterday to a due time %(ahead_ms)s from now: what an
-- insert that found its day missing needs, whatever the configured horizon.
select timerhook_partitions_ensure(
    (coalesce(%(now)s::timestamptz, now()) at time zone 'UTC')::date - 1,
    ((coalesce(%(now)s::timestamptz, now()) + %(ahead_ms)s * interval '1 millisecond')
        at time zone 'UTC')::date + 1
) as made;

-- name: partition_drop
-- Drops the partitions past retention that hold nothing pending or in flight.
select timerhook_partitions_drop(
    (coalesce(%(now)s::timestamptz, now()) at time zone 'UTC')::date - %(retention_days)s
) as dropped;

-- name: partition_list
-- Every partition of timers with its bounds, oldest first.
select c.relname as name, pg_get_expr(c.relpartbound, c.oid) as bounds
from pg_inherits i join pg_class c on c.oid = i.inhrelid
where i.inhparent = 'timers'::regclass
order by c.relname;
