-- 001_insights: the insights table of data contract section 3 (plus customer_name and subject)
-- and the indexes the feed, the sink's episode lookup and the per-customer views need.
-- PostgreSQL flavour: uuid ids, jsonb documents, timestamptz instants.

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
    score double precision not null,
    title text not null,
    summary text not null,
    evidence jsonb not null,
    so_what text,
    recommended_action jsonb,
    fingerprint text not null,
    score_parts jsonb,
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

create index insights_feed_idx on insights (user_id, status, priority, score desc);

create index insights_fingerprint_idx on insights (fingerprint, last_seen_date);

create index insights_customer_idx on insights (customer_id);

create index insights_partition_idx on insights (partition_date);
