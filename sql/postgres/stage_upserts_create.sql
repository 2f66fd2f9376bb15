-- Staging table for one write's upserts, filled by copy; typed like insights so copy validates.
create temp table stage_insight_upserts (
    id uuid,
    customer_id text,
    customer_name text,
    user_id text,
    partition_date date,
    last_seen_date date,
    category text,
    type text,
    subject text,
    priority text,
    score double precision,
    title text,
    summary text,
    evidence jsonb,
    so_what text,
    recommended_action jsonb,
    fingerprint text,
    score_parts jsonb,
    expires_at timestamptz,
    pushed boolean,
    rank_in_day integer
) on commit drop
