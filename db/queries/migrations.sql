-- Named queries of the migration runner (db/migrate.py).

-- name: migration_lock
-- Serialises migration runs across processes for the rest of the transaction.
select pg_advisory_xact_lock(hashtext('timerhook.migrate'));

-- name: migration_ledger_create
-- The ledger of applied steps; created by the runner so that both roads (schema.sql and the
-- step-by-step migrations) end with the same table.
create table if not exists schema_migrations (
    version    integer     primary key,
    name       text        not null,
    applied_at timestamptz not null default now()
);

-- name: migration_versions
-- The versions already applied.
select version from schema_migrations;

-- name: migration_record
-- Records one applied step.
insert into schema_migrations (version, name) values (%(version)s, %(name)s);

-- name: schema_version
-- The newest applied migration (0 before any): /readyz compares it with the code's.
select coalesce(max(version), 0) from schema_migrations;
