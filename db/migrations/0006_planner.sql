-- 0006: the planner: priority, named resources and their holds, why a timer waits, circuits.

alter table timers
    add column priority smallint not null default 5,
    add column resources text[],
    add column waiting_on text;
alter table timers add constraint timers_priority_check check (priority between 1 and 10);
alter table timers add constraint timers_resources_check
    check (resources is null or cardinality(resources) between 1 and 16);

-- Key claims read only pending rows without resources; rows with resources are chosen by the
-- planner's resource pass, over their own index.
drop index timers_pending_idx;
create index timers_pending_idx on timers (slot, shard, run_at)
    where state = 'pending' and resources is null;
create index timers_pending_rank_idx on timers (priority, run_at)
    where state = 'pending' and resources is null and priority >= 1;
create index timers_pending_held_idx on timers (slot, priority, run_at)
    where state = 'pending' and resources is not null;

create table resource_holds (
    resource  text        primary key,
    timer_id  uuid        not null,
    bucket    timestamptz not null,
    owner     text        not null,
    held_at   timestamptz not null default now()
);
create index resource_holds_timer_idx on resource_holds (timer_id);

create table host_circuits (
    host        text        primary key,
    open_until  timestamptz not null,
    failures    integer     not null,
    reason      text        not null,
    opened_by   text        not null,
    opened_at   timestamptz not null default now()
);
