-- The ledger of applied migrations: one row per version, written in the migration's transaction.
create table if not exists schema_version (
    version integer primary key,
    name text not null,
    applied_at timestamptz not null
)
