-- Named queries on host_circuits: target hosts backed off after repeated connection failures.

-- name: circuit_open
-- Opens (or re-opens, for longer) a host's circuit until %(seconds)s from now.
insert into host_circuits (host, open_until, failures, reason, opened_by, opened_at)
values (%(host)s, now() + %(seconds)s * interval '1 second', %(failures)s, %(reason)s,
        %(owner)s, now())
on conflict (host) do update
set open_until = excluded.open_until, failures = excluded.failures, reason = excluded.reason,
    opened_by = excluded.opened_by, opened_at = excluded.opened_at
returning open_until;

-- name: circuit_close
-- A send to the host succeeded: its circuit is closed.
delete from host_circuits where host = %(host)s;

-- name: circuit_list
-- Every circuit, whether it is still open by the database clock, and for how long.
select host, open_until, failures, reason, opened_by, opened_at,
       open_until > coalesce(%(now)s::timestamptz, now()) as open,
       greatest(extract(epoch from open_until - coalesce(%(now)s::timestamptz, now())), 0)::float8
           as seconds_left
from host_circuits
order by host;
