-- 002_users_feedback: what the API and web feed need next to the insights table (issue #11).
-- users: the directory synced from the source (roles and reporting lines decide who sees what);
-- api_tokens: bearer tokens stored as sha256 hashes, with expiry and revocation;
-- insight_feedback: the append-only history of CSM actions that ranking learns from;
-- insight_shares: an insight shared with a colleague, by whom and with what note;
-- insight_reads: read receipts of viewers other than the owner (the owner's is insights.status).
-- No foreign keys: the insights table is rewritten by the sink in bulk, and the store already
-- inserts feedback and shares only for existing insights (insert .. select from insights).
-- DuckDB flavour: primary keys only (on conflict needs them), no secondary indexes, for the
-- reasons given in 001_insights.

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

create table api_tokens (
    token_id text primary key,
    token_hash text not null,
    user_id text not null,
    label text,
    created_at timestamptz not null,
    expires_at timestamptz,
    revoked_at timestamptz
);

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

create table insight_shares (
    insight_id uuid not null,
    to_user_id text not null,
    from_user_id text not null,
    note text,
    created_at timestamptz not null,
    primary key (insight_id, to_user_id)
);

create table insight_reads (
    insight_id uuid not null,
    user_id text not null,
    read_at timestamptz not null,
    primary key (user_id, insight_id)
);
