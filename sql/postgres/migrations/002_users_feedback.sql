-- 002_users_feedback: what the API and web feed need next to the insights table (issue #11).
-- users: the directory synced from the source (roles and reporting lines decide who sees what);
-- api_tokens: bearer tokens stored as sha256 hashes, with expiry and revocation;
-- insight_feedback: the append-only history of CSM actions that ranking learns from;
-- insight_shares: an insight shared with a colleague, by whom and with what note;
-- insight_reads: read receipts of viewers other than the owner (the owner's is insights.status).
-- No foreign keys: the insights table is rewritten by the sink in bulk, and the store already
-- inserts feedback and shares only for existing insights (insert .. select from insights).
-- PostgreSQL flavour, with the indexes the API's feed needs (measured by benchmarks/api_load.py
-- on 1M insights, see benchmarks/api_load_results.md). Most rows are expired; the feed wants the
-- open ones. Both indexes key on coalesce(expires_at, infinity), the expression the feed SQL
-- compares (null = never expires, so one range scan instead of an OR of two), and include every
-- column the feed filters, sorts and counts on, so a page and its totals are index-only scans:
-- an owner's open insights by (user_id, expiry) for CSMs and managers, all open insights by
-- expiry for leaders. (CSM feed query ~2 ms instead of ~30 ms, a 10-CSM manager ~15 ms instead
-- of ~190 ms, a leader over all 1M ~50 ms instead of ~800 ms.) The price is write volume: every
-- upsert of the sink writes these wider entries. They replace 001's insights_feed_idx (user_id,
-- status, priority, score), which no query needs any more.

create index insights_open_owner_idx on insights (
    user_id, (coalesce(expires_at, cast('infinity' as timestamptz)))
) include (
    status, snoozed_until, priority, score, partition_date, category, type, customer_id,
    created_at, expires_at, id
);

create index insights_open_idx on insights (
    (coalesce(expires_at, cast('infinity' as timestamptz)))
) include (
    user_id, status, snoozed_until, priority, score, partition_date, category, type,
    customer_id, created_at, expires_at, id
);

drop index if exists insights_feed_idx;

create table users (
    user_id text primary key,
    name text not null,
    email text,
    role text not null check (role in ('csm', 'manager', 'leader')),
    manager_id text,
    active boolean not null default true,
    read_all_at timestamptz,
    synced_at timestamptz not null
);

create index users_manager_idx on users (manager_id);

create table api_tokens (
    token_id text primary key,
    token_hash text not null,
    user_id text not null,
    label text,
    created_at timestamptz not null,
    expires_at timestamptz,
    revoked_at timestamptz
);

create index api_tokens_user_idx on api_tokens (user_id);

create table insight_feedback (
    id uuid primary key,
    insight_id uuid not null,
    user_id text not null,
    action text not null check (action in ('dismiss', 'snooze', 'actioned')),
    feedback text
        check (feedback in ('not_relevant', 'already_knew', 'helpful', 'took_action')),
    snoozed_until timestamptz,
    insight_type text not null,
    category text not null,
    customer_id text,
    created_at timestamptz not null
);

create index insight_feedback_created_idx on insight_feedback (created_at);

create index insight_feedback_insight_idx on insight_feedback (insight_id);

create table insight_shares (
    insight_id uuid not null,
    to_user_id text not null,
    from_user_id text not null,
    note text,
    created_at timestamptz not null,
    primary key (insight_id, to_user_id)
);

create index insight_shares_to_idx on insight_shares (to_user_id);

create table insight_reads (
    insight_id uuid not null,
    user_id text not null,
    read_at timestamptz not null,
    primary key (user_id, insight_id)
);
