-- 0013: resources are per tenant (issue 24): a name means the same resource only within one
-- tenant, so one tenant's timers never wait for another's, nor learn their ids.
alter table resource_holds add column tenant text;
update resource_holds h set tenant = coalesce(
    (select t.tenant from timers t where t.id = h.timer_id and t.bucket = h.bucket), 'default');
alter table resource_holds alter column tenant set not null;
alter table resource_holds drop constraint resource_holds_pkey;
alter table resource_holds alter column resource set not null;
alter table resource_holds add primary key (tenant, resource);
