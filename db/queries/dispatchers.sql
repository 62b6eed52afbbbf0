-- Named queries on the dispatcher registry.

-- name: dispatcher_register
-- Registers a dispatcher process (or revives its row after a restart with the same id).
insert into dispatchers (id, host, pid, started_at, heartbeat_at)
values (%(id)s, %(host)s, %(pid)s, now(), now())
on conflict (id) do update
set host = excluded.host, pid = excluded.pid, started_at = now(), heartbeat_at = now(),
    stopped_at = null, in_flight = 0;

-- name: dispatcher_heartbeat
-- Proves the dispatcher alive and publishes its counters. Returns the database clock.
update dispatchers
set heartbeat_at = now(), in_flight = %(in_flight)s,
    sent_total = %(sent_total)s, failed_total = %(failed_total)s
where id = %(id)s
returning now() as db_now;

-- name: dispatcher_deregister
-- A clean shutdown: the row stays for the admin CLI, marked stopped.
update dispatchers set stopped_at = now(), heartbeat_at = now(), in_flight = 0
where id = %(id)s;

-- name: dispatcher_peers
-- The ids of the live dispatchers (the fleet that shares the key claims), in id order.
select id from dispatchers
where stopped_at is null and heartbeat_at >= now() - %(dead_after_seconds)s * interval '1 second'
order by id;

-- name: dispatcher_list
-- The registry with liveness judged by the database clock.
select id, host, pid, started_at, heartbeat_at, stopped_at, in_flight, sent_total, failed_total,
       (stopped_at is null
        and heartbeat_at >= now() - %(dead_after_seconds)s * interval '1 second') as alive
from dispatchers
order by started_at desc;
