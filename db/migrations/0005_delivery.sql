-- 0005: retries, dead letters, attempts, request shape, delivery policy.

alter table timers
    add column max_attempts integer not null default 8,
    add column round_start integer not null default 0,
    add column delivery text not null default 'at_least_once',
    add column payload jsonb,
    add column headers jsonb,
    add column timeout_ms integer;

-- dead: retryable failures used up max_attempts; listed as a dead letter.
alter table timers drop constraint timers_state_check;
alter table timers add constraint timers_state_check
    check (state in ('pending', 'inflight', 'delivered', 'failed', 'dead', 'cancelled'));
alter table timers add constraint timers_delivery_check
    check (delivery in ('at_least_once', 'at_most_once'));
alter table timers add constraint timers_attempts_check
    check (max_attempts >= 1 and round_start <= attempts);

-- Listing by state in id order (due order): GET /timer?status=dead, say, never walks the
-- delivered history to find the few dead letters.
create index timers_state_list_idx on timers (state, id);

-- Every attempt to send a timer, kept in the daily partition of the timer's bucket.
create table timer_attempts (
    timer_id    uuid             not null,
    bucket      timestamptz      not null,
    attempt     integer          not null,
    at          timestamptz      not null,
    status      integer,
    latency_ms  double precision,
    error       text,
    dispatcher  text             not null,
    primary key (timer_id, bucket, attempt)
) partition by range (bucket);

drop function timerhook_partitions_ensure(date, date);
drop function timerhook_partitions_drop(date);
-- Creates the missing daily partitions of timers and timer_attempts for [first_day,
-- last_day]; returns how many days needed any. An attempt lives in the day of its timer's
-- bucket, so a day's two partitions are made and dropped together. Serialised by an advisory
-- lock so that processes starting together do not collide.
create function timerhook_partitions_ensure(first_day date, last_day date) returns integer
language plpgsql as $$
declare
    day date;
    parent text;
    made integer := 0;
    made_today boolean;
begin
    perform pg_advisory_xact_lock(hashtext('timerhook.partitions'));
    for day in select generate_series(first_day, last_day, interval '1 day')::date loop
        made_today := false;
        foreach parent in array array['timers', 'timer_attempts'] loop
            if to_regclass(format('%s_p%s', parent, to_char(day, 'YYYYMMDD'))) is null then
                execute format(
                    'create table %I partition of %I for values from (%L) to (%L)',
                    format('%s_p%s', parent, to_char(day, 'YYYYMMDD')), parent,
                    day::timestamp at time zone 'UTC',
                    (day + 1)::timestamp at time zone 'UTC');
                made_today := true;
            end if;
        end loop;
        if made_today then
            made := made + 1;
        end if;
    end loop;
    return made;
end
$$;

-- Drops the daily partitions (timers and their attempts) that ended before cutoff and hold no
-- pending or in-flight timer: this is how fired timers are purged, with no DELETE storm and
-- no bloat. Returns the names of the timers partitions dropped.
create function timerhook_partitions_drop(cutoff date) returns setof text
language plpgsql as $$
declare
    part record;
    busy boolean;
begin
    perform pg_advisory_xact_lock(hashtext('timerhook.partitions'));
    for part in
        select c.relname
        from pg_inherits i
        join pg_class c on c.oid = i.inhrelid
        where i.inhparent = 'timers'::regclass
          and c.relname ~ '^timers_p[0-9]{8}$'
          and to_date(substring(c.relname from 9), 'YYYYMMDD') < cutoff
        order by c.relname
    loop
        execute format('select exists (select 1 from %I where state in (''pending'', ''inflight''))',
                       part.relname) into busy;
        if not busy then
            execute format('drop table %I', part.relname);
            execute format('drop table if exists %I', 'timer_attempts_' || substring(part.relname from 8));
            return next part.relname;
        end if;
    end loop;
end
$$;

-- Attempts partitions for every day that already has a timers partition.
select timerhook_partitions_ensure(min(day), max(day))
from (select to_date(substring(c.relname from 9), 'YYYYMMDD') as day
      from pg_inherits i join pg_class c on c.oid = i.inhrelid
      where i.inhparent = 'timers'::regclass and c.relname ~ '^timers_p[0-9]{8}$') as days
where day is not null
having count(*) > 0;
