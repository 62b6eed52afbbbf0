-- Named queries on api_keys and tenants: who may call the API, and each tenant's quotas.

-- name: key_insert
-- A new key; only its SHA-256 is stored.
insert into api_keys (id, key_hash, tenant, admin, label)
values (%(id)s, %(key_hash)s, %(tenant)s, %(admin)s, %(label)s);

-- name: key_list
-- Every key (revoked ones too), newest first.
select id, tenant, admin, label, created_at, last_used_at, revoked_at
from api_keys order by created_at desc, id;

-- name: key_revoke
-- Revokes a key (once: a second revoke changes nothing and says so by its row count).
update api_keys set revoked_at = now() where id = %(id)s and revoked_at is null;

-- name: key_valid_list
-- Every valid (unrevoked) key, by its SHA-256: what an API process checks keys against, in
-- memory, reloaded every few seconds (api/auth.py), so that no key check costs a statement.
select key_hash, id, tenant, admin from api_keys where revoked_at is null;

-- name: key_used
-- Notes the use of the keys an API process checked since its last reload.
update api_keys set last_used_at = now() where id = any(%(ids)s::text[]);

-- name: key_any
-- Whether any key was ever made: from then on TIMERHOOK_AUTH=auto requires keys (revoking
-- every key does not open the API again).
select exists (select 1 from api_keys) as any;

-- name: tenant_set
-- Creates or changes a tenant's settings; a null argument leaves that setting as it is, 0 (or
-- '' for the secret) removes it. A new creates-per-minute quota starts with a full bucket.
insert into tenants as t (name, max_pending, creates_per_minute, create_tokens,
                          max_payload_bytes, signing_secret)
values (%(name)s, nullif(%(max_pending)s::integer, 0),
        nullif(%(creates_per_minute)s::integer, 0),
        coalesce(nullif(%(creates_per_minute)s::integer, 0), 0),
        nullif(%(max_payload_bytes)s::integer, 0), nullif(%(signing_secret)s::text, ''))
on conflict (name) do update
set max_pending = case when %(max_pending)s::integer is null then t.max_pending
                       else nullif(%(max_pending)s::integer, 0) end,
    creates_per_minute = case when %(creates_per_minute)s::integer is null
                              then t.creates_per_minute
                              else nullif(%(creates_per_minute)s::integer, 0) end,
    create_tokens = case when %(creates_per_minute)s::integer is null then t.create_tokens
                         else coalesce(nullif(%(creates_per_minute)s::integer, 0), 0) end,
    create_tokens_at = case when %(creates_per_minute)s::integer is null then t.create_tokens_at
                            else now() end,
    max_payload_bytes = case when %(max_payload_bytes)s::integer is null then t.max_payload_bytes
                             else nullif(%(max_payload_bytes)s::integer, 0) end,
    signing_secret = case when %(signing_secret)s::text is null then t.signing_secret
                          else nullif(%(signing_secret)s::text, '') end,
    updated_at = now();

-- name: tenant_list
-- Every tenant with settings.
select name, max_pending, creates_per_minute, max_payload_bytes, signing_secret
from tenants order by name;

-- name: tenant_create_take
-- A create of a tenant with a quota, under the lock of the tenant's row (held to the end of
-- the create's transaction, so concurrent creates of one tenant are counted one by one):
-- its quotas and its creates bucket refilled to now (a minute's worth at most, refilled at
-- creates_per_minute / 60 a second). No row for a tenant without settings.
select max_pending, creates_per_minute,
       least(creates_per_minute::double precision,
             create_tokens + greatest(extract(epoch from now() - create_tokens_at), 0)
                             * creates_per_minute / 60.0) as available
from tenants where name = %(tenant)s
for update;

-- name: tenant_pending_count
-- A tenant's pending timers, counted up to %(limit)s (the quota: more need not be counted),
-- from timers_pending_scope_idx.
select count(*) from (select 1 from timers t
                      where t.tenant = %(tenant)s and t.state = 'pending' and t.host >= ''
                      limit %(limit)s) as s;

-- name: tenant_create_spend
-- Takes one token of the tenant's creates bucket (refilled to now by tenant_create_take).
update tenants set create_tokens = %(left)s, create_tokens_at = now() where name = %(tenant)s;
