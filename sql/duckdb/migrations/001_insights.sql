-- 001_insights: the insights table of data contract section 3 (plus customer_name and subject).
-- DuckDB flavour: uuid ids, json documents, timestamptz instants.
-- Deliberately no secondary indexes here (PostgreSQL has them): DuckDB answers the feed, the
-- episode lookup and per-customer filters with zonemap-pruned scans and does not use ART
-- indexes for them (checked with explain on 1M rows: sequential scan, ~10 ms), while every
-- update of an indexed column becomes delete + insert in each index - re-upserting 100k rows
-- into a file took ~8 s with the four indexes and ~0.15 s without. The primary key stays:
-- on conflict (id) needs it.

create table insights (
    id uuid primary key,
    customer_id text,
    customer_name text,
    user_id text not null,
    partition_date date not null,
    last_seen_date date not null,
    category text not null,
    type text not null,
    subject text,
    priority text not null check (priority in ('high', 'medium', 'low')),
    score double not null,
    title text not null,
    summary text not null,
    evidence json not null,
    so_what text,
    recommended_action json,
    fingerprint text not null,
    score_parts json,
    status text not null default 'new'
        check (status in ('new', 'viewed', 'actioned', 'dismissed', 'snoozed')),
    feedback text
        check (feedback in ('not_relevant', 'already_knew', 'helpful', 'took_action')),
    snoozed_until timestamptz,
    expires_at timestamptz,
    created_at timestamptz not null default current_timestamp,
    viewed_at timestamptz,
    actioned_at timestamptz
);
