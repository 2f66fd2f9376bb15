-- 007_feed_indexes: the feed's covering indexes, for every store whatever form of 002 it ran.
-- Migration 002 was changed before its first release: its first form created
-- insights_owner_expiry_idx (user_id, expires_at) and insights_expiry_idx (expires_at), the
-- current one the covering insights_open_owner_idx and insights_open_idx (see 002). A store
-- that applied the first form has 002 recorded and would never get the new indexes; this
-- migration brings both forms to the same end state. Released migrations are never edited
-- again: a change is a new migration. (PostgreSQL only: DuckDB keeps no secondary indexes.)

create index if not exists insights_open_owner_idx on insights (
    user_id, (coalesce(expires_at, cast('infinity' as timestamptz)))
) include (
    status, snoozed_until, priority, score, partition_date, category, type, customer_id,
    created_at, expires_at, id
);

create index if not exists insights_open_idx on insights (
    (coalesce(expires_at, cast('infinity' as timestamptz)))
) include (
    user_id, status, snoozed_until, priority, score, partition_date, category, type,
    customer_id, created_at, expires_at, id
);

drop index if exists insights_owner_expiry_idx;

drop index if exists insights_expiry_idx;
