-- Named queries on the dispatcher registry.

-- name: dispatcher_register
-- Registers a dispatcher process (or revives its row after a restart with the same id).
insert into dispatchers (id, host, pid, pidns, started_at, heartbeat_at)
values (%(id)s, %(host)s, %(pid)s, %(pidns)s, now(), now())
on conflict (id) do update
set host = excluded.host, pid = excluded.pid, pidns = excluded.pidns, started_at = now(),
    heartbeat_at = now(),
    stopped_at = null, declared_dead_at = null, in_flight = 0;

-- name: dispatcher_deregister
-- A clean shutdown: the row stays for the admin CLI, marked stopped.
update dispatchers set stopped_at = now(), heartbeat_at = now(), in_flight = 0
where id = %(id)s;

-- name: dispatcher_peers
-- The registered dispatchers that have not stopped, in id order, with their last heartbeat:
-- observers compare it for change (dead by observation, never by its age), and ``fresh``
-- (recent by the database clock) says which share the key claims. Also the ones that stopped
-- within dead_after_seconds (``stopped``): rows they left in flight are for the next reap to
-- take (a hint for when to reap, never a judgement of death).
select id, heartbeat_at,
       heartbeat_at >= now() - %(dead_after_seconds)s * interval '1 second' as fresh,
       host, pid, pidns, stopped_at is not null as stopped
from dispatchers
where stopped_at is null
   or stopped_at >= now() - %(dead_after_seconds)s * interval '1 second'
order by id;

-- name: dispatcher_list
-- The registry with liveness judged by the database clock.
select id, host, pid, started_at, heartbeat_at, stopped_at, in_flight, sent_total, failed_total,
       (stopped_at is null
        and heartbeat_at >= now() - %(dead_after_seconds)s * interval '1 second') as alive
from dispatchers
order by started_at desc;
