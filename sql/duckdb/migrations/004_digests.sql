-- 004_digests: the ledger of digest emails and each user's digest preference.
-- One row per (user, day, kind) makes delivery idempotent: a digest is claimed before it is
-- sent, marked sent with its Message-ID after, and never sent again; a failed one keeps its
-- error and attempt count until a later run retries it. claimed_at marks a send in flight, so
-- two concurrent runs never both send (a claim older than the lease is taken as abandoned).
-- DuckDB flavour: no secondary index (see 001: scans are fast and updates stay cheap).

create table digests (
    user_id text not null,
    digest_date date not null,
    kind text not null check (kind in ('daily', 'weekly')),
    message_id text not null,
    recipient text,
    subject text,
    item_count integer,
    status text not null default 'queued' check (status in ('queued', 'sent', 'failed')),
    attempts integer not null default 0,
    last_error text,
    claimed_at timestamptz,
    created_at timestamptz not null,
    sent_at timestamptz,
    primary key (user_id, digest_date, kind)
);

-- A missing row means the default: daily. weekday (0 = Monday .. 6 = Sunday) is the day a
-- weekly digest arrives, and only a weekly preference has one.
create table digest_preferences (
    user_id text primary key,
    frequency text not null default 'daily' check (frequency in ('daily', 'weekly', 'off')),
    weekday smallint check (weekday between 0 and 6),
    updated_at timestamptz not null,
    check ((frequency = 'weekly') = (weekday is not null))
);
