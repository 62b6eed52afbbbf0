-- 0007: observability: the request id a timer was created by; send statistics per second and
-- in total, written by every dispatcher, read by /metrics and the dashboard.

alter table timers add column request_id text;

-- Adds two arrays element by element (histogram bucket counts); a null side counts as zeros.
create function timerhook_array_add(a bigint[], b bigint[]) returns bigint[]
language sql immutable parallel safe as $$
    select case
        when a is null then b
        when b is null then a
        else (select array_agg(coalesce(x, 0) + coalesce(y, 0) order by i)
              from unnest(a, b) with ordinality as u(x, y, i))
    end
$$;

create table send_stats (
    second     timestamptz not null primary key,
    delivered  bigint      not null default 0,
    retried    bigint      not null default 0,
    failed     bigint      not null default 0,
    dead       bigint      not null default 0,
    lateness   bigint[]    not null,
    latency    bigint[]    not null
);

create table send_totals (
    id           boolean          primary key default true check (id),
    delivered    bigint           not null default 0,
    retried      bigint           not null default 0,
    failed       bigint           not null default 0,
    dead         bigint           not null default 0,
    lateness     bigint[],
    lateness_sum double precision not null default 0,
    latency      bigint[],
    latency_sum  double precision not null default 0,
    cap_waits    bigint           not null default 0
);
insert into send_totals (id) values (true);
